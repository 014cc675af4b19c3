"""Driver side of a distillation run: validate the config, prepare data and teacher, build and fit the
``TorchTrainer``, evaluate, write the outputs.

Outputs of a run (``<train.output>/<train.name>/``):

    config.yaml            the resolved config (``jobs/distill.py --config`` on it reproduces the run)
    tensorboard/           scalars, image grids (rank 0)
    checkpoints/           Ray Train's run directory: checkpoint_step*/ (best K by validation AbsRel + latest)
    progress.jsonl         one line per optimizer step and per worker-group start
    untrained_student.safetensors, student.safetensors   the seeded initial and the final student (official layout)
    final_metrics.json     {"teacher": {...}, "student": {...}, "untrained_student": {...}, ...}
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.train.torch import TorchTrainer

from dad_ray.config import ConfigError, ExperimentConfig, save_config, to_dict, with_absolute_paths
from dad_ray.data import ensure_synthetic, eval_dataset, ingest_options, storage, train_dataset
from dad_ray.data.storage import is_uri
from dad_ray.models import list_models, save_weights
from dad_ray.runtime import init_ray
from dad_ray.train.checkpoint import STUDENT_FILE
from dad_ray.train.loop import seed_everything, train_loop_per_worker

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "final_metrics.json"
METRIC_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "d1", "d2", "d3")


def run_dir(cfg: ExperimentConfig) -> str:
    """``<train.output>/<train.name>``, absolute for local paths (Ray needs absolute storage paths)."""
    base = cfg.train.output if is_uri(cfg.train.output) else os.path.abspath(cfg.train.output)
    return f"{base.rstrip('/')}/{cfg.train.name}"


def _needs_bootstrap(cfg: ExperimentConfig) -> list[int]:
    return [i for i, t in enumerate(cfg.model.teachers) if not t.weights or not Path(t.weights).is_file()]


def validate_experiment(cfg: ExperimentConfig) -> None:
    """Everything that can be checked before a worker starts: model names, weight files, data location."""
    models = list_models()
    names = [("model.student", cfg.model.student)]
    if cfg.loss.mode == "distill":
        names += [(f"model.teachers[{i}].name", t.name) for i, t in enumerate(cfg.model.teachers)]
    for key, name in names:
        if name not in models:
            raise ConfigError(f"{key}: unknown model '{name}'; available: {', '.join(models)}")
    if cfg.model.student_init != "none" and not Path(cfg.model.student_weights).is_file():
        raise ConfigError(f"model.student_weights: file not found: {cfg.model.student_weights}")
    if cfg.loss.mode == "distill" and not cfg.bootstrap.enabled:
        for i in _needs_bootstrap(cfg):
            weights = cfg.model.teachers[i].weights
            raise ConfigError(
                f"model.teachers[{i}].weights: "
                + (f"file not found: {weights}" if weights else "no teacher weights given")
                + " (download the official checkpoint, or set bootstrap.enabled=true to train a small teacher)"
            )
    if cfg.data.synthetic.train_samples == 0 and not is_uri(cfg.data.root):
        for split in (cfg.data.train_split, cfg.data.val_split):
            if not (Path(cfg.data.root) / split / "manifest.json").is_file():
                raise ConfigError(
                    f"data.root: no shards for split '{split}' under {cfg.data.root} (make them with "
                    f"jobs/prepare_data.py, or set data.synthetic.train_samples to generate synthetic scenes)"
                )


def build_trainer(cfg: ExperimentConfig, *, callbacks: tuple = (), storage_path: str | None = None) -> TorchTrainer:
    """The ``TorchTrainer`` of one run. Fitting it again with the same ``train.output``/``train.name`` resumes.

    ``storage_path`` defaults to ``<run dir>``; Ray's own run directory is ``<storage_path>/checkpoints``.
    """
    cfg = with_absolute_paths(cfg)
    directory = run_dir(cfg)
    ray_storage = storage_path or directory
    resources = {"CPU": cfg.train.cpus_per_worker}
    if cfg.train.use_gpu:
        resources["GPU"] = cfg.train.gpus_per_worker
    datasets = {
        "train": train_dataset(cfg.data, cfg.data.train_split, seed=cfg.train.seed),
        "val": eval_dataset(
            cfg.data, cfg.data.val_split, input_size=cfg.eval.input_size, max_samples=cfg.data.max_val_samples
        ),
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "experiment": to_dict(cfg),
            "run_dir": directory,
            "tensorboard_dir": storage.join(directory, "tensorboard"),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker=resources,
            placement_strategy=cfg.train.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=CHECKPOINT_DIR,
            storage_path=ray_storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.train.keep_checkpoints,
                checkpoint_score_attribute="val_abs_rel",
                checkpoint_score_order="min",
            ),
            callbacks=list(callbacks),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"], execution_options=ingest_options(cfg.data)),
    )


def fit(cfg: ExperimentConfig, *, callbacks: tuple = ()) -> ray.train.Result:
    """Fit one run; raises with the workers' error if it failed after ``train.max_failures`` restarts."""
    result = build_trainer(cfg, callbacks=callbacks).fit()
    if result.error is not None:
        raise RuntimeError(f"training run '{cfg.train.name}' failed: {result.error}") from result.error
    return result


