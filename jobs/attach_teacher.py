"""Attach an external model's outputs to training shards as a precomputed teacher column.

    # Marigold / GenPercept / Depth Pro outputs, one file per image, named like the images' keys
    python jobs/attach_teacher.py data/sa1b/train --from genpercept_out/ --name genpercept --kind affine_depth
    python jobs/attach_teacher.py s3://bucket/sa1b/train --from s3://bucket/depthpro/ --name depthpro --kind depth

Each row's map is <FROM>/<key>.npy (any 2-D numeric array) or <FROM>/<key>.png (16-bit grayscale), where key is the
row's key (the source image's relative path without extension), at the stored image's size (H x W). --kind says what
the maps hold: disparity, depth (up to scale: disparity = 1/depth) or affine_depth (scale and shift unknown:
normalised to [0, 1], then disparity = 1 / (d + --shift)); see dad_ray/data/teacher_columns.py. A missing or
wrongly-sized file stops the job naming the key and the file. The shards are rewritten one by one (re-running an
interrupted attach finishes the rest) and the manifest, written last, lists the column. Train with it:
--set model.teachers.1.column=NAME (and name, probability; weights empty). Our own models write such a column with
jobs/predict.py SHARDS --checkpoint W --write-column NAME.
"""

from __future__ import annotations

import argparse
import logging
import sys

from dad_ray.data import DataError
from dad_ray.data.teacher_columns import KINDS, ExternalMaps, attach_column
from dad_ray.logging_utils import setup_logging

logger = logging.getLogger("attach_teacher")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shards", help="a shard split directory (holding manifest.json), local or URI")
    parser.add_argument("--from", dest="source", required=True, help="folder of <key>.npy / <key>.png maps")
    parser.add_argument("--name", required=True, help="the column's name (lower-case letters, digits, _)")
    parser.add_argument("--kind", choices=KINDS, default="disparity", help="what the maps hold")
    parser.add_argument("--shift", type=float, default=0.1, help="affine_depth: assumed near-plane shift")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        manifest = attach_column(
            args.shards,
            args.name,
            ExternalMaps(args.source, args.kind, args.shift),
            kind=args.kind,
            shift=args.shift,
            source=args.source,
        )
    except DataError as err:
        parser.exit(2, f"attach_teacher: error: {err}\n")
    logger.info("column %s (%s) in %d shard(s) of %s", args.name, args.kind, len(manifest["shards"]), args.shards)
    return 0


if __name__ == "__main__":
    sys.exit(main())
