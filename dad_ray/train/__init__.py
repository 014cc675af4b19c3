"""Distributed distillation with Ray Train: the experiment (validate, prepare, run, report), the trainer
(``TorchTrainer`` build and fit), the worker loop, schedule, checkpoints, monitoring.

The driver API is imported lazily so that light modules (``schedule``, ``autobatch``) import without Ray Train.
"""

from __future__ import annotations

from dad_ray.lazy import lazy_exports

# public name -> the module of dad_ray.train that defines it
_API = {
    "build_trainer": "trainer",
    "check_run_config": "experiment",
    "copy_student": "trainer",
    "fit": "trainer",
    "run_dir": "trainer",
    "format_metrics_table": "experiment",
    "prepare_experiment": "experiment",
    "run_experiment": "experiment",
    "validate_experiment": "experiment",
}

__all__ = sorted(_API)


__getattr__ = lazy_exports(__name__, _API)
