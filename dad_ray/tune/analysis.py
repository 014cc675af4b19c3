"""Reading a finished (or interrupted) experiment: ranked trials, the best config, plots, search efficiency.

The experiment directory may be local or a URI (``s3://…``): every read and write goes through
:mod:`dad_ray.data.storage` (plots are drawn locally and uploaded)."""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from dad_ray.config import ExperimentConfig, from_dict, get_dotted, to_dict
from dad_ray.data import storage
from dad_ray.train.monitor import JOURNAL_FILE, read_journal
from dad_ray.train.startup import PHASES, startup_phases
from dad_ray.tune.driver import TRIALS_DIR, load_experiment_space, save_config_to
from dad_ray.tune.space import SearchSpace

logger = logging.getLogger(__name__)

BEST_CONFIG = "best_config.yaml"


@dataclass
class TrialSummary:
    trial_id: str
    status: str  # TERMINATED / ERROR / RUNNING / PENDING ...
    hparams: dict[str, Any]
    best: float  # best metric (nan when never validated)
    steps: int  # optimizer steps run
    time_used: int  # last value of the scheduler's time attribute
    stopped_early: bool  # ASHA stopped it before max_t
    error: str = ""
    history: list[dict[str, float]] = field(default_factory=list)  # {step, val_round, metric}
    variant: str = ""  # the variant it ran (its name, or "variant <i>"); "" when the space has none
    startup: dict[str, float] = field(default_factory=dict)  # seconds per phase (dad_ray.train.startup), if known

    @property
    def final(self) -> float:
        """The metric at the last validation (nan when never validated)."""
        return self.history[-1]["metric"] if self.history else float("nan")


@dataclass
class ExperimentReport:
    exp_dir: str  # local (absolute) or URI
    space: SearchSpace
    trials: list[TrialSummary]  # ranked, best first; failed/never-validated last
    steps_spent: int
    steps_full: int  # every trial to max_t

    @property
    def best(self) -> TrialSummary | None:
        return self.trials[0] if self.trials and not math.isnan(self.trials[0].best) else None

    @property
    def efficiency(self) -> float:
        return self.steps_spent / self.steps_full if self.steps_full else float("nan")


def _read_results(trial_path: str) -> list[dict[str, Any]]:
    path = storage.join(trial_path, "result.json")
    if not storage.is_file(path):
        return []
    rows = []
    for line in storage.read_path(path).decode().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by an interruption
                logger.warning("%s: skipping a truncated line", path)
    return rows


def _tune_trial_dirs(exp_dir: str) -> dict[str, str]:
    """trial id → Tune's trial directory (the ones holding params.json)."""
    out = {}
    for name in storage.children(exp_dir):
        trial_dir = storage.join(exp_dir, name)
        if name == TRIALS_DIR or not storage.is_file(storage.join(trial_dir, "params.json")):
            continue
        rows = _read_results(trial_dir)
        trial_id = rows[0]["trial_id"] if rows else None
        if trial_id is None:
            # Tune's trial dir names end with <trial id> before the parameters: run_trial_<id>_<n>_...
            parts = name.split("_")
            trial_id = next((f"{a}_{b}" for a, b in zip(parts, parts[1:]) if len(b) == 5 and b.isdigit()), None)
        if trial_id:
            out[trial_id] = trial_dir
    return out


