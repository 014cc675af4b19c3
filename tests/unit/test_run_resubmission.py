"""A second submission of a run (same --name and --output) continues it only with the config it was made with: any
other key is refused, naming it with the old and new values, unless --fresh deletes the run first. No Ray here."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dad_ray.config import ConfigError, build_config, save_config, to_dict, with_absolute_paths
from dad_ray.train import experiment
from dad_ray.train.experiment import (
    ABSENT,
    RESUMABLE_KEYS,
    check_run_config,
    config_changes,
    flat_config,
    start_fresh,
)
from dad_ray.train.trainer import run_dir

REPO = Path(__file__).resolve().parents[2]


def _cfg(output: str, **overrides):
    return build_config("smoke", overrides={"train.output": output, "train.name": "run", **overrides})


def _save_run(cfg) -> Path:
    """The run directory as run_experiment leaves it: config.yaml (absolute paths) + a checkpoint directory."""
    directory = Path(run_dir(cfg).removeprefix("file://"))
    save_config(with_absolute_paths(cfg), directory / "config.yaml")
    (directory / "checkpoints" / "checkpoint_step0000006").mkdir(parents=True)
    (directory / "checkpoints" / "checkpoint_step0000006" / "student.safetensors").write_bytes(b"x")
    return directory


def test_flat_config_indexes_lists_of_mappings_and_keeps_other_lists_whole():
    tree = {"data": {"global_size": [56, 70]}, "model": {"teachers": [{"name": "a", "weights": "w"}]}}
    assert flat_config(tree) == {
        "data.global_size": [56, 70],
        "model.teachers.0.name": "a",
        "model.teachers.0.weights": "w",
    }


def test_config_changes_nested_keys_teachers_and_allowed_keys():
    old = to_dict(build_config("smoke"))
    new = to_dict(
        build_config(
            "smoke",
            overrides={
                "loss.lambda_lg": 0.25,
                "data.global_size": [70, 84],
                "model.teachers": [
                    {"name": "dav2_micro", "weights": "t0.safetensors", "probability": 0.5},
                    {"name": "dav2_tiny", "weights": "t1.safetensors", "probability": 0.5},
                ],
                "optim.max_steps": 18,  # continuing longer: allowed
                "train.fail_at_step": 8,
                "train.max_failures": 0,
                "train.output": "elsewhere",
            },
        )
    )
    changes = config_changes(old, new)
    assert changes == {
        "data.global_size": ([56, 70], [70, 84]),
        "model.teachers.0.weights": ("runs/.cache/teacher_smoke.safetensors", "t0.safetensors"),
        "model.teachers.0.probability": (1.0, 0.5),
        "model.teachers.1.name": (ABSENT, "dav2_tiny"),
        "model.teachers.1.weights": (ABSENT, "t1.safetensors"),
        "model.teachers.1.probability": (ABSENT, 0.5),
        "model.teachers.1.column": (ABSENT, ""),
        "loss.lambda_lg": (0.5, 0.25),
    }
    assert config_changes(new, old)["model.teachers.1.name"] == ("dav2_tiny", ABSENT)  # a teacher removed
    assert config_changes(old, old) == {}
    assert {"optim.max_steps", "train.output"} <= RESUMABLE_KEYS
    assert "optim.max_steps" in config_changes(old, new, allowed=())


def test_changed_config_is_refused_naming_keys_and_values(tmp_path):
    saved = _cfg(str(tmp_path / "runs"))
    directory = _save_run(saved)
    before = (directory / "config.yaml").read_text()
    changed = _cfg(str(tmp_path / "runs"), **{"loss.lambda_lg": 0.25, "model.student": "dav2_tiny"})
    with pytest.raises(ConfigError) as err:
        check_run_config(changed)
    message = str(err.value)
    assert str(directory) in message
    assert "loss.lambda_lg: 0.5 → 0.25" in message
    assert "model.student: 'dav2_micro' → 'dav2_tiny'" in message
    assert "--fresh" in message and f"--config {directory / 'config.yaml'}" in message
    assert (directory / "config.yaml").read_text() == before  # nothing written


def test_same_run_continues_longer_and_relative_paths_compare_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _save_run(_cfg("runs"))  # saved with absolute paths, submitted again with relative ones
    check_run_config(_cfg("runs"))
    check_run_config(_cfg(str(tmp_path / "runs"), **{"optim.max_steps": 18, "train.fail_at_step": -1}))
    check_run_config(_cfg(str(tmp_path / "other")))  # another run directory: nothing saved, nothing to compare
    monkeypatch.chdir(tmp_path / "runs")  # the same relative paths from elsewhere are other files
    with pytest.raises(ConfigError, match=r"data\.root: .*→ '" + re.escape(str(tmp_path / "runs" / "data"))):
        check_run_config(_cfg(str(tmp_path / "runs")))


def test_saved_config_is_read_through_a_uri(tmp_path):
    uri = f"file://{tmp_path / 'remote'}"
    _save_run(_cfg(uri))
    check_run_config(_cfg(uri, **{"optim.max_steps": 30}))
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.002 → 0\.001"):
        check_run_config(_cfg(uri, **{"optim.lr": 1e-3}))


def test_unreadable_saved_config_is_a_config_error(tmp_path):
    cfg = _cfg(str(tmp_path / "runs"))
    directory = _save_run(cfg)
    (directory / "config.yaml").write_text("loss: {lambda_gard: 1}\n")
    with pytest.raises(ConfigError, match=r"config\.yaml: the saved config of this run cannot be read .*--fresh"):
        check_run_config(cfg)


@pytest.mark.parametrize("uri", [False, True])
def test_fresh_empties_the_run_directory(tmp_path, uri, caplog):
    output = f"file://{tmp_path / 'runs'}" if uri else str(tmp_path / "runs")
    directory = _save_run(_cfg(output))
    other_run = _save_run(_cfg(output, **{"train.name": "other"}))
    changed = _cfg(output, **{"loss.lambda_lg": 0.25})
    with caplog.at_level(logging.INFO, logger="dad_ray.train.experiment"):
        start_fresh(changed)
    assert directory.is_dir() and list(directory.iterdir()) == []
    assert (other_run / "config.yaml").is_file()  # only that run's directory
    assert "--fresh: deleted the run in" in caplog.text and "checkpoints, config.yaml" in caplog.text
    check_run_config(changed)  # a new run under the same name
    start_fresh(changed)  # nothing left to delete is fine
    start_fresh(_cfg(output, **{"train.name": "never_ran"}))


def test_fresh_refuses_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "runs" / "photos").mkdir(parents=True)
    (tmp_path / "runs" / "photos" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(ConfigError, match="does not look like a run directory"):
        start_fresh(_cfg(str(tmp_path / "runs"), **{"train.name": "photos"}))
    assert (tmp_path / "runs" / "photos" / "cat.jpg").is_file()


def test_prepare_experiment_checks_before_anything_starts(tmp_path, monkeypatch):
    """The check (or --fresh's delete) comes before Ray, the synthetic data and the teacher bootstrap."""

    class RayStarted(Exception):
        pass

    def init_ray():
        raise RayStarted

    monkeypatch.setattr(experiment, "init_ray", init_ray)
    directory = _save_run(_cfg(str(tmp_path / "runs")))
    changed = _cfg(str(tmp_path / "runs"), **{"loss.lambda_lg": 0.25})
    with pytest.raises(ConfigError, match="loss.lambda_lg"):
        experiment.prepare_experiment(changed)
    assert (directory / "checkpoints").is_dir()
    with pytest.raises(RayStarted):
        experiment.prepare_experiment(changed, fresh=True)
    assert list(directory.iterdir()) == []


def test_cli_refuses_a_changed_config_before_starting_ray(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _save_run(_cfg("runs"))
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "distill.py"), "--preset", "smoke", "--output", "runs", "--name", "run"]
        + ["--set", "loss.lambda_lg=0.25", "--max-steps", "30"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "loss.lambda_lg: 0.5 → 0.25" in proc.stderr and "optim.max_steps" not in proc.stderr.split("Resubmit")[0]
    assert "Started a local Ray instance" not in proc.stderr and "starting a local Ray" not in proc.stderr
