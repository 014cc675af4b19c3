"""Convert a depth data set into Parquet shards + manifest (a Ray Data job with a progress bar).

    python jobs/prepare_data.py --source nyu_depth_v2_labeled.mat --out data/nyu --split all
    python jobs/prepare_data.py --source nyu_depth_v2_labeled.mat --out s3://bucket/nyu --split train
    python jobs/prepare_data.py --source NYU_ROOT --out data/nyu_folders --split test   # ROOT/{train,test}/{rgb,depth}
    python jobs/prepare_data.py --source sync/ --filenames nyudepthv2_train_files_with_gt.txt --out data/nyu_sync
    python jobs/prepare_data.py --source synthetic:2000 --out data/synthetic --height 240 --width 320 --seed 0
    # unlabeled images (no depth): a directory searched recursively (JPEG/PNG/WebP; SA-1B's sa_*.json ignored),
    # .tar archives of images (WebDataset), or URIs read in place; --max-side stores scaled-down copies
    python jobs/prepare_data.py --source /data/sa1b --out data/sa1b --split train --max-side 1024
    python jobs/prepare_data.py --source s3://bucket/sa1b_tars/ --out s3://bucket/shards/sa1b --split train
    # the zero-shot benchmarks (one directory or .tar per data set + its 'rgb depth [mask]' list)
    python jobs/prepare_data.py --source nyuv2.tar --format nyu --filenames nyu_test.txt --out bench/nyu --split test
    python jobs/prepare_data.py --source kitti.tar --format kitti --filenames eigen.txt --out bench/kitti --split test

Output: <out>/<split>/part-XXXXX.parquet + manifest.json (written last). Re-running with the same source is a no-op;
re-running an interrupted conversion converts only the shards it did not finish. A bad input stops the job with an
error naming the file (or .mat index) unless --skip-bad, which records every skipped input in the manifest. For the
.mat, --split train|test is the official 795/654 split and --split all takes all 1449 images. Image files are stored
as their original bytes (no re-encoding) unless --max-side resizes them. Benchmarks: nyu, scannet 16-bit PNG mm;
kitti PNG / 256, stored at the 352x1216 benchmark crop, rows whose depth is None skipped and counted; diode .npy +
mask; eth3d raw float32, inf invalid. The manifest records the data set's name (`dataset`) for evaluation.
"""

from __future__ import annotations

import argparse
import sys

from dad_ray.logging_utils import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--source",
        required=True,
        help="PATH or URI: .mat, folder or sync root, benchmark directory/.tar (with --format), a directory, .tar or "
        "URI of unlabeled images, or synthetic:N",
    )
    parser.add_argument(
        "--format",
        dest="fmt",
        choices=("nyu", "kitti", "diode", "eth3d", "scannet", "images"),
        default=None,
        help="a benchmark's layout (needs --filenames), or images (unlabeled, whatever the directory holds); "
        "default: detected from --source",
    )
    parser.add_argument("--out", required=True, help="output root: local directory or pyarrow URI (s3://...)")
    parser.add_argument("--split", default="train", help="train | test | all (or any name for sync/synthetic)")
    parser.add_argument("--skip-bad", action="store_true", help="skip bad inputs, recording each in the manifest")
    parser.add_argument(
        "--filenames", default=None, help="'rgb depth [mask|extra]' list, paths relative to --source (sync, --format)"
    )
    parser.add_argument(
        "--max-side", type=int, default=0, help="unlabeled images: store copies scaled down to this longer side "
        "(re-encoded with --image-format); 0 = the original files"
    )  # fmt: skip
    parser.add_argument("--no-depth", action="store_true", help="drop the source's depth: depth-less shards")
    parser.add_argument("--height", type=int, default=480, help="synthetic:N only")
    parser.add_argument("--width", type=int, default=640, help="synthetic:N only")
    parser.add_argument("--seed", type=int, default=0, help="synthetic:N only")
    parser.add_argument(
        "--image-format", choices=("jpeg", "png"), default="jpeg", help="encoding of arrays and resized copies"
    )
    parser.add_argument("--shard-mb", type=float, default=64.0, help="target shard size in MB")
    parser.add_argument("--overwrite", action="store_true", help="replace shards made from another source")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per Ray Data task")
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else start a local Ray)")
    args = parser.parse_args(argv)
    setup_logging()
    from dad_ray.data import DataError, prepare_shards
    from dad_ray.runtime import ray_session

    try:
        with ray_session(address=args.address):
            manifest = prepare_shards(
                args.source,
                args.out,
                args.split,
                skip_bad=args.skip_bad,
                filenames=args.filenames,
                fmt=args.fmt,
                max_side=args.max_side,
                depth=not args.no_depth,
                height=args.height,
                width=args.width,
                seed=args.seed,
                image_format=args.image_format,
                shard_bytes=int(args.shard_mb * 2**20),
                overwrite=args.overwrite,
                num_cpus=args.num_cpus,
            )
    except DataError as err:
        parser.exit(2, f"prepare_data: error: {err}\n")
    without = manifest.get("rows_without_depth")
    sys.stdout.write(
        f"{manifest['num_samples']} samples in {len(manifest['shards'])} shards, {len(manifest['skipped'])} skipped"
        + (f", {without} list rows without depth left out" if without else "")
        + ("" if manifest.get("has_depth", True) else " (no depth: unlabeled)")
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
