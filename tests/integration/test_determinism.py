"""The same config on the same machine gives the same run, bit for bit — whatever the load and the thread knobs.

The smoke preset is run twice through the real CLI, each run with its own local Ray: once as a user would, once with
``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` set to other values in the environment (Ray hands them to its workers) and
a busy process competing for the cores (Ray Data's tasks then finish in another order and at other times). Every
loss of every step, every weight of the student and every number of the final table must agree exactly. What
cannot be held equal across machines (CPU vector ISA, torch/MKL builds) is stated in the README ("Reproducibility").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dad_ray.train.monitor import read_journal

REPO = Path(__file__).resolve().parents[2]


def _distill(workdir: Path, name: str, assets, env: dict[str, str]) -> Path:
    cmd = [sys.executable, str(REPO / "jobs" / "distill.py"), "--preset", "smoke"]
    cmd += ["--output", str(workdir / "runs"), "--name", name]
    for key, value in assets.overrides().items():
        cmd += ["--set", f"{key}={value}"]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=900, cwd=workdir, env={**os.environ, "RAY_ADDRESS": "", **env}
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir / "runs" / name


def _busy_process() -> subprocess.Popen:
    """A process that keeps one core busy until this test stops it."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.time() + 900\nwhile time.time() < end: pass"]
    )


@pytest.mark.slow
def test_smoke_twice_gives_the_same_run(tmp_path, smoke_assets):
    first = _distill(tmp_path, "first", smoke_assets, env={})
    busy = _busy_process()
    try:
        second = _distill(tmp_path, "second", smoke_assets, env={"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"})
    finally:
        busy.kill()
        busy.wait()

    def losses(run: Path) -> list[tuple[int, int, float]]:
        return [(e["step"], e["epoch"], e["loss"]) for e in read_journal(run / "progress.jsonl") if "step" in e]

    assert len(losses(first)) == 12
    assert losses(second) == losses(first)  # every step's loss, exactly

    # the weights, tensor by tensor (the files' bytes may differ: safetensors writes its metadata in hash order)
    for name in ("untrained_student.safetensors", "student.safetensors"):
        a, b = load_file(first / name), load_file(second / name)
        assert a.keys() == b.keys(), name
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert different == [], f"{name}: {len(different)} tensors differ, e.g. {different[:3]}"

    def table(run: Path) -> dict:
        metrics = json.loads((run / "final_metrics.json").read_text())
        return {row: {k: v for k, v in m.items() if k != "weights"} for row, m in metrics.items() if row != "_info"}

    assert table(second) == table(first)
    assert table(first)["student"]["n_images"] == 8
