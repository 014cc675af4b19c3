"""The trainer of one run: the ``TorchTrainer`` (workers, datasets, checkpoint policy), fitting it, and copying the
final student out of its result. The experiment around it (validation, data, teachers, evaluation, output files) is
:mod:`dad_ray.train.experiment`.

Ray Train's own run directory is ``<train.output>/<train.name>/checkpoints/`` (``checkpoint_step*/``, the best K by
validation AbsRel + the latest); fitting again with the same ``train.output`` and ``train.name`` resumes from it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.train
from ray.train.torch import TorchTrainer

from dad_ray.config import DataConfig, ExperimentConfig, absolute_path, to_dict, with_absolute_paths
from dad_ray.data import eval_dataset, ingest_options, storage, train_dataset
from dad_ray.train.checkpoint import STUDENT_FILE, latest_data_position
from dad_ray.train.startup import launch_stamp

CHECKPOINT_DIR = "checkpoints"


def train_loop_per_worker(config: dict) -> None:
    """:func:`dad_ray.train.worker.train_loop_per_worker`, imported when a worker runs it. The ``TorchTrainer`` is
    pickled with a reference to this function; the processes that only pass it on (the Tune trial that builds the
    trainer, the Ray Train controller) then never import the worker's models (timm → torchvision, ~1.5 s of every
    trial's start-up on 2 cores, measured in ``.notes/issue-16-cpu.md``)."""
    from dad_ray.train.worker import train_loop_per_worker as loop

    loop(config)


def run_dir(cfg: ExperimentConfig) -> str:
    """``<train.output>/<train.name>``, absolute for local paths (Ray needs absolute storage paths); an empty
    ``train.output`` is the working directory. A URI keeps its query (``?endpoint_override=…``) at the end."""
    return storage.join(absolute_path(cfg.train.output or "."), cfg.train.name)


@dataclass(frozen=True)
class ResumedTrainData:
    """The training dataset as Ray Train's dataset factory: called whenever a worker group starts (the first time,
    after every worker failure, on a resubmitted run), it builds the dataset to start at the epoch of the newest
    checkpoint in ``checkpoints`` — the one the workers resume from. (Ray Data's own epoch counter starts at 0 for
    each new worker group; the block order and every row's augmentation derive from it.)"""

    data: DataConfig
    seed: int
    checkpoints: str  # Ray Train's run directory (local or URI)
    teacher_columns: tuple[tuple[int, str], ...] = ()  # (teacher index, column) of the precomputed teachers
    stage: ExperimentConfig | None = None  # model.teacher_placement "data": the run's config, for the teacher stage

    def __call__(self):
        position = latest_data_position(self.checkpoints)
        first = position["epoch"] if position else 0
        ds = train_dataset(self.data, seed=self.seed, first_epoch=first, teacher_columns=self.teacher_columns)
        if self.stage is None:
            return ds
        from dad_ray.train.teacher_stage import add_teacher_stage  # the teachers' models: timm, only in this mode

        return add_teacher_stage(ds, self.stage)


def precomputed_teachers(cfg: ExperimentConfig) -> tuple[tuple[int, str], ...]:
    """(index in ``model.teachers``, column) of each precomputed teacher of a distillation run."""
    if cfg.loss.mode != "distill":
        return ()
    return tuple((i, t.column) for i, t in enumerate(cfg.model.teachers) if t.column)


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
        # data.train_sources, else root + train_split; built again at the resumed epoch after a restart
        "train": ResumedTrainData(
            cfg.data,
            cfg.train.seed,
            storage.join(ray_storage, CHECKPOINT_DIR),
            precomputed_teachers(cfg),
            cfg if cfg.loss.mode == "distill" and cfg.model.teacher_placement == "data" else None,
        ),
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
            "checkpoints_dir": storage.join(ray_storage, CHECKPOINT_DIR),
            "launch": launch_stamp(),  # dad_ray.train.startup: the first attempt's start-up, phase by phase
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


def copy_student(result: ray.train.Result, dest: str | Path) -> None:
    """The student of the result's checkpoint (official safetensors layout) → ``dest``, a local file or a storage URI
    (``s3://…``: uploaded, so other nodes can read it), atomically."""
    if result.checkpoint is None:
        raise RuntimeError("the run finished without a checkpoint")
    with result.checkpoint.as_directory() as ckpt:
        if storage.is_uri(str(dest)):
            storage.upload_file(Path(ckpt) / STUDENT_FILE, str(dest))
            return
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=Path(dest).parent, suffix=".tmp")
        os.close(fd)
        shutil.copyfile(Path(ckpt) / STUDENT_FILE, tmp)
        os.replace(tmp, dest)
