"""A Tune experiment in a bucket whose endpoint is named only in the URI's query (Ray's storage-test style:
``s3://bucket/tune?endpoint_override=HOST:PORT&scheme=http``), on an S3-compatible server on loopback (moto's,
tests/s3_bed.py): trials write there, the analysis reads it back, ``--resume`` continues it. The jobs run as CLIs,
each with its own local Ray; the secret key is set in their environment only and must not appear in their output or
in any object written.

The distillation with its data and run in the bucket (through the standard AWS variables) is part of the
multi-node end-to-end test of the README's cluster commands: tests/integration/test_cluster_e2e.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.s3_bed import moto_s3

REPO = Path(__file__).resolve().parents[2]
JOB_TIMEOUT_S = 900
# two short trials on the smoke preset (a grid, no scheduler): the storage path, not the search, is under test
SPACE = """
base_preset: smoke
overrides: {optim.max_steps: 6, train.val_every: 3, train.checkpoint_every: 6, train.image_every: 0}
params:
  optim.lr: {grid: [0.001, 0.003]}
scheduler: null
metric: val_abs_rel
mode: min
"""


@pytest.fixture(scope="module")
def s3():
    with moto_s3() as bed:
        yield bed


def run_job(script: str, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """``python jobs/<script> <args>`` with its own local Ray and ``env`` added to the environment."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    environment.update({**env, "RAY_ADDRESS": ""})
    try:
        proc = subprocess.run(
            [sys.executable, str(REPO / "jobs" / script), *args],
            capture_output=True,
            text=True,
            timeout=JOB_TIMEOUT_S,
            cwd=cwd,
            env=environment,
        )
    except subprocess.TimeoutExpired as err:  # say where it stood, not only that it took too long
        out = (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(errors="replace")
        pytest.fail(f"{script}: still running after {JOB_TIMEOUT_S} s; its output ended with:\n{out[-6000:]}")
    assert proc.returncode == 0, f"{script}: {proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def assert_secret_absent(s3, output: str, keys: list[str]) -> None:
    """The secret key is neither in what the job printed nor in any object it wrote."""
    assert s3.secret not in output
    leaked = [key for key in keys if s3.secret.encode() in s3.read(key)]
    assert leaked == []


def test_tune_experiment_in_the_bucket_via_the_uris_query(s3, smoke_assets, tmp_path):
    """jobs/tune.py --output s3://…?endpoint_override=…: trials (each a Ray Train run) write into the bucket, the
    analysis reads it and writes best_config.yaml and the plots there, and --resume s3://… continues it (here:
    nothing is left to run, every trial is kept)."""
    space = tmp_path / "s3_tune.yaml"
    space.write_text(SPACE)
    output = s3.uri("tune", query=True)
    common = ("--set", f"data.root={smoke_assets.data}", "--set", f"model.teachers.0.weights={smoke_assets.teacher}")
    env = s3.credentials  # no AWS_ENDPOINT_URL: only the query names the endpoint
    proc = run_job("tune.py", "--space", str(space), "--output", output, *common, env=env, cwd=tmp_path)
    assert "2 trials, 0 failed" in proc.stdout
    exp = "tune/s3_tune/"
    names = {k[len(exp) :] for k in s3.keys("tune/s3_tune")}
    assert {"space.yaml", "base_config.yaml", "tuner.pkl"} <= names
    trial_results = [n for n in names if n.endswith("/result.json") and not n.startswith("trials/")]
    assert len(trial_results) == 2
    trial_configs = [n for n in names if n.startswith("trials/") and n.endswith("/config.yaml") and n.count("/") == 2]
    assert len(trial_configs) == 2
    hparams = [n for n in names if n.startswith("trials/") and "/tensorboard/" in n and n.endswith(".hparams")]
    assert len(hparams) == 2

    experiment = f"s3://{s3.bucket}/tune/s3_tune{s3.query}"
    analyzed = run_job("analyze.py", experiment, env=env, cwd=tmp_path)
    assert "best config: s3://" in analyzed.stdout
    after = set(s3.keys("tune/s3_tune"))
    assert f"{exp}best_config.yaml" in after and f"{exp}plots/validation_curves.png" in after

    resumed = run_job("tune.py", "--resume", experiment, env=env, cwd=tmp_path)
    assert "2 trials, 0 failed" in resumed.stdout
    assert not list(tmp_path.glob("s3:*")), "a URI was turned into a local path"
    assert_secret_absent(s3, proc.stdout + proc.stderr + analyzed.stdout + analyzed.stderr, sorted(after))
