"""`ray job submit --working-dir .` against a local `ray start --head` (127.0.0.1, token auth, private temp dir and
ports): what only a submitted job shows. Status, exit code and logs come back through the job API and the CLI; the job
runs the uploaded copy of the repo (without .venv/, runs/, data/) with the interpreter of the head's environment;
``dad_ray.runtime`` joins the head's cluster instead of starting its own; the jobs' CLIs get their arguments intact
and write their outputs; a wrong token is refused."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from ray_local import ray_head

from dad_ray.config import build_config, config_to_yaml

REPO = Path(__file__).resolve().parents[2]
EXCLUDED = (".venv", "runs", "data", ".git")  # must never be uploaded with --working-dir .
JOB_TIMEOUT_S = 600  # a hung job fails the test instead of hanging CI


@pytest.fixture(scope="module")
def head():
    with ray_head(num_cpus=4) as h:
        yield h


def submit(head, entrypoint: list[str], *extra: str, env: dict | None = None):
    """`ray job submit` from the repository root (waits for the job, tails its logs); returns (id, completed)."""
    job_id = f"dadray_{uuid.uuid4().hex[:10]}"
    args = ["job", "submit", "--address", head.dashboard_url, "--submission-id", job_id, "--working-dir", "."]
    result = head.cli(*args, *extra, "--", *entrypoint, timeout=JOB_TIMEOUT_S, env=env, cwd=REPO)
    return job_id, result


def status_of(head, job_id: str) -> tuple[str, int | None]:
    """(status, driver exit code) from the job API; the CLI's `ray job status` must agree on the status."""
    from ray.job_submission import JobSubmissionClient

    info = JobSubmissionClient(head.dashboard_url, headers=head.auth_headers).get_job_info(job_id)
    status = str(info.status.value if hasattr(info.status, "value") else info.status)
    result = head.cli("job", "status", "--address", head.dashboard_url, job_id, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"Job '{job_id}' {status.lower()}" in result.stdout + result.stderr
    return status, info.driver_exit_code


def logs_of(head, job_id: str) -> str:
    result = head.cli("job", "logs", "--address", head.dashboard_url, job_id, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def probe_report(text: str, tag: str) -> dict:
    """The JSON a probe job printed after ``tag`` (exactly one such line in ``text``)."""
    lines = [line for line in text.splitlines() if line.startswith(tag + " ")]
    assert len(lines) == 1, text[-4000:]
    return json.loads(lines[0][len(tag) + 1 :])


PROBE = """
import json, os, sys
import dad_ray
missing = [p for p in ("dad_ray", "jobs/distill.py", "pyproject.toml") if not os.path.exists(p)]
leaked = [p for p in sys.argv[1:] if os.path.exists(p)]
print("PROBE " + json.dumps({"cwd": os.getcwd(), "python": sys.executable, "prefix": sys.prefix,
                             "dad_ray": dad_ray.__file__, "missing": missing, "leaked": leaked}))
sys.exit(1 if missing or leaked else 0)
"""


def test_job_succeeds_uploads_the_repo_without_local_state_and_logs_come_back(head):
    present = [p for p in EXCLUDED if (REPO / p).exists()]
    assert ".venv" in present or ".git" in present  # the check below is not vacuous
    job_id, result = submit(head, ["python", "-c", PROBE, *present])
    assert result.returncode == 0, result.stdout + result.stderr
    tailed = probe_report(result.stdout, "PROBE")  # `ray job submit` tails the job's logs
    assert status_of(head, job_id) == ("SUCCEEDED", 0)
    probe = probe_report(logs_of(head, job_id), "PROBE")  # ... and the job API keeps them
    assert probe == tailed
    assert probe["leaked"] == [] and probe["missing"] == []
    # it ran with the interpreter of the head's environment, wherever that environment lives
    assert probe["prefix"] == head.prefix
    assert os.path.samefile(probe["python"], head.python)
    # in an unpacked copy of the repo, whose package it imported (not the checkout's, not an installed one)
    cwd = os.path.realpath(probe["cwd"])
    assert cwd != str(REPO.resolve())
    assert os.path.realpath(probe["dad_ray"]) == os.path.join(cwd, "dad_ray", "__init__.py")


def test_failing_job_reports_failed_and_a_nonzero_exit(head):
    job_id, result = submit(head, ["python", "-c", "import sys; print('EXITING 3'); sys.exit(3)"])
    assert result.returncode != 0
    assert status_of(head, job_id) == ("FAILED", 3)
    assert "EXITING 3" in logs_of(head, job_id)


def test_wrong_token_is_refused(head):
    env = {**head.env, "RAY_AUTH_TOKEN": "0" * 64}
    result = head.cli("job", "list", "--address", head.dashboard_url, env=env, timeout=120)
    assert result.returncode != 0
    assert "auth" in (result.stdout + result.stderr).lower()


JOIN = """
import json, ray
from dad_ray.runtime import init_ray
started = init_ray()
ctx = ray.get_runtime_context()
print("JOINED " + json.dumps({"started": started, "gcs": ctx.gcs_address, "job": ctx.get_job_id(),
                              "cpus": ray.cluster_resources().get("CPU")}))
"""


def test_dad_ray_runtime_in_a_job_joins_the_heads_cluster(head):
    """Inside a job, the one place that starts or joins Ray joins the head (through the job's RAY_ADDRESS) instead
    of starting a private local Ray sized for a small machine."""
    job_id, result = submit(head, ["python", "-c", JOIN])
    assert result.returncode == 0, result.stdout + result.stderr
    assert status_of(head, job_id) == ("SUCCEEDED", 0)
    joined = probe_report(logs_of(head, job_id), "JOINED")
    assert joined["started"] is True  # this call connected (so the job's driver may shut it down)
    assert joined["gcs"] == head.gcs_address
    assert joined["cpus"] == 4.0  # the head's --num-cpus, not dad_ray.runtime's local sizing
    from ray.job_submission import JobSubmissionClient

    info = JobSubmissionClient(head.dashboard_url, headers=head.auth_headers).get_job_info(job_id)
    assert joined["job"] == info.job_id  # the driver that joined is the submitted job's


def test_distill_job_reads_the_uploaded_presets_and_its_arguments(head, tmp_path):
    """`jobs/distill.py --print-config` as a job: the preset comes from the uploaded copy and every `--set`
    arrives through `ray job submit --` intact; the job prints exactly the config the same arguments give here."""
    overrides = {
        "data.root": str(tmp_path / "data"),
        "model.teachers.0.weights": str(tmp_path / "teacher.safetensors"),
        "train.name": "smoke_job",
        "optim.max_steps": 3,
    }
    entry = ["python", "jobs/distill.py", "--preset", "smoke", "--print-config"]
    for key, value in overrides.items():
        entry += ["--set", f"{key}={value}"]
    job_id, result = submit(head, entry)
    assert result.returncode == 0, result.stdout + result.stderr
    assert status_of(head, job_id) == ("SUCCEEDED", 0)
    expected = config_to_yaml(build_config("smoke", overrides=overrides))
    assert "max_steps: 3" in expected and "smoke_job" in expected  # the overrides show in what is compared
    assert expected in logs_of(head, job_id)


def test_prepare_data_as_a_job_writes_shards(head, tmp_path):
    """The docs' first cluster step (shards from a source, here synthetic scenes) as a job; output to a local path
    (on a cluster: s3://...)."""
    out = tmp_path / "shards"
    entry = [
        "python", "jobs/prepare_data.py", "--source", "synthetic:12", "--out", str(out), "--split", "train",
        "--height", "64", "--width", "80", "--num-cpus", "0.5",
    ]  # fmt: skip
    job_id, result = submit(head, entry)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert status_of(head, job_id) == ("SUCCEEDED", 0)
    logs = logs_of(head, job_id)
    assert f"joining the Ray cluster at {head.gcs_address}" in logs  # its Ray Data ran on the head, not a local Ray
    assert "starting a local Ray" not in logs
    shards = sorted((out / "train").glob("*.parquet"))
    assert shards
    manifest = json.loads((out / "train" / "manifest.json").read_text())  # what jobs/distill.py checks for data.root
    assert manifest["num_samples"] == 12 and manifest["split"] == "train" and manifest["skipped"] == []
    assert sorted(shard["file"] for shard in manifest["shards"]) == [p.name for p in shards]
