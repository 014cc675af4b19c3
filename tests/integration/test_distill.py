"""jobs/distill.py end to end on a real local Ray: 1 and 2 workers, a worker killed mid-run, a run continued.

One module-scoped Ray (4 logical CPUs on 2 cores, as RAY_NOTES advises) and one synthetic data set + bootstrapped
teacher shared by every test; each test has its own run name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dad_ray.config import build_config
from dad_ray.train.monitor import read_journal

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_local():
    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "2")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("distill")


def smoke_config(workdir: Path, name: str, **overrides):
    base = {
        "data.root": str(workdir / "data"),
        "model.teachers.0.weights": str(workdir / "cache" / "teacher.safetensors"),
        "train.output": str(workdir / "runs"),
        "train.name": name,
    }
    base.update(overrides)
    return build_config("smoke", overrides=base)


def steps_of(journal: list[dict]) -> list[int]:
    return [e["step"] for e in journal if "step" in e]


def test_smoke_one_worker_end_to_end(ray_local, workdir):
    from dad_ray.train import run_experiment

    cfg = smoke_config(workdir, "one_worker")
    metrics = run_experiment(cfg)
    run = workdir / "runs" / "one_worker"
    for name in ("config.yaml", "final_metrics.json", "student.safetensors", "progress.jsonl"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint_step*")) == [
        "checkpoint_step0000006",
        "checkpoint_step0000012",
    ]
    saved = json.loads((run / "final_metrics.json").read_text())
    assert set(saved) >= {"teacher", "student", "untrained_student"}
    for row in ("teacher", "student", "untrained_student"):
        assert 0 < saved[row]["abs_rel"] < 10 and 0 <= saved[row]["d1"] <= 1
    assert saved == json.loads(json.dumps(metrics))
    journal = read_journal(run / "progress.jsonl")
    assert steps_of(journal) == list(range(1, 13))
    losses = [e["loss"] for e in journal if "step" in e]
    assert sum(losses[-4:]) < sum(losses[:4]), losses  # the distillation loss goes down
    # the resolved config alone reproduces the run's configuration
    assert build_config(config_file=run / "config.yaml") == cfg


def test_two_workers_ddp(ray_local, workdir):
    from dad_ray.train import fit

    cfg = smoke_config(workdir, "two_workers", **{"train.num_workers": 2, "train.cpus_per_worker": 1.0})
    from dad_ray.train import prepare_experiment

    prepare_experiment(cfg)
    result = fit(cfg)
    assert result.metrics["step"] == 12
    assert len(result.metrics["node_ids"]) == 2  # both ranks took part in the validation reduction
    journal = read_journal(workdir / "runs" / "two_workers" / "progress.jsonl")
    losses = [e["loss"] for e in journal if "step" in e]
    assert steps_of(journal) == list(range(1, 13))
    assert sum(losses[-4:]) < sum(losses[:4]), losses


def test_killed_worker_resumes_at_the_same_step_then_a_new_submission_continues(ray_local, workdir):
    from dad_ray.train import fit, prepare_experiment

    cfg = smoke_config(workdir, "killed", **{"train.fail_at_step": 8, "train.max_failures": 2})
    prepare_experiment(cfg)
    result = fit(cfg)
    run = workdir / "runs" / "killed"
    assert (run / ".fail_injected_step_8").is_file()  # the worker really died at step 8
    journal = read_journal(run / "progress.jsonl")
    starts = [e["attempt_start"] for e in journal if "attempt_start" in e]
    assert starts == [0, 6]  # restarted by Ray from the step-6 checkpoint, not from step 0
    steps = steps_of(journal)
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8, 7, 8, 9, 10, 11, 12]  # steps after the checkpoint are redone once
    assert result.metrics["step"] == 12

    # a new submission with the same name and output continues the run instead of starting over
    longer = smoke_config(workdir, "killed", **{"optim.max_steps": 18})
    result = fit(longer)
    journal = read_journal(run / "progress.jsonl")
    assert [e["attempt_start"] for e in journal if "attempt_start" in e] == [0, 6, 12]
    assert steps_of(journal)[-6:] == [13, 14, 15, 16, 17, 18]
    assert result.metrics["step"] == 18


def test_distill_job_cli_smoke(workdir):
    """The real CLI in a subprocess (its own local Ray), as a user runs it; reuses the cached teacher and data."""
    out = workdir / "cli_runs"
    cmd = [
        sys.executable,
        str(REPO / "jobs" / "distill.py"),
        "--preset",
        "smoke",
        "--output",
        str(out),
        "--set",
        f"data.root={workdir / 'data'}",
        "--set",
        f"model.teachers.0.weights={workdir / 'cache' / 'teacher.safetensors'}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "untrained_student" in proc.stdout and "abs_rel" in proc.stdout
    assert (out / "smoke" / "final_metrics.json").is_file()
