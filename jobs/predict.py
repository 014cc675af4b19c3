"""Predict relative disparity for images (or a shard directory) with a Depth Anything V2 checkpoint.

    python jobs/predict.py photos/ --checkpoint depth_anything_v2_vits.pth --out preds/
    python jobs/predict.py "data/**/*.jpg" --checkpoint runs/default/student.safetensors --out preds/ --ray on
    python jobs/predict.py data/synthetic/test --checkpoint teacher.safetensors --out preds/   # shard directory
    # a precomputed teacher: the model's disparity stored as column NAME of the shards (model.teachers[i].column)
    python jobs/predict.py data/sa1b/train --checkpoint depth_anything_v2_vitb.pth --write-column dav2_vitb

Writes <out>/<name>.npy (float32 disparity at the input image size) and <out>/<name>.png (colour map) per image.
The short side is resized to --input-size (multiples of 14, aspect kept) as in the official inference; by default
the input size the checkpoint records in its metadata (our saved students do), else 518.
The checkpoint and the inputs may be storage URIs (s3://…, file://…): image URIs (files or directories, searched
recursively) and shard directories on URIs are read by the Ray tasks where they are; the actors fetch the weights.
More than --ray-threshold images (or --ray on, or a shard directory) run as Ray Data batch inference with an actor pool
(one actor per GPU); images of different sizes are batched by size.

An unreadable input (corrupt or truncated image, a shard row whose image does not decode) stops the job with exit
status 2 and one line naming it (`predict: error: <path>: cannot read image (<reason>)`); the images before it in
input order are written, none after it. With --skip-bad every good image is written and each unreadable one is
logged as a warning and listed with its reason in <out>/skipped.json.
"""

from __future__ import annotations

import argparse
import sys

from dad_ray.config import EvalConfig
from dad_ray.data import DataError
from dad_ray.inference import PredictOptions, predict_inputs
from dad_ray.inference.predict import is_shard_dir, write_teacher_column
from dad_ray.logging_utils import setup_logging
from dad_ray.models import list_models
from dad_ray.models.weights import infer_model_name, read_eval_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image files, folders, glob patterns, or one shard directory")
    parser.add_argument("--checkpoint", required=True, help="official .pth or .safetensors weights (path or URI)")
    parser.add_argument("--model", choices=list_models(), help="registry name (default: inferred from the weights)")
    parser.add_argument("--out", help="output directory (not with --write-column)")
    parser.add_argument(
        "--write-column",
        metavar="NAME",
        help="store the disparity as precomputed teacher column NAME of the one shard directory given (no files)",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        help="short side of the network input (multiple of 14; default: the checkpoint's, or 518)",
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU; fp32 by default)")
    parser.add_argument("--cmap", default="Spectral_r", help="matplotlib colormap of the PNGs")
    parser.add_argument("--ray", choices=("auto", "on", "off"), default="auto", help="use Ray Data batch inference")
    parser.add_argument("--ray-threshold", type=int, default=256, help="'auto' uses Ray above this many images")
    parser.add_argument("--actors", type=int, default=0, help="Ray model actors (0: one per GPU, or 1 on CPU)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable inputs, listing them in skipped.json")
    args = parser.parse_args(argv)
    if bool(args.out) == bool(args.write_column):
        parser.error("give exactly one of --out (prediction files) and --write-column (a shard column)")
    if args.write_column and (len(args.inputs) != 1 or not is_shard_dir(args.inputs[0])):
        parser.error("--write-column takes exactly one shard directory (holding manifest.json)")
    setup_logging()
    try:  # the checkpoint's own evaluation input size unless --input-size is given
        recorded = read_eval_settings(args.checkpoint).input_size
        model = args.model or infer_model_name(args.checkpoint)
    except FileNotFoundError as err:
        parser.error(f"--checkpoint: {err}")
    input_size = args.input_size or recorded or EvalConfig().input_size
    origin = "--input-size" if args.input_size else "the checkpoint" if recorded else "default"
    print(f"{model} at input size {input_size} ({origin})")
    opts = PredictOptions(
        model=model,
        checkpoint=args.checkpoint,
        out=args.out or "",
        input_size=input_size,
        batch_size=args.batch_size,
        device=args.device,
        cmap=args.cmap,
        actors=args.actors,
        cpus_per_actor=args.cpus_per_actor,
        bf16=args.bf16,
        skip_bad=args.skip_bad,
    )
    if args.write_column:
        try:
            manifest = write_teacher_column(args.inputs[0], args.write_column, opts)
        except DataError as err:
            parser.exit(2, f"predict: error: {err}\n")
        print(f"column {args.write_column} written to {len(manifest['shards'])} shard(s) of {args.inputs[0]}")
        return 0
    try:
        summary = predict_inputs(args.inputs, opts, ray_mode=args.ray, ray_threshold=args.ray_threshold)
    except DataError as err:
        parser.exit(2, f"predict: error: {err}\n")
    line = f"wrote {summary.written} depth map(s) (.npy + .png) to {args.out} with {opts.model}"
    if args.skip_bad:
        line += f", skipped {len(summary.skipped)} unreadable input(s) (listed in {args.out}/skipped.json)"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
