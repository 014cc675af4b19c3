"""A precomputed teacher end to end: jobs/predict.py --write-column stores the smoke teacher's disparity as a shard
column (Ray Data actors), and a distillation draws, under "select", between that column and a live teacher."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def test_write_column_then_distil_with_a_live_and_a_precomputed_teacher(tmp_path, smoke_assets):
    from dad_ray.data.manifest import read_manifest
    from dad_ray.train import run_experiment

    data = tmp_path / "data"
    shutil.copytree(smoke_assets.data, data)  # the shared assets stay as they are
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "predict.py"), str(data / "unlabeled"), "--checkpoint",
         str(smoke_assets.teacher), "--write-column", "smoke_teacher", "--input-size", "56"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "RAY_ADDRESS": ""},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    columns = read_manifest(str(data / "unlabeled"))["teacher_columns"]
    assert columns["smoke_teacher"]["kind"] == "disparity"

    cfg = smoke_assets.config(
        tmp_path / "runs",
        "precomputed",
        **{
            "data.root": str(data),
            "model.teachers": [
                {"name": "dav2_micro", "weights": str(smoke_assets.teacher), "probability": 0.5},
                {"name": "dav2_micro", "column": "smoke_teacher", "probability": 0.5},
            ],
            "loss.lambda_feat": 0.0,  # a column carries no features (see validate_precomputed_teachers)
        },
    )
    metrics = run_experiment(cfg)
    assert np.isfinite(metrics["student"]["abs_rel"])
    assert "teacher" in metrics and "teacher_1" not in metrics  # a precomputed teacher has no model to evaluate
    journal = [json.loads(line) for line in (tmp_path / "runs" / "precomputed" / "progress.jsonl").open()]
    steps = [e for e in journal if "step" in e and "teachers" in e]
    assert max(e["step"] for e in steps) == cfg.optim.max_steps
    drawn = {t for e in steps for t in e["teachers"]}
    assert drawn == {0, 1}, drawn  # both the live and the precomputed teacher trained the student
    assert all(np.isfinite(e["loss"]) for e in steps)
