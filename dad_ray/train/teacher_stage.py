"""``model.teacher_placement: data`` — the live teachers as a Ray Data stage between the augmentation and the
training workers.

Per sample, the teacher's forward passes (the shared-context crop and the N local patches, at the paper's 560²) are
most of the FLOPs of a distillation step (issue 17: 72 % with a ViT-B student, 89 % with a ViT-S). In the worker
placement every training worker holds every teacher and runs it inside its step. Here a pool of
``model.teacher_stage.actors`` Ray Data actors, each with its own resources (``num_gpus``, ``num_cpus``,
``accelerator_type`` — another node type than the training GPUs if wanted), loads the live teachers once and adds,
for each row, ``teacher{i}_crop`` (C, C) and ``teacher{i}_local`` (N, P, P) disparity and, when L_feat's target is
the teacher, ``teacher{i}_feat`` (N_tok, D) — in ``teacher_stage.transport`` (float16 by default: Arrow has no
bfloat16, and float16's 11-bit mantissa keeps more of a [0, 1]-ish map than bf16's 8). The training step then finds
the labels in its batch (:func:`dad_ray.train.task.batch_teacher`) and the workers load no teacher at all
(:func:`dad_ray.train.step.build_teachers`).

Multi-teacher "select": the step's teacher is drawn on the workers, once per optimizer step, as in the worker
placement; the stage cannot know which step a row will land in (Ray Train's streaming split hands rows to whichever
worker asks first), so **every live teacher labels every row** and the worker uses the drawn one. The cost: the
stage runs the sum of the live teachers' FLOPs per row instead of their probability-weighted mean (with the paper's
ViT-L 0.7 / ViT-B 0.3 draw: 1.56 + 0.44 = 2.0 TFLOP per 560² view instead of 0.7 x 1.56 + 0.3 x 0.44 = 1.22, 1.6x),
and the draw stays exactly the worker placement's (same seed, same teacher at the same step on every rank). A
per-row draw in the stage would change the method (one teacher per optimizer step, the same on every rank). With
one live teacher (every paper preset but the assistant ones) nothing is wasted.

Back-pressure: the pool's queue is bounded by ``max_tasks_in_flight`` per actor, and Ray Data's streaming executor
holds produced blocks within its object-store budget, pausing upstream operators when the trainer does not consume:
a fast teacher pool never fills the object store. The workers' data-wait share of the step is reported as with the
worker placement (``time/data_wait_share``).

Fault tolerance: the actors are created with ``max_restarts`` and their tasks retried on actor death
(``max_task_retries=-1``): a teacher actor that dies is restarted by Ray and the batch it held is recomputed; the
training workers see a delay, not a gap.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from dad_ray.config import ExperimentConfig, from_dict
from dad_ray.data.augment import normalize_uint8
from dad_ray.train.step import autocast_context, teacher_dtype
from dad_ray.train.task import TeacherPool, feat_target

logger = logging.getLogger(__name__)


def stage_teachers(cfg: ExperimentConfig) -> list[int]:
    """Indices of the teachers the stage runs: the live ones (not precomputed columns)."""
    return [i for i, t in enumerate(cfg.model.teachers) if not t.column]


def needs_teacher_features(cfg: ExperimentConfig) -> bool:
    """Whether the step's L_feat compares with the teacher's tokens (then the stage sends ``teacher{i}_feat``)."""
    return cfg.loss.mode == "distill" and cfg.loss.lambda_feat > 0 and feat_target(cfg) == "teacher"


class TeacherStage:
    """The Ray Data actor: ``__init__`` loads the live teachers once; ``__call__`` labels a numpy batch of training
    rows (uint8 ``crop_image`` (B, 3, C, C), ``local_images`` (B, N, 3, P, P)) and returns it with the
    ``teacher{i}_*`` columns added."""

    def __init__(self, experiment: dict[str, Any]) -> None:
        self.cfg = cfg = from_dict(ExperimentConfig, experiment)
        stage = cfg.model.teacher_stage
        use_cuda = stage.num_gpus > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda") if use_cuda else torch.device("cpu")
        if not use_cuda:
            torch.set_num_threads(max(1, int(stage.num_cpus)))
        live = [not t.column for t in cfg.model.teachers]
        self.pool = TeacherPool(
            cfg.model.teachers, self.device, seed=0, dtype=teacher_dtype(cfg, self.device), live=live
        )
        self.indices = stage_teachers(cfg)
        self.use_lg = cfg.loss.lambda_lg > 0
        self.use_feat = needs_teacher_features(cfg)
        self.dtype = np.float16 if stage.transport == "float16" else np.float32
        logger.info("teacher stage on %s: teachers %s", self.device, [cfg.model.teachers[i].name for i in self.indices])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        crop = normalize_uint8(torch.from_numpy(np.ascontiguousarray(batch["crop_image"])).to(self.device))
        local = None
        if self.use_lg:
            local = normalize_uint8(torch.from_numpy(np.ascontiguousarray(batch["local_images"])).to(self.device))
        out = dict(batch)
        with autocast_context(self.cfg, self.device):
            for i in self.indices:
                t_crop, t_feat, t_local = self.pool.predict(
                    i, crop, local
                )  # float32 (B, C, C), (B, T, D), (B, N, P, P)
                out[f"teacher{i}_crop"] = self._host(t_crop)
                if t_local is not None:
                    out[f"teacher{i}_local"] = self._host(t_local)
                if self.use_feat:
                    out[f"teacher{i}_feat"] = self._host(t_feat)
        return out

    def _host(self, t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy().astype(self.dtype)


def add_teacher_stage(ds, cfg: ExperimentConfig):
    """``ds`` (the training dataset of :func:`dad_ray.data.train_dataset`) followed by the teacher stage."""
    import ray.data

    from dad_ray.config import to_dict

    stage = cfg.model.teacher_stage
    extra: dict[str, Any] = {"accelerator_type": stage.accelerator_type} if stage.accelerator_type else {}
    logger.info(
        "teacher placement 'data': %d actor(s) with %g CPU / %g GPU%s, batch %d",
        stage.actors, stage.num_cpus, stage.num_gpus,
        f" ({stage.accelerator_type})" if stage.accelerator_type else "", stage.batch_size,
    )  # fmt: skip
    return ds.map_batches(
        TeacherStage,
        fn_constructor_args=(to_dict(cfg),),
        batch_size=stage.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=stage.actors, max_tasks_in_flight_per_actor=stage.max_tasks_in_flight),
        num_cpus=stage.num_cpus,
        num_gpus=stage.num_gpus,
        max_restarts=stage.max_restarts,
        max_task_retries=-1,  # a batch held by an actor that died is run again on the restarted one
        **extra,
    )
