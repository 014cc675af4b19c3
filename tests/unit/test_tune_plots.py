"""The search plots keep the range where the trials differ readable when one trial diverges (issue 16: an AbsRel of
2.65 beside 0.20 flattened every other curve)."""

from __future__ import annotations

import math

import matplotlib.image
import pytest

from dad_ray.tune.analysis import ExperimentReport, TrialSummary, focus_range, plot
from dad_ray.tune.space import load_space


def test_focus_range_leaves_a_diverged_trial_outside():
    values = [0.20, 0.201, 0.205, 0.21, 0.22, 0.23, 0.24, 0.25, 0.26, 0.27, 2.65]
    lo, hi = focus_range(values, "min")
    assert lo < 0.20 < 0.27 < hi < 2.65
    assert hi == pytest.approx(0.27 + 0.05 * 0.07)


def test_focus_range_for_a_metric_to_maximise_cuts_the_low_side():
    lo, hi = focus_range([0.9, 0.89, 0.88, 0.87, 0.86, 0.85, 0.84, 0.83, 0.82, 0.81, 0.01], "max")
    assert 0.01 < lo < 0.81 and hi > 0.9


@pytest.mark.parametrize(
    ("values", "expected"),
    [([], (0.0, 1.0)), ([math.nan, math.inf], (0.0, 1.0)), ([0.2, 0.2], (0.19, 0.21)), ([0.0], (-0.05, 0.05))],
)
def test_focus_range_edge_cases(values, expected):
    assert focus_range(values, "min") == pytest.approx(expected)


def test_plots_of_a_search_with_a_diverged_and_a_failed_trial(tmp_path):
    space = load_space("smoke")

    def trial(tid, metrics, stopped=False):
        history = [{"step": 6 * (i + 1), "val_round": i + 1, "metric": m} for i, m in enumerate(metrics)]
        best = min(metrics) if metrics else math.nan
        hparams = {key: 1e-3 if key.endswith("lr") else "global" for key in space.searched_keys}
        return TrialSummary(tid, "TERMINATED", hparams, best, 12, 12, stopped, history=history)

    trials = [trial("a", [0.21, 0.20]), trial("b", [0.22, 0.215]), trial("c", [2.65], stopped=True), trial("d", [])]
    report = ExperimentReport(str(tmp_path), space, trials, steps_spent=30, steps_full=48)
    paths = plot(report, tmp_path / "plots")
    assert [p.rsplit("/", 1)[-1] for p in paths] == [
        *(f"metric_vs_{key.replace('.', '_')}.png" for key in space.searched_keys),
        "validation_curves.png",
    ]
    for path in paths:
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 300
