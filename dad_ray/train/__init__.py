"""Distributed distillation with Ray Train: driver (trainer), worker loop, schedule, checkpoints, monitoring.

The driver API is imported lazily so that light modules (``schedule``, ``autobatch``) import without Ray Train.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "build_trainer",
    "fit",
    "format_metrics_table",
    "prepare_experiment",
    "run_dir",
    "run_experiment",
    "validate_experiment",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("dad_ray.train.trainer"), name)
    raise AttributeError(f"module 'dad_ray.train' has no attribute {name!r}")