def _trial_states(exp_dir: str, dirs: dict[str, str]) -> dict[str, dict[str, Any]]:
    """trial id → {status, config, error} from Tune's experiment state (ExperimentAnalysis); the error is the last
    line of ``error.txt`` in the trial's directory (``dirs``: no Ray session needed, unlike ``Trial.local_path``)."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(exp_dir)
    out = {}
    for trial in analysis.trials:
        error = ""
        if trial.status == "ERROR":
            error_file = storage.join(dirs[trial.trial_id], "error.txt") if trial.trial_id in dirs else None
            if error_file is not None and storage.is_file(error_file):
                error = storage.read_path(error_file).decode().strip().splitlines()[-1]
            else:
                error = "error (no error.txt in the trial directory)"
        out[trial.trial_id] = {"status": trial.status, "config": trial.config, "error": error}
    return out


def analyze(exp_dir: str | os.PathLike) -> ExperimentReport:
    """Rank the trials of the experiment at ``exp_dir`` (local or URI)."""
    exp_dir = storage.absolute(str(exp_dir))
    space = load_experiment_space(exp_dir)
    sched = space.scheduler
    metric, sign = space.metric, (1 if space.mode == "min" else -1)
    dirs = _tune_trial_dirs(exp_dir)
    states = _trial_states(exp_dir, dirs)
    base = space.base
    steps_per_time = base.train.val_every if sched and sched.time_attr == "val_round" else 1
    max_t = sched.max_t if sched else None

    trials = []
    for trial_id, state in states.items():
        rows = _read_results(dirs[trial_id]) if trial_id in dirs else []
        history = [
            {"step": r.get("step", 0), "val_round": r.get("val_round", 0), "metric": r[metric]}
            for r in rows
            if metric in r and r[metric] is not None
        ]
        values = [h["metric"] for h in history if not math.isnan(h["metric"])]
        best = (min if sign > 0 else max)(values) if values else float("nan")
        steps = max((h["step"] for h in history), default=0)
        time_attr = sched.time_attr if sched else "step"
        time_used = max((h[time_attr] for h in history), default=0)
        cfg = space.trial_config(state["config"], name="x", output=exp_dir)
        tree = to_dict(cfg)
        trials.append(
            TrialSummary(
                trial_id=trial_id,
                status=state["status"],
                hparams={k: get_dotted(tree, k) for k in space.searched_keys},
                best=best,
                steps=steps,
                time_used=time_used,
                stopped_early=bool(max_t and state["status"] == "TERMINATED" and time_used < max_t),
                error=state["error"],
                history=history,
                variant=space.variant_name(state["config"]),
                startup=_trial_startup(exp_dir, trial_id),
            )
        )
    trials.sort(key=lambda t: (math.isnan(t.best), sign * t.best if not math.isnan(t.best) else 0.0, t.trial_id))
    spent = sum(t.steps for t in trials)
    full = len(trials) * (max_t * steps_per_time if max_t else base.optim.max_steps)
    return ExperimentReport(exp_dir=exp_dir, space=space, trials=trials, steps_spent=spent, steps_full=full)


def _trial_startup(exp_dir: str, trial_id: str) -> dict[str, float]:
    """The phases of the trial's start-up from its run's journal; empty when it has none (never started, or a run
    from before the journal kept them)."""
    path = storage.join(exp_dir, TRIALS_DIR, trial_id, JOURNAL_FILE)
    if not storage.is_file(path):
        return {}
    return startup_phases(read_journal(path)) or {}


def startup_summary(trials: list[TrialSummary]) -> str | None:
    """One line: the median over the trials of each start-up phase and of the total to the first step."""
    known = [t.startup for t in trials if "total" in t.startup]
    if not known:
        return None
    names = [name for name, _, _ in PHASES]
    medians = {n: statistics.median(v) for n in [*names, "total"] if (v := [p[n] for p in known if n in p])}
    parts = [f"{n} {medians[n]:.1f} s" for n in names if n in medians]
    return f"start-up to the first step, median of {len(known)} trials: {medians['total']:.1f} s ({', '.join(parts)})"


def write_best_config(report: ExperimentReport) -> str | None:
    """The best trial's complete config as ``best_config.yaml`` (``jobs/distill.py --config`` runs it as a fresh
    run named ``best_<trial id>``); returns where it was written (local path or URI)."""
    best = report.best
    if best is None:
        logger.warning("no trial reported %s: no best config written", report.space.metric)
        return None
    cfg = from_dict(ExperimentConfig, yaml.safe_load(storage.read_path(_trial_config(report, best.trial_id))))
    cfg = replace(cfg, train=replace(cfg.train, name=f"best_{best.trial_id}"))
    path = storage.join(report.exp_dir, BEST_CONFIG)
    save_config_to(cfg, path)
    return path


def _trial_config(report: ExperimentReport, trial_id: str) -> str:
    return storage.join(report.exp_dir, TRIALS_DIR, trial_id, "config.yaml")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(report: ExperimentReport) -> str:
    keys = report.space.searched_keys
    named = any(t.variant for t in report.trials)
    header = (
        ["rank", "trial"] + (["variant"] if named else []) + keys + [f"best {report.space.metric}", "steps", "status"]
    )
    rows = []
    for i, t in enumerate(report.trials, 1):
        status = (
            "ERROR: " + t.error[:60]
            if t.status == "ERROR"
            else ("stopped by ASHA" if t.stopped_early else t.status.lower())
        )
        variant = [t.variant] if named else []
        rows.append(
            [str(i), t.trial_id] + variant + [_fmt(t.hparams[k]) for k in keys] + [_fmt(t.best), str(t.steps), status]
        )
    widths = [max(len(r[c]) for r in [header] + rows) for c in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("-" * len(lines[0]))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    lines.append(
        f"search efficiency: {report.steps_spent} steps spent vs {report.steps_full} to run every trial to max_t "
        f"({100 * report.efficiency:.1f} %); {sum(t.stopped_early for t in report.trials)} stopped early by ASHA, "
        f"{sum(t.status == 'ERROR' for t in report.trials)} failed"
    )
    if (startup := startup_summary(report.trials)) is not None:
        lines.append(startup)
    return "\n".join(lines)


def rungs(report: ExperimentReport) -> list[int]:
    s = report.space.scheduler
    if s is None:
        return []
    out, t = [], s.grace_period
    while t < s.max_t:
        out.append(int(t))
        t *= s.reduction_factor
    return out


def focus_range(values: list[float], mode: str, quantile: float = 0.9) -> tuple[float, float]:
    """Y-limits that show where the trials differ: from the best value to the ``quantile`` of the others on the
    worse side (``mode`` "min": the upper side), padded by 5 %. One diverged trial (AbsRel 2.6 beside 0.20) would
    otherwise flatten every other curve into a line; the points outside are drawn at the edge (see :func:`_draw`).
    Values that are not finite are ignored; (0, 1) when none is."""
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return 0.0, 1.0
    if mode == "max":
        finite = [-v for v in reversed(finite)]
    lo = finite[0]
    hi = finite[min(len(finite) - 1, math.ceil(quantile * (len(finite) - 1)))]
    pad = 0.05 * (hi - lo) if hi > lo else 0.05 * abs(lo) or 0.05
    lo, hi = lo - pad, hi + pad
    return (lo, hi) if mode != "max" else (-hi, -lo)


def _on_the_edge(ax, xs: list, ys: list[float], limits: tuple[float, float], colors: list) -> int:
    """Draw the points beyond ``limits`` (lo, hi) as triangles on the edge they left by; returns how many."""
    lo, hi = limits
    count = 0
    for edge, marker, beyond in ((hi, "^", lambda y: y > hi), (lo, "v", lambda y: y < lo)):
        points = [(x, c) for x, y, c in zip(xs, ys, colors) if beyond(y)]
        count += len(points)
        if points:
            ax.scatter(
                [x for x, _ in points], [edge] * len(points), marker=marker, c=[c for _, c in points], clip_on=False
            )
    return count


def _note_outside(ax, count: int) -> None:
    if count:
        ax.text(
            0.99,
            0.01,
            f"{count} outside the range: triangles on the edge",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=7,
            color="grey",
        )


def plot(report: ExperimentReport, out_dir: str | os.PathLike | None = None) -> list[str]:
    """PNG plots: the metric vs each hyper-parameter, and every trial's validation curve with ASHA's rungs, in
    ``out_dir`` (default ``<experiment>/plots``; a URI gets them uploaded). Returns their paths (or URIs)."""
    target = str(out_dir) if out_dir is not None else storage.join(report.exp_dir, "plots")
    if not storage.is_uri(target):
        return [str(p) for p in _draw(report, Path(target))]
    with tempfile.TemporaryDirectory(prefix="dad_ray_plots_") as tmp:
        paths = _draw(report, Path(tmp))
        storage.upload_tree(tmp, target)
    return [storage.join(target, p.name) for p in paths]


def _draw(report: ExperimentReport, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    metric = report.space.metric
    done = [t for t in report.trials if not math.isnan(t.best)]
    paths = []
    for key in report.space.searched_keys:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        xs = [t.hparams[key] for t in done]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        if not numeric:
            cats = sorted({str(x) for x in xs})
            xs = [cats.index(str(x)) for x in xs]
            ax.set_xticks(range(len(cats)), cats)
        colors = ["tab:red" if t.stopped_early else "tab:blue" for t in done]
        ys = [t.best for t in done]
        lo, hi = focus_range(ys, report.space.mode)
        ax.scatter(xs, ys, c=colors)
        _note_outside(ax, _on_the_edge(ax, xs, ys, (lo, hi), colors))
        ax.set_ylim(lo, hi)
        if numeric and key.endswith("lr") or (numeric and xs and min(xs) > 0 and max(xs) / min(xs) > 50):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(f"best {metric}")
        ax.set_title(f"{metric} vs {key} (red: stopped by ASHA)", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"metric_vs_{key.replace('.', '_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)

    time_attr = report.space.scheduler.time_attr if report.space.scheduler else "step"
    fig, ax = plt.subplots(figsize=(6, 4))
    curves = [t for t in report.trials if t.history]
    lo, hi = focus_range([h["metric"] for t in curves for h in t.history], report.space.mode)
    outside = 0
    for t in curves:
        xs, ys = [h[time_attr] for h in t.history], [h["metric"] for h in t.history]
        (line,) = ax.plot(xs, ys, marker="o", linestyle="--" if t.stopped_early else "-", label=t.trial_id)
        outside += _on_the_edge(ax, xs, ys, (lo, hi), [line.get_color()] * len(xs))
    ax.set_ylim(lo, hi)
    for r in rungs(report):
        ax.axvline(r, color="grey", linestyle=":", linewidth=1)
        ax.text(r, hi, f" rung {r}", va="top", fontsize=7, color="grey")
    _note_outside(ax, outside)
    ax.set_xlabel(time_attr)
    ax.set_ylabel(metric)
    ax.set_title("validation curves (dashed: stopped by ASHA; dotted lines: ASHA rungs)", fontsize=9)
    if len(report.trials) <= 12:
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = out_dir / "validation_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
    return paths
