"""The paper's ablation tables (Distill-Any-Depth, Tables 1 and 2) from an experiment of ``paper_ablation.yaml``.

Cells are found by the trials' variant names (``search_spaces/paper_ablation.yaml``): ``sc_<norm>`` and ``lg_<norm>``
for Table 1 (normalisation x term), ``baseline``, ``lg_hybrid``, ``sc_hybrid`` and ``sc_lg`` for Table 2. A cell is
the mean ± sample standard deviation (n − 1) of the trials' FINAL validation metric over the repeats of its variant
(the seeds of the grid); the paper's ETH3D / DIODE AbsRel are printed beside it for reference (reference/METHOD.md;
"—" where METHOD.md gives none). Trials without a final metric (failed, still running, never validated) are counted
apart ("without a result") and never averaged in.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

NORMALIZATIONS = ("global", "hybrid", "local", "none")
# Table 2: (row label, variant name)
TABLE2_ROWS = (
    ("baseline (no random crop)", "baseline"),
    ("LG only", "lg_hybrid"),
    ("SC only", "sc_hybrid"),
    ("SC + LG", "sc_lg"),
)
# the paper's ETH3D / DIODE AbsRel (reference/METHOD.md "Ablations")
PAPER_TABLE1_SC = {"global": ".064 / .259", "none": ".057 / .239", "local": ".070 / .245", "hybrid": ".057 / .238"}
PAPER_TABLE2 = {"lg_hybrid": ".064 / .238", "sc_hybrid": ".058 / .237", "sc_lg": ".056 / .232"}
PAPER_VARIANTS = tuple(f"{t}_{n}" for t in ("sc", "lg") for n in NORMALIZATIONS) + ("baseline", "sc_lg")


def cell_stats(rows: Iterable[tuple[str, float]]) -> dict[str, tuple[float, float, int, int]]:
    """(variant, final metric) rows → variant → (mean, sample std, n finite, n missing); std is nan for n < 2 and
    mean is nan for n = 0. A nan metric (failed or never validated) counts as missing."""
    values: dict[str, list[float]] = {}
    missing: dict[str, int] = {}
    for variant, metric in rows:
        if metric is None or math.isnan(metric):
            missing[variant] = missing.get(variant, 0) + 1
            values.setdefault(variant, [])
        else:
            values.setdefault(variant, []).append(float(metric))
    out = {}
    for variant, vals in values.items():
        mean = statistics.fmean(vals) if vals else math.nan
        std = statistics.stdev(vals) if len(vals) >= 2 else math.nan
        out[variant] = (mean, std, len(vals), missing.get(variant, 0))
    return out


def _cell(stats: dict[str, tuple[float, float, int, int]], variant: str) -> str:
    if variant not in stats or stats[variant][2] == 0:
        return "—" if variant not in stats else f"no result ({stats[variant][3]})"
    mean, std, n, miss = stats[variant]
    text = f"{mean:.4f} ± {std:.4f}" if n >= 2 else f"{mean:.4f} (n=1)"
    return text + (f" [+{miss} without a result]" if miss else "")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[c]) for r in [header] + rows) for c in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("-" * len(lines[0]))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return lines


def format_paper_tables(rows: Iterable[tuple[str, float]], metric: str = "val_abs_rel") -> str:
    """Tables 1 and 2 of the paper from (variant name, final metric) rows (one per trial). Raises ValueError when
    no row names a variant of the paper's grid (the experiment is not a ``paper_ablation`` run)."""
    rows = list(rows)
    stats = cell_stats(rows)
    if not set(stats) & set(PAPER_VARIANTS):
        found = ", ".join(sorted(stats)) or "none"
        raise ValueError(
            f"no trial ran a variant of the paper's grid ({', '.join(PAPER_VARIANTS)}); variants found: {found}. "
            "Run search_spaces/paper_ablation.yaml, or use the default layout"
        )
    runs = ", ".join(str(n) for n in sorted({s[2] + s[3] for s in stats.values()}))
    lines = [
        f"Table 1: L_Dis normalisation per term ({metric} at the end of training, mean ± std; runs per cell: {runs})"
    ]
    t1 = [[n, _cell(stats, f"sc_{n}"), _cell(stats, f"lg_{n}"), PAPER_TABLE1_SC.get(n, "—")] for n in NORMALIZATIONS]
    lines += _table(["normalisation", "SC only", "LG only", "paper SC (ETH3D / DIODE AbsRel)"], t1)
    lines += ["", f"Table 2: cross-context distillation ({metric}; hybrid normalisation)"]
    t2 = [[label, _cell(stats, v), PAPER_TABLE2.get(v, "—")] for label, v in TABLE2_ROWS]
    lines += _table(["setting", metric, "paper (ETH3D / DIODE AbsRel)"], t2)
    others = sorted(set(stats) - set(PAPER_VARIANTS))
    if others:
        lines += ["", f"variants outside the paper's layout (not shown): {', '.join(others)}"]
    return "\n".join(lines)


def paper_tables(report) -> str:
    """:func:`format_paper_tables` of an :class:`~dad_ray.tune.analysis.ExperimentReport` (final metric per trial)."""
    return format_paper_tables(((t.variant, t.final) for t in report.trials), report.space.metric)
