"""ASHA vs running every trial to max_t on the synthetic task, and the paper's ablation grid.

    python jobs/benchmark.py tune                              # default space (ASHA, then full), then the ablation
    python jobs/benchmark.py tune --skip-ablation
    python jobs/benchmark.py tune --ablation-set optim.max_steps=60 --ablation-set train.val_every=20

Same space, same seed (so the same sampled configurations): the ASHA run and a run with the scheduler removed.
Reports compute used (optimizer steps the trials reported, ASHA / full) and the best metric each found (goal:
<= 40 % of the compute, best within 5 %). The ablation table is the final validation AbsRel per normalisation
(rows) for SC only (λ_lg = 0) and SC + LG.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import replace
from pathlib import Path

from dad_ray.bench import add_json_arg, write_json

logger = logging.getLogger(__name__)


def _run(space, output: str, name: str):
    from dad_ray.tune.analysis import analyze
    from dad_ray.tune.driver import run_search

    start = time.monotonic()
    run_search(space, output, name=name)
    report = analyze(Path(output).resolve() / name)
    return report, time.monotonic() - start


def compare_table(asha, full, asha_s: float, full_s: float) -> str:
    a_best, f_best = asha.best.best if asha.best else math.nan, full.best.best if full.best else math.nan
    compute = asha.steps_spent / full.steps_spent if full.steps_spent else math.nan
    gap = (a_best - f_best) / f_best if f_best else math.nan
    lines = [
        f"{'run':<8}{'trials':>8}{'steps':>8}{'wall s':>9}{'best ' + asha.space.metric:>18}{'stopped early':>15}",
        f"{'ASHA':<8}{len(asha.trials):>8}{asha.steps_spent:>8}{asha_s:>9.0f}{a_best:>18.4f}"
        f"{sum(t.stopped_early for t in asha.trials):>15}",
        f"{'full':<8}{len(full.trials):>8}{full.steps_spent:>8}{full_s:>9.0f}{f_best:>18.4f}{0:>15}",
        f"ASHA used {100 * compute:.1f} % of the compute (goal <= 40 %); its best is {100 * gap:+.2f} % from the "
        f"full search's (goal within 5 %)",
    ]
    return "\n".join(lines)


def search_figures(report, wall_s: float) -> dict:
    """A search's figures for ``--json``: wall time, compute (optimizer steps), best metric, every trial's final
    metric and hyper-parameters."""
    return {
        "wall_s": wall_s,
        "trials": len(report.trials),
        "steps_spent": report.steps_spent,
        "best": report.best.best if report.best else None,
        "stopped_early": sum(t.stopped_early for t in report.trials),
        "finals": [
            {"hparams": t.hparams, "final": t.history[-1]["metric"] if t.history else None} for t in report.trials
        ],
    }


def ablation_table(report) -> str:
    norms = ("global", "hybrid", "local", "none")
    cell: dict[tuple[str, bool], float] = {}
    for t in report.trials:
        final = t.history[-1]["metric"] if t.history else math.nan
        cell[(t.hparams["loss.normalization"], t.hparams["loss.lambda_lg"] > 0)] = final
    lines = [f"{'normalization':<15}{'SC only':>10}{'SC + LG':>10}   (final {report.space.metric})"]
    for n in norms:
        lines.append(f"{n:<15}{cell.get((n, False), math.nan):>10.4f}{cell.get((n, True), math.nan):>10.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; returns the report (Markdown sections; each is also logged when it is ready)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="default", help="search space for ASHA vs full (default: default)")
    parser.add_argument("--ablation-space", default="ablation")
    parser.add_argument("--ablation-set", action="append", default=[], metavar="KEY=VALUE", help="ablation override")
    parser.add_argument("--skip-ablation", action="store_true")
    parser.add_argument("--skip-compare", action="store_true")
    parser.add_argument("--output", default="runs/bench_tune")
    add_json_arg(parser)
    args = parser.parse_args(argv)

    from dad_ray.runtime import init_ray
    from dad_ray.tune.space import load_space

    init_ray()
    sections: list[str] = []
    figures: dict = {}
    if not args.skip_compare:
        asha_space = load_space(args.space)
        full_space = replace(asha_space, scheduler=None)
        asha, asha_s = _run(asha_space, args.output, f"{asha_space.name}_asha")
        full, full_s = _run(full_space, args.output, f"{asha_space.name}_full")
        file_name = Path(asha_space.path).name
        title = f"## ASHA vs full search ({file_name}, {asha_space.total_trials()} trials, seed {asha_space.seed})"
        sections.append(f"{title}\n{compare_table(asha, full, asha_s, full_s)}")
        logger.info("%s", sections[-1])
        figures["compare"] = {"asha": search_figures(asha, asha_s), "full": search_figures(full, full_s)}
        write_json(args.json, figures)
    if not args.skip_ablation:
        space = load_space(args.ablation_space, overrides=args.ablation_set)
        report, seconds = _run(space, args.output, space.name)
        sections.append(f"## Ablation ({Path(space.path).name}, {seconds:.0f} s)\n{ablation_table(report)}")
        logger.info("%s", sections[-1])
        figures["ablation"] = {"wall_s": seconds, **search_figures(report, seconds)}
        write_json(args.json, figures)
    return "\n\n".join(sections)
