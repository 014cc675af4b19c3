"""Shared by the integration modules: the ``slow`` marker on every one of their tests, and the smoke preset's
synthetic shards and its bootstrapped teacher, made once per test session (by ``prepare_experiment`` in a subprocess
with its own local Ray, exactly as ``jobs/distill.py`` does before training) and then only read by the runs of every
module, whatever cluster they start."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PREPARE = """
import sys
from dad_ray.config import build_config
from dad_ray.logging_utils import setup_logging
from dad_ray.train import prepare_experiment
setup_logging()
prepare_experiment(build_config("smoke", overrides={
    "data.root": sys.argv[1], "model.teachers.0.weights": sys.argv[2], "train.output": sys.argv[3],
}))
"""


INTEGRATION = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    """Every test in tests/integration starts a real Ray cluster (or a job on one): all are ``slow``, so that
    ``pytest -m "not slow"`` is the quick loop and plain ``pytest`` the full suite. (A conftest's collection hook
    sees the whole session's items: only those under this directory are marked.)"""
    for item in items:
        if INTEGRATION in item.path.resolve().parents:
            item.add_marker(pytest.mark.slow)


@dataclass(frozen=True)
class SmokeAssets:
    data: Path  # shard root with train/ and test/
    teacher: Path  # dav2_micro trained on ground truth by the bootstrap

    def overrides(self) -> dict[str, str]:
        return {"data.root": str(self.data), "model.teachers.0.weights": str(self.teacher)}

    def config(self, output: Path, name: str, **overrides):
        """The smoke preset on these assets, run ``name`` under ``output``, plus dotted ``overrides``."""
        from dad_ray.config import build_config

        base = {**self.overrides(), "train.output": str(output), "train.name": name}
        return build_config("smoke", overrides={**base, **overrides})


@pytest.fixture(scope="session")
def smoke_assets(tmp_path_factory) -> SmokeAssets:
    root = tmp_path_factory.mktemp("smoke_assets")
    assets = SmokeAssets(data=root / "data", teacher=root / "cache" / "teacher.safetensors")
    proc = subprocess.run(
        [sys.executable, "-c", PREPARE, str(assets.data), str(assets.teacher), str(root / "runs")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RAY_ADDRESS": ""},  # a local Ray, sized by dad_ray.runtime
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for split in ("train", "test"):
        assert (assets.data / split / "manifest.json").is_file(), split
    # the teacher came from the bootstrap: a supervised Ray Train run whose final checkpoint was copied out
    assert assets.teacher.is_file()
    assert list((assets.teacher.parent / "bootstrap_teacher" / "checkpoints").glob("checkpoint_step*"))
    return assets
