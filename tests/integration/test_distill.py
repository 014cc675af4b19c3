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
    from dad_ray.runtime import init_ray

    init_ray(4)  # what jobs/distill.py starts: 4 logical CPUs, dashboard on 127.0.0.1 (releases finished runs' PGs)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("distill")


def smoke_config(workdir: Path, name: str, assets, **overrides):
    return assets.config(workdir / "runs", name, **overrides)


def steps_of(journal: list[dict]) -> list[int]:
    return [e["step"] for e in journal if "step" in e]


def test_smoke_cli_one_worker_end_to_end(workdir, smoke_assets):
    """The real CLI in a subprocess, as a user runs it (it starts its own local Ray): every output of a run."""
    run = workdir / "runs" / "one_worker"
    cmd = [sys.executable, str(REPO / "jobs" / "distill.py"), "--preset", "smoke", "--output", str(workdir / "runs")]
    cmd += ["--name", "one_worker"]
    for key, value in smoke_assets.overrides().items():
        cmd += ["--set", f"{key}={value}"]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, cwd=workdir, env={**os.environ, "RAY_ADDRESS": ""}
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "untrained_student" in proc.stdout and "abs_rel" in proc.stdout and f"outputs: {run}" in proc.stdout
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
        assert saved[row]["n_images"] == 8
        assert f"{saved[row]['abs_rel']:.4f}" in proc.stdout  # the printed table is the saved one
    journal = read_journal(run / "progress.jsonl")
    assert steps_of(journal) == list(range(1, 13))
    losses = [e["loss"] for e in journal if "step" in e]
    assert sum(losses[-4:]) < sum(losses[:4]), losses  # the distillation loss goes down
    # the resolved config alone reproduces the run's configuration
    expected = smoke_config(workdir, "one_worker", smoke_assets)
    assert build_config(config_file=run / "config.yaml") == expected


def test_two_workers_ddp_with_the_run_directory_at_a_uri(ray_local, workdir, smoke_assets):
    """2 DDP workers, outputs given as a pyarrow URI (what s3://… takes on a cluster; file:// here): Ray Train's
    checkpoints, the workers' TensorBoard and journal, and the driver's files and final evaluation all go through it.
    Two teachers ("select", 0.5 / 0.5): every rank uses the same teacher at every optimizer step (issue 13)."""
    from dataclasses import replace

    from dad_ray.train import run_experiment

    uri = f"file://{workdir / 'uri_runs'}"
    overrides = {"train.num_workers": 2, "train.cpus_per_worker": 1.0, "train.output": uri}
    cfg = smoke_config(workdir, "two_workers", smoke_assets, **overrides)
    teacher = replace(cfg.model.teachers[0], probability=0.5)
    cfg = replace(cfg, model=replace(cfg.model, teachers=(teacher, teacher)))
    metrics = run_experiment(cfg)
    run = workdir / "uri_runs" / "two_workers"
    for name in ("config.yaml", "final_metrics.json", "student.safetensors", "untrained_student.safetensors"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint_step*"))[-1] == "checkpoint_step0000012"
    assert json.loads((run / "final_metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert metrics["_info"]["steps"] == 12
    journal = read_journal(run / "progress.jsonl")
    assert len(journal[0]["node_ids"]) == 2  # both ranks started
    losses = [e["loss"] for e in journal if "step" in e]
    assert steps_of(journal) == list(range(1, 13))
    assert sum(losses[-4:]) < sum(losses[:4]), losses
    per_step = [e["teachers"] for e in journal if "step" in e]  # [rank 0's teacher, rank 1's teacher] per step
    assert all(len(t) == 2 and t[0] == t[1] for t in per_step), per_step
    assert {t[0] for t in per_step} == {0, 1}  # both teachers were drawn


def test_killed_worker_resumes_at_the_same_step_then_a_new_submission_continues(ray_local, workdir, smoke_assets):
    from dad_ray.train import fit, prepare_experiment

    cfg = smoke_config(workdir, "killed", smoke_assets, **{"train.fail_at_step": 8, "train.max_failures": 2})
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
    longer = smoke_config(workdir, "killed", smoke_assets, **{"optim.max_steps": 18})
    result = fit(longer)
    journal = read_journal(run / "progress.jsonl")
    assert [e["attempt_start"] for e in journal if "attempt_start" in e] == [0, 6, 12]
    assert steps_of(journal)[-6:] == [13, 14, 15, 16, 17, 18]
    assert result.metrics["step"] == 18
