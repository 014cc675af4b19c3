"""A timm student (the smallest of the zoo) distilled end to end through ``run_experiment`` on the smoke assets:
BatchNorm CNN backbone, padded input (crop 56 → 64), L_feat resampled from its 2x2 stride-32 map to the teacher's
4x4 grid and projected 128 → 96."""

from __future__ import annotations

import pytest
from safetensors import safe_open

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_local():
    from dad_ray.runtime import init_ray

    init_ray(4)
    yield
    ray.shutdown()


def test_timm_student_distils_and_evaluates(ray_local, tmp_path, smoke_assets):
    from dad_ray.models import create_model, load_weights
    from dad_ray.train import run_experiment

    cfg = smoke_assets.config(tmp_path / "runs", "timm_student", **{"model.student": "timm:efficientvit_b0"})
    metrics = run_experiment(cfg)
    run = tmp_path / "runs" / "timm_student"
    assert metrics["_info"]["steps"] == 12
    for row in ("teacher", "student", "untrained_student"):
        assert metrics[row]["n_images"] == 8 and 0 < metrics[row]["abs_rel"] < 1, row
    with safe_open(str(run / "student.safetensors"), framework="pt") as f:
        assert f.metadata()["arch"] == "timm:efficientvit_b0"
    load_weights(create_model("timm:efficientvit_b0"), run / "student.safetensors")  # strict
