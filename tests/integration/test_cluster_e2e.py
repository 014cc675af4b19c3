"""The README's cluster commands, run as written, on a cluster that shares nothing but a bucket (issue 14).

A head (0 CPUs, the dashboard and job API on 127.0.0.1, token auth) and two worker nodes, each with its own Ray temp
dir, so each unpacks its own copy of the job's working directory; an S3 endpoint on loopback (moto's server) is the
only storage they share, reached through the standard AWS variables in the nodes' environment. The commands are the
README's smoke block (between the ``cluster-smoke`` markers), each run by ``bash`` with ``RAY_ADDRESS`` at the job
API and ``$BUCKET`` set, exactly as a user pastes them: prepare_data → distill → tune → tune --resume → analyze →
evaluate → predict. The distillation runs one worker on each node; once its second checkpoint is in the bucket the
node of one of them is killed, and the run must resume from the newest committed checkpoint, in the bucket, at the
step after it, and finish on the node left. Then the test checks what landed in the bucket, and that the secret key
(set only in the nodes' environment) is in no job output and no object written.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from ray_local import job_cluster

from dad_ray.runtime import RAY_ENV
from tests.s3_bed import moto_s3

REPO = Path(__file__).resolve().parents[2]
JOB_TIMEOUT_S = 900  # per command: a hung job fails the test instead of hanging CI
SCRIPTS = [  # the README's main cluster block runs these, in this order; the smoke block must mirror it
    "prepare_data.py",
    "distill.py",
    "tune.py",
    "tune.py --resume",
    "analyze.py",
    "evaluate.py",
    "predict.py",
]
STEPS, EVERY = 24, 6  # the smoke block's distillation: optim.max_steps, and the smoke preset's checkpoint_every


def readme_blocks() -> tuple[list[str], list[str]]:
    """(the main cluster block's `ray job submit` commands, the smoke block's), continuation lines joined."""
    text = (REPO / "README.md").read_text()
    smoke = re.search(r"<!-- cluster-smoke:begin -->\s*```bash\n(.*?)```\s*<!-- cluster-smoke:end -->", text, re.S)
    assert smoke, "README.md has no cluster-smoke block"
    main = re.search(r"## On a Ray cluster.*?```bash\n(.*?)```", text, re.S)

    def commands(block: str) -> list[str]:
        joined = re.sub(r"\\\n\s*", "", block)
        return [line.strip() for line in joined.splitlines() if line.startswith("ray job submit")]

    return commands(main.group(1)), commands(smoke.group(1))


def scripts_of(commands: list[str]) -> list[str]:
    """The scripts the commands run, in order, a script repeated on consecutive lines counted once (the main block
    prepares NYU's train and test splits with two prepare_data lines; the smoke block needs one)."""
    out: list[str] = []
    for command in commands:
        script = script_of(command)
        if not out or out[-1] != script:
            out.append(script)
    return out


def script_of(command: str) -> str:
    """``ray job submit --working-dir . -- python jobs/X.py …`` → ``X.py`` (``tune.py --resume`` for a resume)."""
    match = re.search(r" -- python jobs/(\S+)", command)
    assert match and command.startswith("ray job submit --working-dir . -- "), command
    return match.group(1) + (" --resume" if " --resume " in command else "")


def run(cluster, bucket: str, command: str) -> subprocess.Popen:
    """Start one README line as a user's shell would (``$BUCKET`` expanded by bash), from the repository root."""
    return subprocess.Popen(
        ["bash", "-c", command],
        cwd=REPO,
        env={**cluster.env, "BUCKET": bucket},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen, command: str) -> str:
    try:
        out, _ = proc.communicate(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"still running after {JOB_TIMEOUT_S} s: {command}\n{out[-6000:]}")
    assert proc.returncode == 0, f"{command}\n{out[-8000:]}"
    assert re.search(r"Job '\S+' succeeded", out), out[-3000:]
    return out


def journal(s3, key: str) -> list[dict]:
    return [json.loads(line) for line in s3.read(key).decode().splitlines() if line.strip()]


def test_readme_cluster_commands_on_three_nodes_sharing_only_a_bucket(tmp_path):
    main, smoke = readme_blocks()
    assert scripts_of(main) == SCRIPTS and [script_of(c) for c in smoke] == SCRIPTS
    nodes = [{"num_cpus": 4, "resources": {"node_a": 1}}, {"num_cpus": 4, "resources": {"node_b": 1}}]
    with moto_s3() as s3, job_cluster(nodes, env={**s3.env, **RAY_ENV}) as cluster:
        outputs = []
        prefix = "dad_ray"

        # prepare_data: shards and manifest in the bucket
        outputs.append(finish(run(cluster, s3.bucket, smoke[0]), smoke[0]))
        assert f"{prefix}/smoke_shards/train/manifest.json" in s3.keys(f"{prefix}/smoke_shards")

        # distill, spread over both nodes; kill the node of one worker once two checkpoints are in the bucket
        run_key = f"{prefix}/runs/smoke"
        proc = run(cluster, s3.bucket, smoke[1])
        deadline = time.monotonic() + JOB_TIMEOUT_S
        second = f"{run_key}/checkpoints/checkpoint_step{2 * EVERY:07d}/"
        while not any(k.startswith(second) for k in s3.keys(f"{run_key}/checkpoints")):
            assert proc.poll() is None, f"the distillation ended before its second checkpoint:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, "no second checkpoint in time"
            time.sleep(0.5)
        visible = sorted({int(m) for m in re.findall(r"checkpoint_step(\d+)/", "\n".join(s3.keys(run_key)))})
        cluster.kill_node(1)
        killed_at = time.monotonic()
        outputs.append(finish(proc, smoke[1]))
        after_kill_s = time.monotonic() - killed_at

        names = {k[len(run_key) + 1 :] for k in s3.keys(run_key)}
        assert {"config.yaml", "final_metrics.json", "progress.jsonl", "student.safetensors"} <= names
        assert any(n.startswith("tensorboard/events.out.tfevents") for n in names)
        assert any(n.startswith(f"checkpoints/checkpoint_step{STEPS:07d}/") for n in names)
        entries = journal(s3, f"{run_key}/progress.jsonl")
        starts = [(i, e) for i, e in enumerate(entries) if "attempt_start" in e]
        assert starts[0][1]["attempt_start"] == 0
        assert sorted(starts[0][1]["node_ids"]) == sorted(cluster.node_ids)  # one worker on each node
        assert len(starts) >= 2, f"no restart recorded after the node was killed (checkpoints seen: {visible})"
        last, resumed = starts[-1]
        resumed_from = resumed["attempt_start"]
        # from the newest checkpoint committed when the node died (the newest visible one may still have been
        # uploading, uncommitted): never from scratch, never from before the newest committed one
        assert resumed_from in visible[-2:] and resumed_from > 0, (resumed_from, visible)
        steps_after = [e["step"] for e in entries[last:] if "step" in e]
        assert steps_after[0] == resumed_from + 1 and steps_after[-1] == STEPS
        assert set(resumed["node_ids"]) == {cluster.node_ids[0]}  # both workers on the node left
        final = json.loads(s3.read(f"{run_key}/final_metrics.json"))
        assert {"teacher", "student", "untrained_student"} <= final.keys()  # evaluated after the resume too
        teacher = f"{prefix}/weights/teacher_smoke.safetensors"
        assert teacher in s3.keys(f"{prefix}/weights")  # bootstrapped, then uploaded beside the URI it was asked at

        # tune, resume (nothing left to run), analyze: every trial's results and the best config in the bucket
        for command in smoke[2:5]:
            outputs.append(finish(run(cluster, s3.bucket, command), command))
        assert "4 trials, 0 failed" in outputs[2] and "4 trials, 0 failed" in outputs[3]
        exp = f"{prefix}/tune/smoke"
        names = {k[len(exp) + 1 :] for k in s3.keys(exp)}
        assert {"space.yaml", "base_config.yaml", "best_config.yaml", "plots/validation_curves.png"} <= names
        assert len([n for n in names if n.endswith("/result.json") and not n.startswith("trials/")]) == 4
        assert (
            len([n for n in names if n.startswith("trials/") and n.count("/") == 2 and n.endswith("config.yaml")]) == 4
        )
        assert f"best config: s3://{s3.bucket}/{exp}/best_config.yaml" in outputs[4]

        # evaluate and predict, reading the student and the shards where they are
        for command in smoke[5:]:
            outputs.append(finish(run(cluster, s3.bucket, command), command))
        assert "| abs_rel |" in outputs[5] and re.search(r"^\| 0\.\d+ \|.*\| 8 \| 0 \|$", outputs[5], re.M), outputs[5][
            -3000:
        ]
        predictions = [k for k in s3.keys(f"{prefix}/predictions") if k.endswith(".npy")]
        assert len(predictions) == 8  # the smoke preset's test split

        everything = s3.keys()
        leaked = [k for k in everything if s3.secret.encode() in s3.read(k)]
        assert leaked == [] and not any(s3.secret in out for out in outputs)
        assert not list(REPO.glob("s3:*")), "a URI was turned into a local path"
        print(
            f"node killed {after_kill_s:.0f} s before the distillation ended; resumed at step {resumed_from} "
            f"(checkpoints visible then: {visible}); {len(everything)} objects in the bucket"
        )
