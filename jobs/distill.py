"""Distill-Any-Depth training with Ray Train.

    python jobs/distill.py                                  # embedded default: synthetic data, tiny models, CPU
    python jobs/distill.py --preset smoke                   # the whole path in about a minute
    python jobs/distill.py --preset nyu_vitl_to_vitb --num-workers 16 --use-gpu   # on a GPU cluster
    ray job submit --working-dir . -- python jobs/distill.py --preset ...         # the same, as a Ray job

Outputs go to <output>/<name>/ (config.yaml, tensorboard/, checkpoints/, final_metrics.json). Running again with the
same --output and --name continues the run from its latest checkpoint (--max-steps may grow); a config that differs
from the run's config.yaml in any other key is refused with the differing keys, unless --fresh deletes the run first.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from dad_ray.config import ConfigError, add_config_args, config_from_args, config_to_yaml, is_uri
from dad_ray.logging_utils import setup_logging

SHORTCUTS = {
    "--num-workers": ("train.num_workers", int, "Ray Train workers"),
    "--use-gpu": ("train.use_gpu", bool, "one GPU per worker"),
    "--batch-size": ("data.batch_size", lambda s: s if s == "auto" else int(s), "per-worker batch, or 'auto'"),
    "--max-steps": ("optim.max_steps", int, "optimizer steps"),
    "--output": ("train.output", str, "storage path for runs (local dir or s3://...)"),
    "--name": ("train.name", str, "run name (same name + output = continue the run)"),
    "--mode": ("loss.mode", str, "distill | supervised"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, SHORTCUTS)
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="delete the run in <output>/<name> (local or URI) and start a new one under that name, instead of "
        "continuing it (needed when the config differs from the run's config.yaml)",
    )
    args = parser.parse_args(argv)
    setup_logging()
    try:
        if args.config and is_uri(args.config):  # e.g. analyze's s3://…/best_config.yaml: the config floor reads files
            from dad_ray.data import storage

            args.config = storage.local_copy(args.config, tempfile.mkdtemp(prefix="dadray-config-"))
        cfg = config_from_args(args, default_preset="default")
    except (ConfigError, FileNotFoundError) as err:
        parser.error(str(err))
    if args.print_config:
        sys.stdout.write(config_to_yaml(cfg))
        return 0
    from dad_ray.train import check_run_config, format_metrics_table, run_dir, run_experiment, validate_experiment

    try:
        validate_experiment(cfg)  # before Ray starts: bad names and missing files fail in a second
        if not args.fresh:
            check_run_config(cfg)  # ... and so does a changed config for an existing run
        metrics = run_experiment(cfg, fresh=args.fresh)
    except ConfigError as err:
        parser.error(str(err))

    print(format_metrics_table(metrics))
    print(f"outputs: {run_dir(cfg)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
