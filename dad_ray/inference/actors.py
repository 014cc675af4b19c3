"""The one actor plan of Ray Data batch inference: how many model actors, what each reserves, where it runs.

Evaluation and prediction both run a model per actor in ``map_batches(..., compute=ActorPoolStrategy(size=n))``;
:func:`plan_actors` decides ``n`` and each actor's resources for both, as a pure function of the cluster's resources
and the host's cores (tested without Ray), and :func:`plan_for_cluster` reads them from the connected cluster.

- **GPU** (``use_gpu`` True, or None = "when the cluster lists a GPU"): one actor per cluster GPU, each reserving
  1 GPU and 1 CPU (the CPU work every GPU actor does: decode hand-off, resize, host copies).
- **CPU, filling the cluster** (evaluation): one 1-CPU actor per cluster CPU but one (the shard read's listing task
  needs a free CPU, and the driver runs beside it), at most one per host core; torch in each actor gets its share
  of the host's cores as threads, so that the actors do not oversubscribe the cores together.
- **CPU, one actor** (prediction): a single actor reserving ``cpus_per_actor`` CPUs, torch's own thread count.

``actors`` > 0 overrides the count in every case.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ActorPlan:
    """``count`` model actors, each reserving ``num_cpus`` CPUs and ``num_gpus`` GPUs; ``threads`` torch threads
    per CPU actor (0 = leave torch's default; unused on GPU)."""

    count: int
    num_cpus: float
    num_gpus: float = 0
    threads: int = 0

    @property
    def device(self) -> str:
        """The torch device of every actor: ``"cuda"`` when the actors reserve a GPU, else ``"cpu"``."""
        return "cuda" if self.num_gpus else "cpu"

    @property
    def resources(self) -> dict[str, float]:
        """Per-actor resources as ``map_batches`` keyword arguments (``num_gpus`` only when a GPU is reserved)."""
        return {"num_gpus": self.num_gpus, "num_cpus": self.num_cpus} if self.num_gpus else {"num_cpus": self.num_cpus}


def plan_actors(
    cluster: Mapping[str, float],
    host_cpus: int,
    *,
    use_gpu: bool | None,
    actors: int = 0,
    fill_cpus: bool = False,
    cpus_per_actor: float = 1.0,
) -> ActorPlan:
    """The actor plan for a cluster with resources ``cluster`` (as ``ray.cluster_resources()``: "CPU", "GPU", ...)
    seen from a host with ``host_cpus`` cores (``os.cpu_count()``); see the module docstring for the three cases.

    ``use_gpu`` None picks GPU actors when the cluster lists a GPU (the driver itself may have none); True on a
    cluster without one raises here rather than leaving an actor pool that can never be scheduled.
    """
    if actors < 0:
        raise ValueError(f"actors must be >= 0 (0 = planned from the cluster), got {actors}")
    gpus = int(cluster.get("GPU", 0))
    if use_gpu is None:
        use_gpu = gpus > 0
    if use_gpu:
        if gpus < 1:
            raise RuntimeError("use_gpu: the Ray cluster has no GPU (ray.cluster_resources() lists none)")
        return ActorPlan(count=actors or gpus, num_cpus=1, num_gpus=1)
    if not fill_cpus:
        return ActorPlan(count=actors or 1, num_cpus=cpus_per_actor)
    cpus = int(cluster.get("CPU", 1))
    # one CPU stays free for the shard read (its listing task needs 1 CPU) and the driver
    count = actors or max(1, min(int((cpus - 1) // cpus_per_actor), host_cpus))
    return ActorPlan(count=count, num_cpus=cpus_per_actor, threads=max(1, host_cpus // count))


def plan_for_cluster(
    *, use_gpu: bool | None, actors: int = 0, fill_cpus: bool = False, cpus_per_actor: float = 1.0
) -> ActorPlan:
    """:func:`plan_actors` for the connected Ray cluster and this host's cores (call after ``init_ray``)."""
    import ray

    return plan_actors(
        ray.cluster_resources(),
        os.cpu_count() or 1,
        use_gpu=use_gpu,
        actors=actors,
        fill_cpus=fill_cpus,
        cpus_per_actor=cpus_per_actor,
    )
