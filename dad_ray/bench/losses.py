"""Vectorised hybrid L_Dis vs a per-image, per-context Python loop (forward + backward, CPU).

    python jobs/benchmark.py losses [--batch 8] [--size 392] [--repeats 5] [--normalization hybrid] [--threads N]

Both sides get the same random student (requires grad), teacher and mask (10 % of pixels invalid); the loop is the
straightforward implementation (HDN-style) in :mod:`dad_ray.losses.reference`, the one the unit tests also check
the vectorised loss against: for every image, every level S and every segment, select the pixels, ``torch.median``
+ mean absolute deviation, accumulate |N(s) − N(t)|. The two results are checked to agree before
timing. Prints the median and min times of ``--repeats`` runs after one warm-up and their ratio. The CPU goal of
>= 20x is retired (issue 16: the loop is not Python-bound on CPU); ``benchmark.py gpu`` reports the same comparison
on the device, where the loop's per-context host syncs cost most, and the loss share of a step.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from dad_ray.bench import add_json_arg, write_json
from dad_ray.losses import dis_loss
from dad_ray.losses.reference import loop_dis_loss

logger = logging.getLogger(__name__)


def _time(fn, student: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(median, min) seconds of forward + backward, after one warm-up."""
    times = []
    for i in range(repeats + 1):
        student.grad = None
        start = time.perf_counter()
        fn().backward()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; returns the report (a Markdown table and the ratio)."""
    parser = argparse.ArgumentParser(
        prog="benchmark.py losses", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=392)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--normalization", default="hybrid", choices=["hybrid", "local", "global", "none"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    add_json_arg(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.size, args.size)
    teacher = torch.rand(shape, generator=g) * 10
    student = (0.5 * teacher + torch.rand(shape, generator=g)).requires_grad_(True)
    mask = torch.rand(shape, generator=g) > 0.1
    norm = args.normalization

    vec = dis_loss(student, teacher, mask, norm)
    ref = loop_dis_loss(student, teacher, mask, norm)
    if not torch.allclose(vec, ref, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"vectorised {vec.item():.6f} and loop {ref.item():.6f} disagree")
    logger.info("L_Dis (%s) = %.6f on both sides; torch %d threads", norm, vec.item(), torch.get_num_threads())
    v_med, v_min = _time(lambda: dis_loss(student, teacher, mask, norm), student, args.repeats)
    l_med, l_min = _time(lambda: loop_dis_loss(student, teacher, mask, norm), student, args.repeats)
    figures = {"normalization": norm, "batch": args.batch, "size": args.size, "threads": torch.get_num_threads()}
    figures.update(vectorised_median_s=v_med, vectorised_min_s=v_min, loop_median_s=l_med, loop_min_s=l_min)
    figures.update(ratio_median=l_med / v_med, ratio_min=l_min / v_min, loss=vec.item())
    write_json(args.json, figures)
    return "\n".join(
        [
            f"| {norm} L_Dis fwd+bwd, B={args.batch}, {args.size}x{args.size}, CPU | median ms | min ms |",
            "|---|---|---|",
            f"| vectorised | {1e3 * v_med:.1f} | {1e3 * v_min:.1f} |",
            f"| per-image/per-context loop | {1e3 * l_med:.1f} | {1e3 * l_min:.1f} |",
            f"ratio loop / vectorised = {l_med / v_med:.1f}x (median), {l_min / v_min:.1f}x (min)",
        ]
    )
