"""TensorBoard HParams: one session per trial, so ``tensorboard --logdir <experiment>`` compares trials by their
hyper-parameters against the final metric.

Written on the driver by a Tune callback when a trial ends (finished, stopped by ASHA, or failed), into the trial's
own TensorBoard directory (``<experiment>/trials/<trial id>/tensorboard``) next to the distillation's scalars
(a URI directory gets the event file uploaded).
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from dad_ray.data.storage import is_uri, upload_tree

logger = logging.getLogger(__name__)

HPARAM_METRICS = ("hparams/best_val_abs_rel", "hparams/best_val_d1", "hparams/steps")


def _hparam_value(value: Any) -> Any:
    if isinstance(value, bool) or isinstance(value, (int, float, str)):
        return value
    return str(value)


def write_hparams(
    log_dir: str | Path,
    hparams: dict[str, Any],
    metrics: dict[str, float],
    *,
    step: int = 0,
    status: str = "",
    discrete: dict[str, list[Any]] | None = None,
) -> None:
    """Write an HParams session (experiment config, session start with ``hparams``, session end) and the metrics as
    scalars (tags ``hparams/...``) into ``log_dir`` with torch's SummaryWriter."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    values = {k: _hparam_value(v) for k, v in hparams.items()}
    if status:
        values["status"] = status
    finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    exp, ssi, sei = hparams_summary(values, {k: 0.0 for k in metrics}, hparam_domain_discrete=discrete)
    remote = str(log_dir) if is_uri(str(log_dir)) else None
    local = tempfile.mkdtemp(prefix="dad_ray_hparams_") if remote else str(log_dir)
    Path(local).mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(log_dir=local, filename_suffix=".hparams")
    try:
        file_writer = writer._get_file_writer()
        for summary in (exp, ssi, sei):
            file_writer.add_summary(summary)
        for key, value in finite.items():
            writer.add_scalar(key, value, step)
    finally:
        writer.close()
    if remote:  # a URI trial directory (s3://…): the event file goes there beside the trial's own
        upload_tree(local, remote)
        shutil.rmtree(local, ignore_errors=True)


class HParamsCallback(tune.Callback):
    """Tracks each trial's best metric from its results and writes its HParams session when it ends."""

    def __init__(self, hparams_of, tensorboard_dir_of, metric: str = "val_abs_rel", mode: str = "min"):
        self._hparams_of = hparams_of  # trial config -> {dotted key: value}
        self._tb_dir_of = tensorboard_dir_of  # trial id -> directory
        self._metric, self._mode = metric, mode
        self._best: dict[str, dict[str, float]] = {}

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        best = self._best.setdefault(trial.trial_id, {})
        best["steps"] = max(best.get("steps", 0), int(result.get("step", 0)))
        for key, better in (("val_abs_rel", min), ("val_d1", max)):
            if key in result and result[key] is not None:
                best[key] = better(best.get(key, result[key]), result[key])

    def _write(self, trial, status: str) -> None:
        best = self._best.get(trial.trial_id, {})
        metrics = {
            "hparams/best_val_abs_rel": best.get("val_abs_rel", float("nan")),
            "hparams/best_val_d1": best.get("val_d1", float("nan")),
            "hparams/steps": float(best.get("steps", 0)),
        }
        try:
            write_hparams(
                self._tb_dir_of(trial.trial_id),
                self._hparams_of(trial.config),
                metrics,
                step=int(best.get("steps", 0)),
                status=status,
            )
        except Exception:  # the search goes on without this trial's HParams entry; say so loudly
            logger.exception("could not write the HParams summary of trial %s", trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._write(trial, "completed")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._write(trial, "error")