def _copy_student(result: ray.train.Result, dest: str | Path) -> None:
    if result.checkpoint is None:
        raise RuntimeError("the run finished without a checkpoint")
    with result.checkpoint.as_directory() as ckpt:
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=Path(dest).parent, suffix=".tmp")
        os.close(fd)
        shutil.copyfile(Path(ckpt) / STUDENT_FILE, tmp)
        os.replace(tmp, dest)


def bootstrap_teachers(cfg: ExperimentConfig) -> None:
    """Embedded default: train each missing small teacher on ground truth and cache it at its weights path."""
    for i in _needs_bootstrap(cfg):
        teacher = cfg.model.teachers[i]
        if not teacher.weights:
            raise ConfigError(f"model.teachers[{i}].weights: bootstrap needs a path to cache the trained teacher at")
        dest = Path(teacher.weights)
        boot = cfg.bootstrap
        steps = boot.max_steps
        boot_cfg = replace(
            cfg,
            model=replace(cfg.model, student=teacher.name, student_weights="", student_init="none"),
            loss=replace(cfg.loss, mode="supervised"),
            optim=replace(cfg.optim, lr=boot.lr, max_steps=steps, warmup_steps=min(cfg.optim.warmup_steps, steps - 1)),
            data=replace(cfg.data, batch_size=boot.batch_size),
            train=replace(
                cfg.train,
                name=f"bootstrap_{dest.stem}",
                output=str(dest.parent.resolve()),
                val_every=steps,
                checkpoint_every=steps,
                image_every=0,
                fail_at_step=-1,
            ),
        )
        logger.info("bootstrap: training teacher %s on ground truth for %d steps → %s", teacher.name, steps, dest)
        _copy_student(fit(boot_cfg), dest)
        logger.info("bootstrap: teacher cached at %s", dest)


def prepare_experiment(cfg: ExperimentConfig) -> ExperimentConfig:
    """Validate, make paths absolute, generate synthetic shards if configured, and bootstrap missing teachers — once,
    before any trial or worker starts. Returns the config to run (absolute paths; teacher files exist)."""
    cfg = with_absolute_paths(cfg)
    validate_experiment(cfg)
    init_ray()
    if cfg.data.synthetic.train_samples > 0:
        ensure_synthetic(cfg.data.root, cfg.data.synthetic, splits=(cfg.data.train_split, cfg.data.val_split))
    if cfg.loss.mode == "distill" and _needs_bootstrap(cfg):
        bootstrap_teachers(cfg)
    return cfg


