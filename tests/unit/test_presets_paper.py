"""Issue 13: the paper presets say what they are — effective batch 8, the paper's optimiser and loss settings, a
header naming the table they reproduce and where they depart."""

from __future__ import annotations

from importlib import resources

import pytest

from dad_ray.config import build_config
from dad_ray.config.loader import read_yaml_mapping

PRESETS = resources.files("dad_ray.config.presets")
PAPER_PRESETS = sorted(f.name[:-5] for f in PRESETS.iterdir() if f.name.startswith("nyu_") and f.name.endswith(".yaml"))
ALL_PRESETS = sorted(f.name[:-5] for f in PRESETS.iterdir() if f.name.endswith(".yaml"))


def test_the_paper_presets_are_found():
    assert {
        "nyu_vitl_to_vitb",
        "nyu_vitl_to_vits",
        "nyu_vitl_dav2b_assistant_to_vitb",
        "nyu_vitl_precomputed_assistant_to_vitb",
    } <= set(PAPER_PRESETS)


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_effective_batch_is_the_papers_8(name):
    cfg = build_config(name)
    assert cfg.data.batch_size != "auto", name
    effective = int(cfg.data.batch_size) * cfg.train.num_workers * cfg.optim.grad_accum
    assert effective == 8, f"{name}: {cfg.data.batch_size} x {cfg.train.num_workers} x {cfg.optim.grad_accum}"


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_paper_hyper_parameters(name):
    cfg = build_config(name)
    o, d, loss = cfg.optim, cfg.data, cfg.loss
    assert (o.grad_clip, o.weight_decay, o.decay_exclude) == (0.0, 0.01, False)
    assert (o.lr, o.lr * o.encoder_lr_mult) == pytest.approx((5e-5, 5e-6))
    assert (o.schedule, o.poly_power, o.warmup_steps, o.max_steps) == ("poly", 0.9, 0, 20000)
    assert (d.crop_size, d.min_crop, d.random_crop) == (560, 644, True)
    assert (d.local_source, d.local_patch_size) == ("crop", 560)
    assert (loss.lambda_sc, loss.lambda_lg, loss.lambda_feat, loss.lambda_grad) == (1.0, 0.5, 1.0, 2.0)
    assert (loss.sc_normalization, loss.lg_normalization) == ("hybrid", "hybrid")


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_header_names_what_it_reproduces_and_where_it_departs(name):
    text = (PRESETS / f"{name}.yaml").read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    read_yaml_mapping(PRESETS / f"{name}.yaml", "preset")  # parses
    if name.startswith("nyu_") or name == "zoo_cpu":
        assert "Reproduces:" in header and "Depart" in header, name


def test_the_dav2b_assistant_preset_says_so():
    cfg = build_config("nyu_vitl_dav2b_assistant_to_vitb")
    assert [t.name for t in cfg.model.teachers] == ["dav2_vitl", "dav2_vitb"]
    assert [t.probability for t in cfg.model.teachers] == [0.7, 0.3]
    header = (PRESETS / "nyu_vitl_dav2b_assistant_to_vitb.yaml").read_text().split("\nbase:")[0]
    assert "ASSISTANT IS DAv2-BASE" in header and "GenPercept" in header


def test_the_precomputed_assistant_preset_reads_a_column_and_needs_no_features_from_it():
    from dad_ray.train.experiment import validate_precomputed_teachers
    from dad_ray.train.task import feat_target

    cfg = build_config("nyu_vitl_precomputed_assistant_to_vitb")
    live, assistant = cfg.model.teachers
    assert (live.column, live.probability) == ("", 0.7)
    assert (assistant.column, assistant.weights, assistant.probability) == ("genpercept", "", 0.3)
    assert feat_target(cfg) == "initial"
    validate_precomputed_teachers(cfg)  # no ConfigError: L_feat needs nothing of the column
    header = (PRESETS / "nyu_vitl_precomputed_assistant_to_vitb.yaml").read_text().split("\nbase:")[0]
    assert "jobs/attach_teacher.py" in header and "GenPercept" in header
