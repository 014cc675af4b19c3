"""Several Ray nodes on one machine, on 127.0.0.1 only: a head with 0 CPUs and two worker nodes told apart by custom
resources (node_a, node_b). Work must land on both worker nodes and never on the head."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from ray_local import LOOPBACK, multinode_cluster, node_of_resource

from dad_ray.runtime import RAY_ENV


@ray.remote(num_cpus=1)
def where() -> tuple[str, str]:
    ctx = ray.get_runtime_context()
    return ctx.get_node_id(), ray.util.get_node_ip_address()


@pytest.fixture(scope="module")
def two_nodes():
    # 4 logical CPUs per worker node: a Train worker, Ray Data's tasks and its listing step (RAY_NOTES)
    nodes = [{"num_cpus": 4, "resources": {"node_a": 1}}, {"num_cpus": 4, "resources": {"node_b": 1}}]
    with multinode_cluster(nodes, env=RAY_ENV) as c:
        yield c


def test_cluster_is_loopback_only_with_a_cpu_less_head(two_nodes):
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 3
    assert {n["NodeManagerAddress"] for n in nodes} == {LOOPBACK}
    head = [n for n in nodes if n["NodeID"] not in two_nodes.node_ids]
    assert len(head) == 1 and head[0]["Resources"].get("CPU", 0) == 0
    assert node_of_resource("node_a") == two_nodes.node_ids[0]
    assert node_of_resource("node_b") == two_nodes.node_ids[1]
    # the driver is attached to the head, so either worker node can be removed under it
    assert ray.get_runtime_context().get_node_id() == head[0]["NodeID"]


def test_strict_spread_tasks_land_on_both_worker_nodes(two_nodes):
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    ray.get(pg.ready(), timeout=60)
    try:
        refs = [
            where.options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)
            ).remote()
            for i in range(2)
        ]
        placed = ray.get(refs, timeout=60)
    finally:
        remove_placement_group(pg)
    assert {node for node, _ in placed} == set(two_nodes.node_ids)
    assert {ip for _, ip in placed} == {LOOPBACK}


def test_custom_resources_pin_tasks_to_a_node(two_nodes):
    a = ray.get(where.options(resources={"node_a": 1}).remote(), timeout=60)[0]
    b = ray.get(where.options(resources={"node_b": 1}).remote(), timeout=60)[0]
    assert (a, b) == tuple(two_nodes.node_ids)
    # no CPU on the head: one-CPU tasks all run on the two worker nodes
    assert {n for n, _ in ray.get([where.remote() for _ in range(8)], timeout=60)} <= set(two_nodes.node_ids)


# ----------------------------------------------------------------------------------------------------------------
# The smoke distillation on two nodes (the trainer: dad_ray.train)

TRAIN_TIMEOUT_S = 900  # a run that is still going after this fails the test (it must never hang CI)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("multinode")


def smoke_config(workdir: Path, name: str, assets, **overrides):
    two_workers = {"train.num_workers": 2, "train.cpus_per_worker": 1, "data.data_cpus": 0.25}
    return assets.config(workdir / "runs", name, **{**two_workers, **overrides})


def run_bounded(fn, timeout_s: float, what: str):
    """Run ``fn`` in a daemon thread; (result, exception). A run still going after ``timeout_s`` fails the test."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the test, which decides
            box["error"] = err

    thread = threading.Thread(target=target, name=what, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        pytest.fail(f"{what}: still running after {timeout_s:.0f} s (hung)")
    return box.get("result"), box.get("error")


def test_smoke_distillation_on_both_nodes_survives_losing_one(two_nodes, workdir, smoke_assets):
    """The smoke distillation with its 2 workers spread over nodes A and B (asserted from the ranks' node ids);
    node B is killed after the first checkpoint. Either the run finishes on node A from that checkpoint (SPREAD is
    soft, so both workers fit on A) or it fails with an error that says what happened — it never hangs."""
    from dad_ray.train.experiment import prepare_experiment
    from dad_ray.train.monitor import read_journal
    from dad_ray.train.trainer import CHECKPOINT_DIR, build_trainer, run_dir

    overrides = {
        "train.placement_strategy": "SPREAD",
        "optim.max_steps": 20,
        "train.val_every": 5,
        "train.checkpoint_every": 5,
        "train.max_failures": 2,
    }
    cfg = prepare_experiment(smoke_config(workdir, "node_loss", smoke_assets, **overrides))
    run = Path(run_dir(cfg))
    box: dict = {}

    def fit():
        box["result"] = build_trainer(cfg).fit()
        return box["result"]

    thread = threading.Thread(target=lambda: box.setdefault("outcome", run_bounded(fit, TRAIN_TIMEOUT_S, "fit")))
    thread.daemon = True
    thread.start()
    deadline = time.monotonic() + TRAIN_TIMEOUT_S

    def committed() -> bool:  # the journal says so once Ray Train registered the checkpoint
        journal = run / "progress.jsonl"
        return journal.is_file() and any("checkpoint" in e for e in read_journal(journal))

    while not committed():
        assert thread.is_alive(), f"the run ended before its first checkpoint: {box}"
        assert time.monotonic() < deadline, "no checkpoint written in time"
        time.sleep(0.5)
    first_attempt = read_journal(run / "progress.jsonl")[0]
    assert first_attempt["attempt_start"] == 0
    assert sorted(first_attempt["node_ids"]) == sorted(two_nodes.node_ids)  # one rank on each worker node
    node_b = two_nodes.workers[1]
    two_nodes.cluster.remove_node(node_b, allow_graceful=False)
    killed_at = max(e["step"] for e in read_journal(run / "progress.jsonl") if "step" in e)
    assert list((run / CHECKPOINT_DIR).glob("checkpoint_step*"))

    thread.join(TRAIN_TIMEOUT_S + 60)
    assert not thread.is_alive(), "the run hung after node B was removed"
    result, error = box["outcome"]
    failure = error or (result.error if result is not None else None)
    if failure is not None:  # acceptable, if it says what happened
        print(f"node loss at step {killed_at}: the run failed: {failure}")
        message = str(failure).lower()
        assert any(w in message for w in ("node", "died", "worker", "unavailable", "failed")), message
        return
    journal = read_journal(run / "progress.jsonl")
    starts = [e["attempt_start"] for e in journal if "attempt_start" in e]
    assert len(starts) >= 2, f"no restart recorded although node B was removed at step {killed_at}: {starts}"
    resumed_from = starts[-1]
    assert resumed_from > 0 and resumed_from % cfg.train.checkpoint_every == 0  # from a checkpoint, not from scratch
    last_start = max(i for i, e in enumerate(journal) if "attempt_start" in e)
    steps_after = [e["step"] for e in journal[last_start:] if "step" in e]
    assert steps_after[0] == resumed_from + 1 and steps_after[-1] == cfg.optim.max_steps
    assert result.metrics["step"] == cfg.optim.max_steps
    assert set(result.metrics["node_ids"]) == {two_nodes.node_ids[0]}  # both ranks on node A now
    print(f"node loss at step {killed_at}: resumed from step {resumed_from} on node A, finished at {steps_after[-1]}")