def _evaluate(cfg: ExperimentConfig, models: dict[str, tuple[str, str]]) -> dict[str, dict[str, float]]:
    """{label: (model name, weights)} → {label: metrics}, all models in one pass over the validation split."""
    from dad_ray.metrics.evaluate import evaluate_checkpoints

    return evaluate_checkpoints(
        models,
        data=cfg.data.root,
        split=cfg.data.val_split,
        protocol=cfg.eval.protocol,
        alignment=cfg.eval.alignment,
        input_size=cfg.eval.input_size,
        batch_size=cfg.eval.batch_size,
        max_samples=cfg.data.max_val_samples,
        use_gpu=cfg.train.use_gpu,
    )


def _staging_dir(directory: str) -> Path:
    """Where the driver writes a run's own files: the run directory itself, or for a URI a local directory whose
    files are uploaded to it (``<tmp>/dad_ray_runs/<hash of the URI>``)."""
    if not is_uri(directory):
        return Path(directory)
    return Path(tempfile.gettempdir()) / "dad_ray_runs" / uuid.uuid5(uuid.NAMESPACE_URL, directory).hex


def run_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    """The whole job: prepare → fit (resuming a run of the same name) → evaluate → ``final_metrics.json``.

    The run directory may be local or a URI (``train.output=s3://bucket/runs``): Ray Train stores the checkpoints
    there itself, the workers upload TensorBoard and the journal, and the driver uploads its files from a local
    staging directory, so every node can read the weights the final evaluation uses.
    """
    cfg = prepare_experiment(cfg)
    directory = run_dir(cfg)
    remote = is_uri(directory)
    out = _staging_dir(directory)

    def publish(name: str) -> str:
        """The file's path in the run directory (uploaded there first when that is a URI)."""
        if not remote:
            return str(out / name)
        storage.upload_file(out / name, storage.join(directory, name))
        return storage.join(directory, name)

    save_config(cfg, out / "config.yaml")
    publish("config.yaml")
    untrained_name = "untrained_student.safetensors"
    untrained = out / untrained_name
    if not untrained.is_file() and not (
        remote and storage.download_file(storage.join(directory, untrained_name), untrained)
    ):
        seed_everything(cfg.train.seed * 1000)  # the same initial student rank 0 builds
        from dad_ray.train.task import build_student

        save_weights(build_student(cfg.model), untrained)
    untrained_path = publish(untrained_name)
    result = fit(cfg)
    _copy_student(result, out / "student.safetensors")
    student_path = publish("student.safetensors")

    models: dict[str, tuple[str, str]] = {}
    if cfg.loss.mode == "distill":
        for i, t in enumerate(cfg.model.teachers):
            models["teacher" if i == 0 else f"teacher_{i}"] = (t.name, t.weights)
    models["student"] = (cfg.model.student, student_path)
    models["untrained_student"] = (cfg.model.student, untrained_path)
    metrics: dict[str, Any] = _evaluate(cfg, models)
    metrics["_info"] = {
        "protocol": cfg.eval.protocol,
        "alignment": cfg.eval.alignment,
        "split": f"{cfg.data.root}/{cfg.data.val_split}",
        "steps": result.metrics.get("step") if result.metrics else None,
        "best_val_abs_rel": result.metrics.get("best_val_abs_rel") if result.metrics else None,
    }
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    publish(METRICS_FILE)
    return metrics


def format_metrics_table(metrics: dict[str, Any]) -> str:
    """A fixed-width table: one row per evaluated model, one column per metric."""
    rows = [k for k in metrics if not k.startswith("_")]
    header = f"{'model':<20}" + "".join(f"{k:>10}" for k in METRIC_KEYS) + f"{'images':>8}"
    lines = [header, "-" * len(header)]
    for row in rows:
        m = metrics[row]
        lines.append(
            f"{row:<20}"
            + "".join(f"{m.get(k, float('nan')):>10.4f}" for k in METRIC_KEYS)
            + f"{m.get('n_images', 0):>8}"
        )
    info = metrics.get("_info", {})
    if info:
        lines.append(
            f"(protocol {info.get('protocol')}, alignment in {info.get('alignment')} space, {info.get('split')})"
        )
    return "\n".join(lines)
