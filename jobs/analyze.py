"""Analyse a Tune experiment: ranked trials, best_config.yaml, PNG plots, search efficiency.

    python jobs/analyze.py runs/tune/default
    python jobs/distill.py --config runs/tune/default/best_config.yaml     # train the winner
    python jobs/analyze.py runs/tune/paper_ablation --layout paper          # the paper's Tables 1 and 2

Writes <experiment>/best_config.yaml (a complete config jobs/distill.py --config accepts unchanged, run name
best_<trial id>) and <experiment>/plots/*.png (metric vs each hyper-parameter; validation curves with ASHA's rungs).
"""

from __future__ import annotations

import argparse
import sys

from dad_ray.logging_utils import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="the experiment directory (<output>/<experiment> of jobs/tune.py)")
    parser.add_argument("--plots", default=None, help="directory for the PNG plots (default <experiment>/plots)")
    parser.add_argument(
        "--layout",
        choices=("trials", "paper"),
        default="trials",
        help="trials: the ranked trial table; paper: Tables 1 and 2 of the paper (a paper_ablation experiment)",
    )
    args = parser.parse_args(argv)
    setup_logging()
    from dad_ray.tune.analysis import analyze, format_table, plot, write_best_config

    try:
        report = analyze(args.experiment)
    except FileNotFoundError as err:
        parser.error(str(err))
    if args.layout == "paper":
        from dad_ray.tune.paper_layout import paper_tables

        try:
            print(paper_tables(report))
        except ValueError as err:
            parser.error(str(err))
    else:
        print(format_table(report))
    best = write_best_config(report)
    if best is not None:
        print(f"best config: {best}\n  python jobs/distill.py --config {best}")
    for path in plot(report, args.plots):
        print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
