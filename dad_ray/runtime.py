"""The one place that starts or joins Ray, and the only one that touches Ray's private APIs and environment knobs.

Every job, benchmark and driver calls :func:`init_ray` (or :func:`ray_session`); nothing else in ``dad_ray`` calls
``ray.init``. A local Ray (no ``RAY_ADDRESS``) is sized for a small machine, the same for training, Tune, evaluation,
prediction and data preparation:

- more logical CPUs than cores (at least 4): Ray Data's file listing needs a free CPU besides the Train workers;
- the dashboard on 127.0.0.1 only: Ray Train V2 releases a finished run's placement group through the State API the
  dashboard serves;
- a larger idle-worker pool (``num_workers_soft_limit``): otherwise every epoch's Ray Data tasks start fresh
  processes that import torch again.

Private Ray APIs are listed in :data:`PRIVATE_APIS` and reached only through :func:`private_api`, so that a Ray
release that moves one fails here, with a message naming it (``tests/unit/test_runtime.py`` imports each one).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)

LOCAL_MIN_CPUS = 4  # logical CPUs of a local Ray, at least (README, "Ray on a small machine")
LOCAL_WORKERS_PER_CPU = 3  # idle worker processes a local Ray keeps per logical CPU

# Environment knobs for Ray's processes, set (never overriding the user's value) before Ray starts or reads.
RAY_ENV: dict[str, str] = {
    # read_parquet starts 32 footer-reading actors per call by default (every epoch, every evaluation): 2 suffice.
    "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "2",
}

# The private Ray APIs dad_ray uses: name -> (module, attribute, why). ``private_api(name)`` imports one.
PRIVATE_APIS: dict[str, tuple[str, str, str]] = {
    "prepare_cluster_config": (
        "ray.autoscaler._private.util",
        "prepare_config",
        "the only offline check of a cluster.yaml against Ray's schema (ray up has no dry run)",
    ),
    "validate_cluster_config": (
        "ray.autoscaler._private.util",
        "validate_config",
        "the only offline check of a cluster.yaml against Ray's schema (ray up has no dry run)",
    ),
    "DataContext._execution_idx": (
        "ray.data.context",
        "DataContext",
        "the dataset's execution counter: the epoch index that makes each row's augmentation a pure function",
    ),
}


class RayAPIError(RuntimeError):
    """A private Ray API dad_ray relies on is missing from the installed Ray (pyproject pins the version)."""


def private_api(name: str) -> Any:
    """The object behind ``PRIVATE_APIS[name]``, or :class:`RayAPIError` naming it and the installed Ray."""
    module_name, attr, why = PRIVATE_APIS[name]
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise RayAPIError(_moved(name, f"{module_name}.{attr}", why)) from err
    if name == "DataContext._execution_idx" and not hasattr(obj.get_current(), "_execution_idx"):
        raise RayAPIError(_moved(name, "DataContext.get_current()._execution_idx", why))
    return obj


def _moved(name: str, where: str, why: str) -> str:
    import ray

    return (
        f"private Ray API '{name}' ({where}) is not in the installed Ray {ray.__version__}; dad_ray pins "
        f"ray 2.60.x in pyproject.toml because it uses it for {why}"
    )


def data_execution_index() -> int:
    """How many times the dataset running this task has been executed before (0, 1, 2, ...: the epoch)."""
    return int(private_api("DataContext._execution_idx").get_current()._execution_idx)


def start_data_execution_index(ctx: Any, index: int) -> None:
    """Make the next execution of the dataset whose context is ``ctx`` (``ds.context``) count as execution
    ``index``: a run resumed at epoch ``index`` then shuffles and augments that epoch as the uninterrupted run did
    (Ray Data's counter starts at 0 for every new worker group, and the block order and each row's augmentation
    derive from it)."""
    private_api("DataContext._execution_idx")
    ctx._execution_idx = int(index)


def relax_data_reservations(ctx: Any) -> None:
    """Turn off Ray Data's per-operator resource reservation on ``ctx`` (a ``DataContext``).

    Why: on a few CPUs the reservation splits the CPU cap between operators and leaves the single heavy
    decode/augment operator one task at a time (measured 88 -> 141 samples/s with 2 CPUs for Data).
    """
    ctx.op_resource_reservation_enabled = False


def apply_env() -> None:
    """Set :data:`RAY_ENV` in this process's environment (values already set by the user win)."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)


def local_num_cpus(num_cpus: int | None = None) -> int:
    """Logical CPUs of a local Ray: ``num_cpus``, or the cores but at least :data:`LOCAL_MIN_CPUS`."""
    return num_cpus or max(LOCAL_MIN_CPUS, os.cpu_count() or 1)


def init_ray(
    num_cpus: int | None = None,
    *,
    address: str | None = None,
    dashboard: bool = True,
    log_to_driver: bool = True,
) -> bool:
    """Join the cluster at ``address`` (default ``RAY_ADDRESS``) or start a local Ray sized for a small machine.

    A no-op when this process is already connected. Returns whether this call connected (so the caller that
    started Ray may shut it down). ``dashboard=False`` starts a local Ray without the dashboard (benchmarks that
    run no Ray Train); a Ray Train run needs it (see the module docstring).
    """
    import ray

    apply_env()
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        logger.info("joining the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=log_to_driver)
        return True
    num_cpus = local_num_cpus(num_cpus)
    logger.info("starting a local Ray with %d logical CPUs (set RAY_ADDRESS to join a cluster instead)", num_cpus)
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        log_to_driver=log_to_driver,
        # Private setting: Ray kills idle workers beyond num_cpus after a second, and each epoch's Ray Data tasks
        # would start fresh processes that import torch again (~15 s per epoch on 2 cores, measured).
        _system_config={"num_workers_soft_limit": LOCAL_WORKERS_PER_CPU * num_cpus},
    )
    return True


@contextlib.contextmanager
def ray_session(num_cpus: int | None = None, **kwargs: Any) -> Iterator[None]:
    """:func:`init_ray` for the duration of a block; shuts Ray down afterwards only if this block started it."""
    import ray

    started = init_ray(num_cpus, **kwargs)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
