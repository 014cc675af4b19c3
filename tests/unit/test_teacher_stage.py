"""The teacher stage of ``model.teacher_placement: data`` (the actor's function, without Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dad_ray.config import build_config, to_dict
from dad_ray.data.augment import normalize_uint8
from dad_ray.models import create_model, save_weights
from dad_ray.train.step import build_teachers
from dad_ray.train.task import TeacherPool
from dad_ray.train.teacher_stage import TeacherStage


def _cfg(tmp_path, **overrides):
    weights = str(tmp_path / "t.safetensors")
    torch.manual_seed(0)
    save_weights(create_model("dav2_micro"), weights)
    base = {"model.teachers.0.weights": weights, "model.teacher_placement": "data"}
    return build_config("smoke", overrides={**base, **overrides})


def _rows(cfg, b=3):
    g = np.random.default_rng(0)
    c, p, (rows, cols) = cfg.data.crop_size, cfg.data.local_patch_size, cfg.data.local_grid
    return {
        "crop_image": g.integers(0, 256, (b, 3, c, c), dtype=np.uint8),
        "local_images": g.integers(0, 256, (b, rows * cols, 3, p, p), dtype=np.uint8),
        "index": np.arange(b),
    }


@pytest.mark.parametrize("transport", ["float32", "float16"])
def test_stage_adds_the_live_teachers_labels_as_the_worker_would_compute_them(tmp_path, transport):
    cfg = _cfg(tmp_path, **{"model.teacher_stage.transport": transport})
    rows = _rows(cfg)
    out = TeacherStage(to_dict(cfg))(dict(rows))
    pool = TeacherPool(cfg.model.teachers, torch.device("cpu"), seed=0)
    crop = normalize_uint8(torch.from_numpy(rows["crop_image"]))
    local = normalize_uint8(torch.from_numpy(rows["local_images"]))
    want_crop, want_feat, want_local = pool.predict(0, crop, local)
    dtype = np.float16 if transport == "float16" else np.float32
    assert out["teacher0_crop"].dtype == dtype and out["teacher0_crop"].shape == tuple(want_crop.shape)
    assert out["teacher0_local"].shape == tuple(want_local.shape)  # (B, N, P, P)
    assert out["teacher0_feat"].shape == tuple(want_feat.shape)  # smoke: random student, L_feat on the teacher
    tol = {"rtol": 0, "atol": 0} if transport == "float32" else {"rtol": 1e-3, "atol": 1e-3}
    np.testing.assert_allclose(out["teacher0_crop"].astype(np.float32), want_crop.numpy(), **tol)
    np.testing.assert_allclose(out["teacher0_local"].astype(np.float32), want_local.numpy(), **tol)
    np.testing.assert_array_equal(out["crop_image"], rows["crop_image"])  # the row itself passes through


def test_with_data_placement_the_workers_load_no_teacher_and_the_stage_skips_columns(tmp_path):
    cfg = _cfg(tmp_path)
    pool = build_teachers(cfg, torch.device("cpu"))
    assert pool.models == [None] and pool.dims == [create_model("dav2_micro").embed_dim]  # layout only
    worker = build_teachers(
        build_config("smoke", overrides={"model.teachers.0.weights": cfg.model.teachers[0].weights}),
        torch.device("cpu"),
    )
    assert worker.models[0] is not None  # the default placement: the worker runs it
    two = _cfg(
        tmp_path,
        **{
            "model.teachers": [
                {"name": "dav2_micro", "weights": cfg.model.teachers[0].weights, "probability": 0.5},
                {"name": "ext", "column": "ext", "probability": 0.5},
            ],
            "loss.lambda_feat": 0.0,
        },
    )
    out = TeacherStage(to_dict(two))(_rows(two))
    assert "teacher0_crop" in out and not any(k.startswith("teacher1") for k in out)
    assert "teacher0_feat" not in out  # L_feat off: no features travel


def test_teacher_node_type_and_memory_estimate_without_the_teacher(tmp_path):
    from pathlib import Path

    from dad_ray.cluster import estimate_gpu_memory_gib, load_cluster_config, node_types

    types = node_types(load_cluster_config(Path(__file__).parents[2] / "cluster.yaml"))
    assert types["gpu_teacher_l4"].gpus == 4 and types["gpu_teacher_l4"].gpu_mem_gib == 22.0
    worker = estimate_gpu_memory_gib(build_config("nyu_vitl_to_vitb"))
    data = estimate_gpu_memory_gib(build_config("nyu_vitl_to_vitb", overrides={"model.teacher_placement": "data"}))
    # the ViT-L teacher (bf16, ~0.6 GiB) leaves the workers; the frozen initial student copy (L_feat) stays
    assert worker.parts_gib["teacher_weights"] - data.parts_gib["teacher_weights"] > 0.5
    assert data.total_gib < worker.total_gib


def test_stage_config_is_validated():
    with pytest.raises(ValueError, match="model.teacher_stage.actors"):
        build_config("smoke", overrides={"model.teacher_stage.actors": 0})
    with pytest.raises(ValueError, match="teacher_placement"):
        build_config("smoke", overrides={"model.teacher_placement": "gpu"})


def test_benchmark_counts_the_issues_flops_on_the_smoke_preset():
    from dad_ray.bench.teacher_stage import count_sample_flops

    f = count_sample_flops(build_config("smoke"))
    assert f["teacher_tflop"] > 0 and f["student_tflop"] > 0
    assert f["teacher_per_student_gpu"] == pytest.approx(f["teacher_tflop"] / f["student_tflop"])
