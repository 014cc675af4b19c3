"""dad_ray.runtime: the one place that starts Ray and touches its private APIs and environment knobs."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

import dad_ray
from dad_ray import runtime

REPO = Path(dad_ray.__file__).parent.parent


@pytest.mark.parametrize("name", sorted(runtime.PRIVATE_APIS))
def test_each_private_ray_api_imports(name):
    """A Ray release that moves one of them fails here, by name, rather than deep inside a job."""
    assert runtime.private_api(name) is not None


def test_a_moved_private_api_is_named(monkeypatch):
    monkeypatch.setitem(runtime.PRIVATE_APIS, "gone", ("ray.autoscaler._private.util", "no_such_function", "a test"))
    with pytest.raises(runtime.RayAPIError, match=r"private Ray API 'gone' \(ray\.autoscaler\._private\.util\."):
        runtime.private_api("gone")
    monkeypatch.setitem(runtime.PRIVATE_APIS, "gone", ("ray._no_such_module", "x", "a test"))
    with pytest.raises(runtime.RayAPIError, match="pins ray 2.60.x"):
        runtime.private_api("gone")


def test_data_execution_index_outside_a_dataset_is_zero():
    assert runtime.data_execution_index() == 0


def test_env_knobs_never_override_the_user(monkeypatch):
    (key, value), *_ = runtime.RAY_ENV.items()
    monkeypatch.setenv(key, "7")
    runtime.apply_env()
    assert os.environ[key] == "7"
    monkeypatch.delenv(key)
    runtime.apply_env()
    assert os.environ[key] == value


def test_local_num_cpus_declares_at_least_four():
    assert runtime.local_num_cpus() >= runtime.LOCAL_MIN_CPUS
    assert runtime.local_num_cpus(3) == 3


def _calls(path: Path) -> list[str]:
    """Every ``ray.init(...)``, ``_system_config`` keyword and ``RAY_…`` knob assignment in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "init" and getattr(func.value, "id", "") == "ray":
                found.append(f"{path.relative_to(REPO)}:{node.lineno} ray.init")
            found += [
                f"{path.relative_to(REPO)}:{node.lineno} _system_config"
                for k in node.keywords
                if k.arg == "_system_config"
            ]
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("RAY_DATA_"):
            found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value}")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found += [f"{path.relative_to(REPO)}:{node.lineno} import {n}" for n in names if "._private" in n]
    return found


def test_ray_is_started_and_tweaked_in_one_module_only():
    files = sorted((REPO / "dad_ray").rglob("*.py")) + sorted((REPO / "jobs").glob("*.py"))
    found = [hit for f in files if f.name != "runtime.py" for hit in _calls(f)]
    assert found == [], f"Ray started or tweaked outside dad_ray/runtime.py: {found}"
    assert _calls(REPO / "dad_ray" / "runtime.py"), "the check sees nothing in runtime.py: it is broken"
