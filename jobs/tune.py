"""Hyper-parameter search for Distill-Any-Depth with Ray Tune + ASHA; each trial is one distillation run.

    python jobs/tune.py                                       # embedded default: small search on synthetic data, CPU
    python jobs/tune.py --space smoke                         # 4 tiny trials (tests)
    python jobs/tune.py --space loss_weights --output runs/tune --set train.num_workers=2
    python jobs/tune.py --space my_space.yaml                 # a search-space file of your own
    python jobs/tune.py --space loss_weights --preset smoke   # the same space on another base preset
    python jobs/tune.py --resume runs/tune/loss_weights       # continue an interrupted experiment
    ray job submit --working-dir . -- python jobs/tune.py --space loss_weights_gpu \
        --set data.root=s3://BUCKET/dad_ray/nyu_shards --output s3://BUCKET/dad_ray/tune
    ray job submit --working-dir . -- python jobs/tune.py --resume s3://BUCKET/dad_ray/tune/loss_weights_gpu

Shipped spaces (dad_ray/tune/spaces/): default (warm start + 4 trials), smoke, loss_weights, loss_weights_gpu (GPU
workers, NYU shards, DAv2-L -> ViT-S), crop_sizes, ablation, paper_ablation (the paper's Tables 1 and 2:
python jobs/analyze.py <experiment> --layout paper), asha_cpu (18 trials, 3 ASHA rungs: jobs/benchmark.py tune).
--output and --resume take a local directory or a URI (s3://...).

Results: <output>/<experiment>/ (Tune state, trials/<id>/ runs with TensorBoard + HParams). Then:
    tensorboard --logdir <output>/<experiment>
    python jobs/analyze.py <output>/<experiment>
"""

from __future__ import annotations

import argparse
import sys

from dad_ray.config import ConfigError
from dad_ray.config.loader import add_override_arg
from dad_ray.logging_utils import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="default", help="a search-space YAML file, or the name of a shipped one")
    parser.add_argument("--output", default="runs/tune", help="experiments go to <output>/<experiment>")
    parser.add_argument("--name", help="experiment name (default: the space file's name)")
    base = parser.add_mutually_exclusive_group()
    base.add_argument("--preset", help="base preset of every trial instead of the space's base (e.g. nyu_vitl_to_vits)")
    base.add_argument("--base", metavar="CONFIG", help="a config file as the base of every trial instead")
    add_override_arg(parser, "extra fixed config override for every trial (added to the space's overrides; repeatable)")
    parser.add_argument("--max-concurrent-trials", type=int, help="override the space's / the computed concurrency")
    parser.add_argument(
        "--resume", metavar="EXPERIMENT_DIR", help="continue an interrupted experiment (a local directory or a URI)"
    )
    parser.add_argument("--restart-errored", action="store_true", help="with --resume: rerun failed trials too")
    args = parser.parse_args(argv)
    setup_logging()

    from dad_ray.runtime import init_ray
    from dad_ray.tune import driver
    from dad_ray.tune.analysis import analyze, format_table

    if args.resume:
        try:
            results = driver.resume_search(args.resume, restart_errored=args.restart_errored)
        except (FileNotFoundError, ConfigError) as err:
            parser.error(str(err))
        exp_dir = args.resume
    else:
        from dad_ray.tune.space import load_space

        try:
            space = load_space(
                args.space, overrides=args.overrides, name=args.name, base_preset=args.preset, base_config=args.base
            )
        except ConfigError as err:
            parser.error(str(err))
        init_ray()
        results = driver.run_search(
            space, args.output, name=args.name, max_concurrent_trials=args.max_concurrent_trials
        )
        exp_dir = driver.experiment_dir(args.output, args.name or space.name)

    print(f"{len(results)} trials, {len(results.errors)} failed")
    report = analyze(exp_dir)
    print(format_table(report))
    print(f"experiment: {exp_dir}\n  tensorboard --logdir {exp_dir}\n  python jobs/analyze.py {exp_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
