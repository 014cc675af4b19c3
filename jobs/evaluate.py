"""Evaluate depth checkpoints zero-shot (affine-invariant, per-image least-squares aligned) on one shard set or on
the benchmark suite.

    python jobs/evaluate.py --checkpoint runs/default/student.safetensors --data data/synthetic [--split test]
    python jobs/evaluate.py --suite benchmarks/ --checkpoint teacher.pth --checkpoint student.safetensors \
        [--label teacher --label student] [--json table5.json]

--suite DIR evaluates every data set prepared under DIR (DIR/<set>/<split>/manifest.json, as
`jobs/prepare_data.py --format NAME --out DIR/NAME --split test` writes them), each with its own protocol (from the
manifest's `dataset` field; shards without it fall back to the directory's name, with a warning), in one Ray Data
pass per set, and prints the paper's Table 5 layout: one row per checkpoint, AbsRel / δ1 per data set.

Checkpoints: any file the loader accepts (official DAv2 .pth, Distill-Any-Depth .safetensors, ours), local, hf://
(the local Hugging Face cache) or a storage URI (s3://…, file://…: each evaluation actor fetches it). --model
defaults to the one inferred from the weights (repeat it once per --checkpoint to name them). The input size and
alignment default to what the checkpoint records in its metadata (our saved students do), else 518 / disparity;
an explicit --input-size / --alignment (or --set eval.…, or a --config / --preset that sets them) wins. The
protocol of a single --data set: --protocol, else the manifest's data set, else the checkpoint's, else nyu. What
was used is printed. Runs as Ray Data batch inference over the available CPUs/GPUs (joins RAY_ADDRESS when set).
Images with no valid pixel under the protocol are counted and listed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dad_ray.config import ConfigError, add_config_args, config_from_args, config_to_yaml, explicit_keys
from dad_ray.logging_utils import setup_logging
from dad_ray.metrics import ALIGNMENTS, PROTOCOLS
from dad_ray.models import list_models


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True, help="weights file or URI (repeatable)")
    parser.add_argument("--model", action="append", choices=list_models(), help="registry name per --checkpoint")
    parser.add_argument("--label", action="append", help="row label per --checkpoint (default: the file's stem)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--data", help="shard root (holding <split>/manifest.json) or URI")
    where.add_argument("--suite", help="directory (or URI) holding one shard root per benchmark: Table 5")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-samples", type=int, default=0, help="evaluate the first N images only (0 = all)")
    parser.add_argument("--actors", type=int, default=0, help="model actors (0: one per GPU, else CPUs - 1)")
    parser.add_argument("--use-gpu", action="store_true", help="one actor per GPU")
    parser.add_argument("--json", help="write the result here")
    parser.add_argument("--tensorboard", help="write the metrics as scalars into this log dir (--data only)")
    add_config_args(
        parser,
        {
            "--protocol": ("eval.protocol", str, f"evaluation protocol (--data only): {', '.join(PROTOCOLS)}"),
            "--alignment": ("eval.alignment", str, f"least-squares alignment space: {', '.join(ALIGNMENTS)}"),
            "--input-size": ("eval.input_size", int, "short side of the network input (multiple of 14)"),
            "--batch-size": ("eval.batch_size", int, "images per model call"),
        },
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    setup_logging()
    try:  # no default preset: the eval defaults are the standard protocol (nyu, disparity, 518)
        cfg = config_from_args(args, default_preset=None)
        explicit = explicit_keys(args)
    except ConfigError as err:
        parser.error(str(err))
    if args.print_config:
        sys.stdout.write(config_to_yaml(cfg))
        return 0
    if args.model and len(args.model) != len(args.checkpoint):
        parser.error(f"--model: give one per --checkpoint ({len(args.checkpoint)}) or none, got {len(args.model)}")
    if args.suite and "eval.protocol" in explicit:
        parser.error("--protocol does not apply to --suite: each data set's protocol comes from its manifest")
    from dad_ray.inference import evaluate_checkpoints, format_table, write_tensorboard
    from dad_ray.inference.evaluate import checkpoint_labels, data_protocol, model_to_evaluate
    from dad_ray.inference.suite import evaluate_suite, format_table5

    try:
        labels = checkpoint_labels(args.checkpoint, args.label)
        models = {
            label: model_to_evaluate(
                checkpoint,
                args.model[i] if args.model else None,
                input_size=cfg.eval.input_size if "eval.input_size" in explicit else None,
                alignment=cfg.eval.alignment if "eval.alignment" in explicit else None,
                defaults=cfg.eval,
            )
            for i, (label, checkpoint) in enumerate(zip(labels, args.checkpoint))
        }
    except (FileNotFoundError, ValueError) as err:
        parser.error(f"--checkpoint: {err}")
    for label, m in models.items():
        print(f"{label}: {m.describe()}")
    common = dict(
        batch_size=cfg.eval.batch_size, max_samples=args.max_samples, use_gpu=args.use_gpu, actors=args.actors
    )
    if args.suite:
        result = evaluate_suite(models, args.suite, split=args.split, **common)
        print(format_table5(result))
    else:
        explicit_protocol = cfg.eval.protocol if "eval.protocol" in explicit else None
        protocol, origin = data_protocol(args.data, args.split, explicit_protocol, models, cfg.eval.protocol)
        print(f"protocol {protocol} ({origin})")
        results = evaluate_checkpoints(models, data=args.data, split=args.split, protocol=protocol, **common)
        for label, one in results.items():
            print(f"{label}: " + format_table(one))
            if one["n_invalid"]:
                print(f"{one['n_invalid']} image(s) without a valid pixel: {', '.join(one['invalid_keys'])}")
            if args.tensorboard:
                write_tensorboard(one, args.tensorboard, tag="eval" if len(results) == 1 else f"eval/{label}")
        result = next(iter(results.values())) if len(results) == 1 else results
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
