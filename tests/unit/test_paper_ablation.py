"""Issue 13: the paper's ablation grid (search_spaces/paper_ablation.yaml) and its layout in jobs/analyze.py."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest

from dad_ray.config import ConfigError
from dad_ray.tune.analysis import TrialSummary
from dad_ray.tune.paper_layout import cell_stats, format_paper_tables, paper_tables
from dad_ray.tune.space import load_space, parse_space


@pytest.fixture(scope="module")
def space():
    return load_space("paper_ablation")


def _cfg(space, name, seed=0):
    index = next(i for i, v in enumerate(space.variants) if v.get("name") == name)
    return space.trial_config({"train.seed": seed, "variant": index}, name="t", output="/tmp/unused")


def test_grid_is_ten_named_variants_times_three_seeds(space):
    names = [v["name"] for v in space.variants]
    assert names == [f"{t}_{n}" for t in ("sc", "lg") for n in ("global", "hybrid", "local", "none")] + [
        "baseline",
        "sc_lg",
    ]
    assert space.total_trials() == 30 and space.scheduler is None
    assert "name" not in space.searched_keys


@pytest.mark.parametrize("norm", ["global", "hybrid", "local", "none"])
def test_table1_cells(space, norm):
    sc = _cfg(space, f"sc_{norm}").loss
    assert (sc.lambda_sc, sc.lambda_lg, sc.sc_normalization) == (1.0, 0.0, norm)
    lg = _cfg(space, f"lg_{norm}").loss
    assert (lg.lambda_sc, lg.lambda_lg, lg.lambda_grad, lg.lg_normalization) == (0.0, 0.5, 0.0, norm)


def test_table2_rows_and_the_papers_patch_reading(space):
    base = _cfg(space, "baseline", seed=2)
    assert base.data.random_crop is False and base.loss.lambda_lg == 0.0 and base.train.seed == 2
    both = _cfg(space, "sc_lg")
    assert (both.loss.lambda_sc, both.loss.lambda_lg, both.loss.lambda_grad) == (1.0, 0.5, 2.0)
    assert (both.loss.sc_normalization, both.loss.lg_normalization) == ("hybrid", "hybrid")
    assert all(_cfg(space, v["name"]).data.local_source == "crop" for v in space.variants)
    assert _cfg(space, "sc_hybrid").data.random_crop is True


def test_variant_names_must_be_unique_strings():
    base = {"base_preset": "smoke", "params": {}}
    with pytest.raises(ConfigError, match=r"variants\[0\]\.name: 'a' names two variants"):
        parse_space({**base, "variants": [{"name": "a", "loss.lambda_lg": 0.0}, {"name": "a", "loss.lambda_lg": 0.5}]})
    with pytest.raises(ConfigError, match=r"variants\[0\]: expected a non-empty mapping"):
        parse_space({**base, "variants": [{"name": "only_a_name"}]})
    space = parse_space({**base, "variants": [{"loss.lambda_lg": 0.0}, {"name": "b", "loss.lambda_lg": 0.5}]})
    assert space.variant_name({"variant": 0}) == "variant 0" and space.variant_name({"variant": 1}) == "b"
    assert space.trial_values({"variant": 1}) == {"loss.lambda_lg": 0.5}


# A hand-written results table: (variant, final val_abs_rel) per trial.
ROWS = [
    ("sc_global", 0.20), ("sc_global", 0.22), ("sc_global", 0.24),  # mean 0.22, std 0.02
    ("sc_hybrid", 0.10), ("sc_hybrid", 0.30), ("sc_hybrid", 0.20),  # mean 0.20, std 0.10
    ("lg_none", 0.5), ("lg_none", 0.5), ("lg_none", math.nan),  # one failed: mean 0.5, std 0
    ("sc_lg", 0.125),  # one run
    ("baseline", math.nan),  # every run failed
    ("my_extra", 1.0),
]  # fmt: skip


def test_cell_statistics_by_hand():
    stats = cell_stats(ROWS)
    assert stats["sc_global"][:3] == pytest.approx((0.22, 0.02, 3))
    assert stats["sc_hybrid"][:3] == pytest.approx((0.20, 0.10, 3))
    assert stats["lg_none"] == pytest.approx((0.5, 0.0, 2, 1))
    assert math.isnan(stats["sc_lg"][1]) and stats["sc_lg"][2] == 1
    assert math.isnan(stats["baseline"][0]) and stats["baseline"][2:] == (0, 1)


def test_paper_layout_of_a_hand_written_table():
    text = format_paper_tables(ROWS)
    lines = text.splitlines()
    row = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in ("global", "hybrid", "none")}
    assert "0.2200 ± 0.0200" in row["global"] and ".064 / .259" in row["global"]
    assert row["global"].index("0.2200") < row["global"].index(".064")  # SC column, then the paper's
    assert "0.2000 ± 0.1000" in row["hybrid"]
    assert "0.5000 ± 0.0000 [+1 without a result]" in row["none"]
    sc_cells = {n: re.split(r"\s{2,}", row[n])[1] for n in row}  # the SC-only column
    assert sc_cells["none"] == "—"  # no sc_none trial in the table
    table2 = lines[lines.index(next(line for line in lines if line.startswith("Table 2"))) :]
    assert any(line.startswith("SC + LG") and "0.1250 (n=1)" in line and ".056 / .232" in line for line in table2)
    assert any(line.startswith("SC only") and "0.2000 ± 0.1000" in line for line in table2)
    assert any(line.startswith("baseline (no random crop)") and "no result (1)" in line for line in table2)
    assert "outside the paper's layout (not shown): my_extra" in text


def test_paper_layout_refuses_another_experiment():
    with pytest.raises(ValueError, match="no trial ran a variant of the paper's grid"):
        format_paper_tables([("variant 0", 0.1), ("", 0.2)])


def test_paper_tables_reads_the_final_metric_of_each_trial():
    def trial(variant, history):
        hist = [{"step": 30 * (i + 1), "val_round": i + 1, "metric": m} for i, m in enumerate(history)]
        best = min(history) if history else math.nan
        return TrialSummary("t", "TERMINATED", {}, best, 60, 60, False, history=hist, variant=variant)

    report = SimpleNamespace(
        trials=[trial("sc_lg", [0.1, 0.3]), trial("sc_lg", [0.5, 0.5]), trial("sc_hybrid", [])],
        space=SimpleNamespace(metric="val_abs_rel"),
    )
    text = paper_tables(report)  # final values 0.3 and 0.5 (not the best 0.1): mean 0.4, std 0.1414
    assert "0.4000 ± 0.1414" in text and "no result (1)" in text
