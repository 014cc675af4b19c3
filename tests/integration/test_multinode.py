"""Several Ray nodes on one machine, on 127.0.0.1 only: a head with 0 CPUs and two worker nodes told apart by custom
resources (node_a, node_b). Work must land on both worker nodes and never on the head. (A distillation spread over
two nodes that loses one is in tests/integration/test_cluster_e2e.py, submitted as the README's job.)"""

from __future__ import annotations

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
