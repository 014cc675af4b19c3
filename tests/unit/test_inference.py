"""dad_ray.inference: the one actor plan of evaluation and prediction, and the floors of inference and metrics."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

import dad_ray
from dad_ray.inference import ActorPlan, plan_actors, plan_for_cluster

PACKAGE = Path(dad_ray.__file__).parent


@pytest.mark.parametrize(
    "cluster, host_cpus, actors, expected",
    [
        ({"CPU": 4.0}, 2, 0, ActorPlan(count=2, num_cpus=1, threads=1)),  # local Ray on 2 cores: 4 logical CPUs
        ({"CPU": 8.0}, 16, 0, ActorPlan(count=7, num_cpus=1, threads=2)),  # one CPU left for the read
        ({"CPU": 1.0}, 2, 0, ActorPlan(count=1, num_cpus=1, threads=2)),  # never fewer than one actor
        ({"CPU": 4.0, "GPU": 0.0}, 6, 3, ActorPlan(count=3, num_cpus=1, threads=2)),  # actors override
    ],
)
def test_evaluation_on_cpu_fills_the_cluster_but_one_cpu(cluster, host_cpus, actors, expected):
    plan = plan_actors(cluster, host_cpus, use_gpu=False, actors=actors, fill_cpus=True)
    assert plan == expected
    assert plan.device == "cpu" and plan.resources == {"num_cpus": 1}


def test_gpu_actors_one_per_cluster_gpu_with_one_cpu_each():
    for use_gpu, fill_cpus in [(True, True), (None, False)]:  # evaluation --use-gpu; prediction with device auto
        plan = plan_actors({"CPU": 16.0, "GPU": 2.0}, 16, use_gpu=use_gpu, fill_cpus=fill_cpus)
        assert plan == ActorPlan(count=2, num_cpus=1, num_gpus=1)
        assert plan.device == "cuda" and plan.resources == {"num_gpus": 1, "num_cpus": 1}
    assert plan_actors({"CPU": 16.0, "GPU": 2.0}, 16, use_gpu=True, actors=1).count == 1
    with pytest.raises(RuntimeError, match="no GPU"):
        plan_actors({"CPU": 16.0}, 16, use_gpu=True, fill_cpus=True)


def test_prediction_on_cpu_is_one_actor_with_cpus_per_actor():
    plan = plan_actors({"CPU": 8.0}, 8, use_gpu=None, cpus_per_actor=2.5)  # device auto, no GPU in the cluster
    assert plan == ActorPlan(count=1, num_cpus=2.5) and plan.resources == {"num_cpus": 2.5}
    assert plan.threads == 0  # torch's own thread count
    assert plan_actors({"CPU": 8.0, "GPU": 1.0}, 8, use_gpu=False).device == "cpu"  # --device cpu on a GPU cluster
    assert plan_actors({"CPU": 8.0}, 8, use_gpu=None, actors=3).count == 3
    with pytest.raises(ValueError, match="actors must be >= 0"):
        plan_actors({"CPU": 8.0}, 8, use_gpu=None, actors=-1)


def _evaluation_before(cluster, host_cpus, use_gpu, actors):
    """The plan of evaluation before the two plans became one (metrics/evaluate.py ``_actor_plan``)."""
    if use_gpu:
        return (actors or int(cluster.get("GPU", 0))), {"num_gpus": 1, "num_cpus": 1}, "cuda"
    n = actors or max(1, min(int(cluster.get("CPU", 1)) - 1, host_cpus))
    return n, {"num_cpus": 1}, "cpu", max(1, host_cpus // n)


def _prediction_before(cluster, use_gpu, actors, cpus_per_actor):
    """The plan of prediction before (models/predict.py ``_actor_resources``; ``use_gpu`` None = device auto)."""
    gpus = int(cluster.get("GPU", 0))
    use_gpu = gpus > 0 if use_gpu is None else use_gpu
    count = actors or (max(1, gpus) if use_gpu else 1)
    return count, {"num_gpus": 1} if use_gpu else {"num_cpus": cpus_per_actor}


def test_same_numbers_as_the_two_plans_it_replaced():
    for cpus, gpus, host_cpus, actors in itertools.product(range(1, 10), range(3), (1, 2, 3, 16), range(3)):
        cluster = {"CPU": float(cpus), "GPU": float(gpus)}
        for use_gpu in (False, True) if gpus else (False,):
            plan = plan_actors(cluster, host_cpus, use_gpu=use_gpu, actors=actors, fill_cpus=True)
            got = (plan.count, plan.resources, plan.device) + (() if use_gpu else (plan.threads,))
            assert got == _evaluation_before(cluster, host_cpus, use_gpu, actors)
        for use_gpu, cpus_per_actor in itertools.product((None, False) + ((True,) if gpus else ()), (1.0, 2.0)):
            plan = plan_actors(cluster, host_cpus, use_gpu=use_gpu, actors=actors, cpus_per_actor=cpus_per_actor)
            count, resources = _prediction_before(cluster, use_gpu, actors, cpus_per_actor)
            # a GPU map actor without num_cpus reserves 1 CPU in Ray Data (_canonicalize_ray_remote_args): the plan
            # now states it
            assert (plan.count, plan.resources) == (count, {**resources, "num_cpus": 1} if plan.num_gpus else resources)


def test_plan_for_cluster_reads_the_connected_cluster(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 6.0, "memory": 1e9})
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert plan_for_cluster(use_gpu=False, fill_cpus=True) == ActorPlan(count=4, num_cpus=1, threads=1)


def _imports(path: Path) -> set[str]:
    """Every module a file imports by absolute name, at its top or inside a function (dad_ray has no relative ones)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def _imported_by(subpackage: str) -> dict[str, set[str]]:
    return {str(p.relative_to(PACKAGE)): _imports(p) for p in sorted((PACKAGE / subpackage).rglob("*.py"))}


