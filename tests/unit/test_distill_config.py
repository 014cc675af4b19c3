"""A bad distillation config fails before any worker starts, naming the key or file."""

import subprocess
import sys
from pathlib import Path

import pytest

from dad_ray.config import ConfigError, build_config

REPO = Path(__file__).resolve().parents[2]


def _validate(**overrides):
    from dad_ray.train import validate_experiment

    validate_experiment(build_config("smoke", overrides=overrides))


def test_missing_teacher_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(ConfigError, match=rf"model.teachers\[0\].weights: file not found: {missing}"):
        _validate(**{"model.teachers.0.weights": str(missing), "bootstrap.enabled": False})


def test_unknown_student_model():
    with pytest.raises(ConfigError, match="model.student: unknown model 'dav2_vitz'"):
        _validate(**{"model.student": "dav2_vitz"})


def test_missing_student_init_weights(tmp_path):
    with pytest.raises(ConfigError, match="model.student_weights: file not found"):
        _validate(**{"model.student_weights": str(tmp_path / "s.safetensors"), "model.student_init": "encoder"})


def test_missing_shards_without_synthetic(tmp_path):
    with pytest.raises(ConfigError, match="data.root/data.train_split: no shards for split 'unlabeled'"):
        _validate(**{"data.root": str(tmp_path), "data.synthetic.train_samples": 0})


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--set", "loss.lambda_gard=1"], "unknown config key 'loss.lambda_gard'"),
        (["--set", "data.crop_size=100"], "data.crop_size: must be a positive multiple of 14"),
        (["--set", "loss.lambda_lg=-1"], "loss.lambda_lg: must be >= 0"),
    ],
)
def test_cli_rejects_bad_config_before_starting_ray(args, fragment, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "distill.py"), "--preset", "smoke", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode != 0
    assert fragment in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr and "starting a local Ray" not in proc.stderr


def test_paths_become_absolute_for_workers_and_uris_stay(tmp_path, monkeypatch):
    """Workers run in their own directories: the default preset's relative paths must reach them absolute."""
    from dad_ray.config import with_absolute_paths

    monkeypatch.chdir(tmp_path)
    cfg = with_absolute_paths(build_config("default", overrides={"train.output": "s3://bucket/runs"}))
    assert cfg.data.root == str(tmp_path / "data" / "synthetic_240x320")
    assert cfg.model.teachers[0].weights == str(tmp_path / "runs" / ".cache" / "teacher_dav2_tiny_240x320.safetensors")
    assert cfg.train.output == "s3://bucket/runs" and cfg.model.student_weights == ""
    assert with_absolute_paths(cfg) == cfg


def test_teacher_weights_from_the_hugging_face_cache_count_as_present(tmp_path, monkeypatch):
    """An ``hf://`` teacher in the local hub cache is used as is (no bootstrap); one not in the cache is named."""
    from dad_ray.models import create_model, save_weights

    snapshot = tmp_path / "hub" / "models--org--teacher" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / "hub" / "models--org--teacher" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--teacher" / "refs" / "main").write_text("a" * 40)
    save_weights(create_model("dav2_micro"), snapshot / "model.safetensors")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    _validate(**{"model.teachers.0.weights": "hf://org/teacher/model.safetensors", "bootstrap.enabled": False})
    with pytest.raises(ConfigError, match=r"model.teachers\[0\].weights: file not found: hf://org/teacher/other"):
        _validate(**{"model.teachers.0.weights": "hf://org/teacher/other.safetensors", "bootstrap.enabled": False})
