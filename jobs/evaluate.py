"""Evaluate a depth checkpoint on shards with the standard zero-shot protocol (affine-invariant, per-image aligned).

    python jobs/evaluate.py --checkpoint runs/default/student.safetensors --data data/synthetic [--split test]
        [--model dav2_vits] [--protocol nyu] [--alignment disparity] [--input-size 518] [--json out.json]
        [--tensorboard runs/eval]

Any checkpoint the loader accepts (official DAv2 .pth, Distill-Any-Depth .safetensors, ours); --model defaults to
the one inferred from the weights. Runs as Ray Data batch inference over the available CPUs/GPUs (joins RAY_ADDRESS
when set), prints a metrics table that states the alignment space, and writes JSON. Images with no valid pixel under
the protocol are counted and listed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dad_ray.config import ConfigError, add_config_args, config_from_args, config_to_yaml
from dad_ray.logging_utils import setup_logging
from dad_ray.metrics import ALIGNMENTS, PROTOCOLS
from dad_ray.models import list_models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="weights file (.pth or .safetensors)")
    parser.add_argument("--model", choices=list_models(), help="registry name (default: inferred from the weights)")
    parser.add_argument("--data", required=True, help="shard root (holding <split>/manifest.json) or URI")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-samples", type=int, default=0, help="evaluate the first N images only (0 = all)")
    parser.add_argument("--actors", type=int, default=0, help="model actors (0: one per GPU, else CPUs - 1)")
    parser.add_argument("--use-gpu", action="store_true", help="one actor per GPU")
    parser.add_argument("--json", help="write the result here")
    parser.add_argument("--tensorboard", help="write the metrics as scalars into this log dir")
    add_config_args(
        parser,
        {
            "--protocol": ("eval.protocol", str, f"evaluation protocol: {', '.join(PROTOCOLS)}"),
            "--alignment": ("eval.alignment", str, f"least-squares alignment space: {', '.join(ALIGNMENTS)}"),
            "--input-size": ("eval.input_size", int, "short side of the network input (multiple of 14)"),
            "--batch-size": ("eval.batch_size", int, "images per model call"),
        },
    )
    args = parser.parse_args(argv)
    setup_logging()
    try:  # no default preset: the eval defaults are the standard protocol (nyu, disparity, 518); a run's
        # --config or a --preset supplies its own eval section
        cfg = config_from_args(args, default_preset=None)
    except ConfigError as err:
        parser.error(str(err))
    if args.print_config:
        sys.stdout.write(config_to_yaml(cfg))
        return 0
    from dad_ray.inference import evaluate_checkpoint, format_table, write_tensorboard
    from dad_ray.models.weights import infer_model_name, resolve_weights_file

    try:  # a file, a transformers directory, or hf://org/repo/file in the local Hugging Face cache
        resolve_weights_file(args.checkpoint)
    except FileNotFoundError as err:
        parser.error(f"--checkpoint: {err}")
    result = evaluate_checkpoint(
        model_name=args.model or infer_model_name(args.checkpoint),
        weights=args.checkpoint,
        data=args.data,
        split=args.split,
        protocol=cfg.eval.protocol,
        alignment=cfg.eval.alignment,
        input_size=cfg.eval.input_size,
        batch_size=cfg.eval.batch_size,
        max_samples=args.max_samples,
        use_gpu=args.use_gpu,
        actors=args.actors,
    )
    print(format_table(result))
    if result["n_invalid"]:
        print(f"{result['n_invalid']} image(s) without a valid pixel: {', '.join(result['invalid_keys'])}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    if args.tensorboard:
        write_tensorboard(result, args.tensorboard)
    return 0


if __name__ == "__main__":
    sys.exit(main())