def test_metrics_are_pure_tensor_functions():
    for path, modules in _imported_by("metrics").items():
        bad = {m for m in modules if m.split(".")[0] == "ray" or m.startswith(("dad_ray.train", "dad_ray.inference"))}
        assert not bad, f"{path} imports {sorted(bad)}: metrics stay below Ray, inference and train"


def test_inference_stays_below_train_and_tune():
    allowed = ("config", "data", "models", "metrics", "runtime", "viz", "inference")
    for path, modules in _imported_by("inference").items():
        ours = {m for m in modules if m.startswith("dad_ray.")}
        bad = {m for m in ours if m.split(".")[1] not in allowed}
        assert not bad, f"{path} imports {sorted(bad)}: dad_ray.inference may import {', '.join(allowed)}"
    assert not [line for line in (PACKAGE / "inference").rglob("*.py") if "ray.init(" in line.read_text()]


def test_evaluation_takes_hub_files_and_transformers_directories(tmp_path, monkeypatch):
    """``--checkpoint hf://…`` and a transformers directory pass the evaluation's input check (no pyarrow URI
    handling for them) and reach the actors as they are; an uncached Hub file is named before Ray starts."""
    from dad_ray.inference.evaluate import ModelToEvaluate, _check_inputs
    from dad_ray.models import create_model, save_weights
    from dad_ray.models.hub import HubFileNotCachedError

    def models(**weights):
        return {label: ModelToEvaluate("dav2_micro", w, 56, "disparity") for label, w in weights.items()}

    snapshot = tmp_path / "hub" / "models--org--student" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / "hub" / "models--org--student" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--student" / "refs" / "main").write_text("a" * 40)
    save_weights(create_model("dav2_micro"), snapshot / "model.safetensors")
    save_weights(create_model("dav2_micro"), tmp_path / "hf_dir" / "model.safetensors")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    hub = "hf://org/student/model.safetensors"
    _check_inputs(models(a=hub, b=str(tmp_path / "hf_dir")), "nyu", 2)
    with pytest.raises(HubFileNotCachedError, match="repo 'org/student'"):
        _check_inputs(models(a="hf://org/student/other.safetensors"), "nyu", 2)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        _check_inputs(models(a=str(tmp_path / "missing.safetensors")), "nyu", 2)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        _check_inputs(models(a=(tmp_path / "missing.safetensors").as_uri()), "nyu", 2)  # file:// URI
    with pytest.raises(ValueError, match="multiple of 14"):
        _check_inputs({"a": ModelToEvaluate("dav2_micro", hub, 50, "disparity")}, "nyu", 2)
