"""The Ray Train worker: ``train_loop_per_worker(config)`` runs on every worker of the ``TorchTrainer``.

Per optimizer step (:class:`~dad_ray.train.step.TrainStep`, the one step function that the plain PyTorch loop and
the benchmarks call too): ``grad_accum`` micro-batches → (distill) the step's teacher's pseudo-labels on the
shared-context crop and the local patches, student on the crop and the global view → loss parts → backward (DDP
syncs on the last micro-batch) → clip → AdamW → schedule. Loss parts and statistics stay on the device; the monitor
and the journal read them every ``train.log_every`` steps. Every ``val_every`` steps all ranks validate on their
share of the held-out split, reduce the metric sums exactly, and call ``ray.train.report`` together (with a
checkpoint every ``checkpoint_every`` steps).

:func:`train_loop_per_worker` is the whole loop, top to bottom; :class:`DistillWorker` holds what it acts on and
one method per phase (build, resume, start, micro-step, optimizer step, log, validate and report). Its checkpointed
parts are one :class:`~dad_ray.train.checkpoint.Checkpointed`, saved and restored as a unit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import ray.train
import ray.train.torch
import torch

from dad_ray.config import ExperimentConfig, from_dict
from dad_ray.data import storage, train_batches
from dad_ray.logging_utils import setup_logging
from dad_ray.losses import disparity_target
from dad_ray.metrics import MetricAccumulator, evaluate_prediction
from dad_ray.train.autobatch import resolve_batch_size
from dad_ray.train.checkpoint import (
    Checkpointed,
    TrainState,
    check_data_position,
    checkpoint_dir_name,
    mark_committed,
)
from dad_ray.train.monitor import JOURNAL_FILE, Journal, Monitor, scale_stats
from dad_ray.train.schedule import build_optimizer, group_lrs
from dad_ray.train.startup import worker_stamp
from dad_ray.train.step import MicroStep, TrainStep, autocast_context, build_teachers, compile_student
from dad_ray.train.task import build_student, build_task

__all__ = ["DistillWorker", "MicroStep", "autocast_context", "train_loop_per_worker", "validate"]

logger = logging.getLogger(__name__)

FAIL_MARKER = ".fail_injected_step_{step}"

T = TypeVar("T")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Every worker's loop. ``config`` is the trainer's ``train_loop_config``: ``experiment`` (the config as a
    dict), ``run_dir`` and ``tensorboard_dir`` (each a local path or a URI)."""
    worker = DistillWorker.build(config)
    worker.resume(ray.train.get_checkpoint())  # after a restart: the last committed checkpoint
    worker.start()
    cfg, state = worker.cfg, worker.state
    while state.step < cfg.optim.max_steps:
        n_batches = 0
        for batch, data_wait in timed(worker.epoch_batches()):
            n_batches += 1
            micro = worker.micro_step(batch, data_wait)
            if not micro.sync:
                continue  # accumulating gradients: the optimizer steps on the last micro-batch
            worker.optimizer_step(micro)
            step = state.step
            if step % cfg.train.log_every == 0:
                worker.log_scalars()
            if cfg.train.image_every and step % cfg.train.image_every == 0:
                worker.log_images(micro)
            if step % cfg.train.val_every == 0 or step == cfg.optim.max_steps:
                worker.validate_and_report(micro)
            if step == cfg.train.fail_at_step:
                worker.flush_journal()  # every rank (a collective), before rank 0 exits
            maybe_inject_failure(cfg, worker.run_dir, step, worker.rank)
            if step >= cfg.optim.max_steps:
                break
        worker.end_epoch(n_batches)
    worker.close()


def torch_threads(cfg: ExperimentConfig) -> int:
    """Intra-op threads of torch in a worker: the CPUs it reserves (at least 1), whatever the environment says.

    Why: CPU float reductions split their work by thread, so the thread count changes the rounding and, over a few
    hundred steps, the trajectory (measured: the smoke student's AbsRel 0.2738 with 1 thread, 0.2726 with
    ``OMP_NUM_THREADS=2`` in the user's environment, which Ray hands to its workers). Ray's own default is the
    same number (floor of the reserved CPUs) when the environment sets none, so pinning it changes nothing else.
    """
    return max(1, int(cfg.train.cpus_per_worker))


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs (model initialisation draws from torch's)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def timed(items: Iterable[T]) -> Iterator[tuple[T, float]]:
    """Each item with the seconds spent waiting for it. The one place the data-wait timer starts: right before
    asking for the next item, so the time the consumer spends on an item is never counted as waiting."""
    iterator = iter(items)
    while True:
        start = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        yield item, time.perf_counter() - start


def maybe_inject_failure(cfg: ExperimentConfig, run_dir: str, step: int, rank: int) -> None:
    """Testing hook (train.fail_at_step): rank 0 hard-exits once, the first time it reaches that step."""
    if cfg.train.fail_at_step != step or rank != 0:
        return
    fs, marker = storage.resolve(storage.join(run_dir, FAIL_MARKER.format(step=step)))
    if storage.exists(fs, marker):
        return
    storage.write_atomic(fs, marker, b"injected\n")
    logger.warning("train.fail_at_step=%d: worker exits now (os._exit) to exercise fault tolerance", step)
    logging.shutdown()
    os._exit(17)


def all_gather(value: T) -> list[T]:
    """``value`` of every rank, in rank order (a collective: every rank calls it at the same point)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [value]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, value)
    return out


def gather_node_ids() -> list[str]:
    """The Ray node id of every rank, in rank order (a collective)."""
    return all_gather(ray.get_runtime_context().get_node_id())


@contextlib.contextmanager
def private_copy(checkpoint: ray.train.Checkpoint) -> Iterator[str]:
    """The checkpoint as a local directory of this process's own. ``Checkpoint.as_directory`` shares one download
    per node among the processes that ask at the same time, and one rank's clean-up (or a late rank's second
    download) can delete or rewrite the files under another rank's reads: two ranks resumed on one node after a
    node loss saw ``EOFError`` in ``torch.load``. A local checkpoint is read where it is."""
    import pyarrow.fs

    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        yield checkpoint.path
        return
    with tempfile.TemporaryDirectory(prefix="dad_ray_resume_") as tmp:
        yield checkpoint.to_directory(tmp)


@torch.no_grad()
def validate(student: torch.nn.Module, cfg: ExperimentConfig, device: torch.device) -> dict[str, float]:
    """Validation on this rank's part of the held-out split, reduced exactly across ranks (sums and counts)."""
    shard = ray.train.get_dataset_shard("val")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    acc = MetricAccumulator()
    student.eval()
    # the validation set is not split by Ray (an equal split would drop rows): rank r takes every world-th batch
    for i, batch in enumerate(shard.iter_torch_batches(batch_size=cfg.eval.batch_size, device=device)):
        if i % world != rank:
            continue
        with autocast_context(cfg, device):
            pred = student(batch["image"])  # (B, h, w) disparity at the model's input size
        # upsampled to the ground truth by the one evaluation resize, as the final evaluation does
        per_image, valid = evaluate_prediction(pred, batch["depth"], cfg.eval.protocol, cfg.eval.alignment)
        acc.add(per_image, valid)
    student.train()
    acc.reduce()
    return acc.compute()


class DistillWorker:
    """One Ray Train worker's training state: the frozen teachers, the student task and its optimizer (the
    checkpointed parts, as one unit), the counters, and — once :meth:`start` ran — the DDP model, the monitor, the
    journal and this worker's data shard.

    The order of the calls is the order of the RNG draws, which makes a run reproducible and a resumed run continue
    exactly: build (model initialisation) → resume (restores the RNG) → start (the ``batch_size=auto`` probe).
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        run_dir: str,
        tb_dir: str | None,
        checkpoints_dir: str,
        launch: dict[str, Any] | None = None,
    ) -> None:
        self.startup = worker_stamp(launch, loop=time.time())  # the journal's start-up record (rank 0 writes it)
        self.cfg, self.run_dir, self.tb_dir = cfg, run_dir, tb_dir
        self.checkpoints_dir = checkpoints_dir  # Ray Train's run directory: where resume checks the data position
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        setup_logging(rank=self.rank)
        self.device = ray.train.torch.get_device()
        torch.set_num_threads(torch_threads(cfg))
        seed_everything(cfg.train.seed * 1000 + self.rank)
        student = build_student(cfg.model)
        self.teachers = build_teachers(cfg, self.device)  # draws seeded alike on every rank
        # L_feat's target (loss.feat_target): the "initial" copy is taken here, before resume loads any weights
        self.task = build_task(student, cfg, self.teachers.dims if self.teachers is not None else []).to(self.device)
        self.feat_dims = list(self.task.teacher_dims)  # the widths L_feat projects to (empty for "initial")
        compile_student(self.task, cfg)
        optimizer, scheduler = build_optimizer(self.task, cfg.optim)
        self.checkpointed = Checkpointed(
            student=student,
            extra_modules={"feat_proj": self.task.feat_proj},
            optimizer=optimizer,
            scheduler=scheduler,
            extra_state={"teachers": self.teachers} if self.teachers is not None else {},
        )
        self.state = TrainState()

    @classmethod
    def build(cls, config: dict[str, Any]) -> DistillWorker:
        """From the trainer's ``train_loop_config`` (plain dicts, as Ray hands it over)."""
        cfg: ExperimentConfig = from_dict(ExperimentConfig, config["experiment"])
        return cls(
            cfg, config["run_dir"], config.get("tensorboard_dir"), config["checkpoints_dir"], config.get("launch")
        )

    def resume(self, checkpoint: ray.train.Checkpoint | None) -> None:
        """Restore the checkpointed parts, counters and this rank's RNG (no-op without a checkpoint)."""
        if checkpoint is None:
            return
        with private_copy(checkpoint) as ckpt_dir:
            self.state = self.checkpointed.load(ckpt_dir, rank=self.rank)
        check_data_position(self.state, self.checkpoints_dir, self.rank)  # the dataset starts at this epoch
        logger.info(
            "resumed from checkpoint at step %d (epoch %d, %d micro-batches into it)",
            self.state.step,
            self.state.epoch,
            self.state.epoch_batches,
        )

    def start(self) -> None:
        """Resolve the micro-batch (``auto``: probed with the real step), wrap the task for DDP, build the step, open
        the monitor and journal at the (resumed) step."""
        self.micro_batch, self.grad_accum = resolve_batch_size(
            self.cfg, self.task, self.device, self.teachers, self.checkpointed.optimizer
        )
        self.model = ray.train.torch.prepare_model(
            self.task, parallel_strategy_kwargs={"find_unused_parameters": len(set(self.feat_dims)) > 1}
        )
        self.model.train()
        self.step = TrainStep(
            self.cfg,
            self.model,
            self.teachers,
            self.checkpointed.optimizer,
            self.checkpointed.scheduler,
            grad_accum=self.grad_accum,
            use_feat=self.task.use_feat,
        )
        self.monitor = Monitor(self.tb_dir, self.rank, self.cfg.optim.max_steps, self.state.step)
        node_ids = gather_node_ids()  # every rank takes part in the gather
        journal_path = storage.join(self.run_dir, JOURNAL_FILE) if self.rank == 0 else None
        self.journal = Journal(journal_path, self.state.step, node_ids, startup=self.startup)
        self.shard = ray.train.get_dataset_shard("train")

    def epoch_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """This worker's micro-batches of the current epoch (see :func:`dad_ray.data.train_batches`), counted in
        ``state.epoch_batches`` (the data position a checkpoint carries). After a mid-epoch resume the batches the
        checkpointed run already trained on are read and skipped: the run goes on with what the uninterrupted run
        saw next (exact with one worker; with several, which rows reach which worker depends on timing)."""
        done = self.state.epoch_batches
        batches = train_batches(
            self.shard, self.cfg.data, self.state.epoch, batch_size=self.micro_batch, device=self.device
        )
        for i, batch in enumerate(batches):
            if i < done:
                continue
            self.state.epoch_batches = i + 1
            yield batch

    def micro_step(self, batch: dict[str, torch.Tensor], data_wait: float) -> MicroStep:
        """Forward and backward of one micro-batch (:meth:`TrainStep.micro`); its loss parts and scale statistics
        go to the monitor as device tensors (no host sync)."""
        micro = self.step.micro(batch)
        self.monitor.add({f"loss/{k}": v for k, v in micro.parts.items()})
        self.monitor.add(scale_stats(micro.out["crop"], "pred/student"))
        if micro.teacher_crop is not None:
            self.monitor.add(scale_stats(micro.teacher_crop, "pred/teacher"))
        self.monitor.step_done(batch["crop_image"].shape[0], data_wait)
        return micro

    def optimizer_step(self, micro: MicroStep) -> None:
        """Clip, step the optimizer and the schedule (:meth:`TrainStep.optimizer_step`), count the step, buffer the
        journal line (the last micro-batch's loss and the step's teacher)."""
        grad_norm = self.step.optimizer_step()
        if grad_norm is not None:
            self.monitor.add({"train/grad_norm": grad_norm})
        self.state.step += 1
        self.journal.write(self.state.step, self.state.epoch, micro.parts["total"], micro.teacher_index)

    def log_scalars(self) -> None:
        """The logging window's means (losses, scale drift, learning rates, throughput) to console and TensorBoard,
        and the window's journal lines: the one host sync of a window (every rank calls it at the same step)."""
        self.monitor.flush(self.state.step, group_lrs(self.checkpointed.optimizer), self.world)
        self.flush_journal()

    def flush_journal(self) -> None:
        """Write the journal's buffered step lines with every rank's teacher of each step (a collective in
        distillation: every rank calls it at the same point)."""
        per_rank = all_gather(self.journal.pending_teachers()) if self.teachers is not None else None
        self.journal.flush(per_rank)

    def log_images(self, micro: MicroStep) -> None:
        """RGB | teacher | student | ground truth of the step's last micro-batch, the ground truth as disparity
        (1/depth, 0 where missing) so that all three maps share the models' output space."""
        gt = micro.batch["crop_depth"]  # (B, C, C) metres, 0 = missing
        gt_disparity, _ = disparity_target(gt, gt > 0)
        self.monitor.image_grid(
            self.state.step, micro.batch["crop_image"], [micro.teacher_crop, micro.out["crop"], gt_disparity]
        )

    def validate_and_report(self, micro: MicroStep) -> None:
        """Validate, report to Ray Train on every rank (with a committed checkpoint every ``checkpoint_every`` steps
        and at the end), then upload TensorBoard and the journal when the run directory is a URI."""
        state, cfg = self.state, self.cfg
        metrics = validate(self.checkpointed.student, cfg, self.device)
        state.val_round += 1
        state.best_abs_rel = min(state.best_abs_rel, metrics["abs_rel"])
        self.monitor.scalars(state.step, {f"val/{k}": v for k, v in metrics.items()})
        report = {f"val_{k}": v for k, v in metrics.items()}
        report.update(
            step=state.step,
            epoch=state.epoch,
            val_round=state.val_round,
            loss=float(micro.parts["total"].item()),
            best_val_abs_rel=state.best_abs_rel,
            node_ids=gather_node_ids(),
            world_rank=self.rank,
        )
        if self.rank == 0:
            logger.info(
                "validation %d at step %d: abs_rel=%.4f d1=%.4f (%d images, %d without valid pixels)",
                state.val_round,
                state.step,
                metrics["abs_rel"],
                metrics["d1"],
                metrics["n_images"],
                metrics["n_invalid"],
            )
        with_checkpoint = state.step % cfg.train.checkpoint_every == 0 or state.step == cfg.optim.max_steps
        self.flush_journal()  # the step lines before their checkpoint line
        self._report(report, with_checkpoint)
        if with_checkpoint:
            self.journal.checkpoint(state.step)
        self.monitor.sync()
        self.journal.sync()

    def _report(self, metrics: dict[str, Any], with_checkpoint: bool) -> None:
        if not with_checkpoint:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="dad_ray_ckpt_") as tmp:
            self.checkpointed.save(tmp, rank=self.rank, state=self.state, cfg=self.cfg)
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=checkpoint_dir_name(metrics["step"]),
            )
        # Ray Train V2's controller registers a reported checkpoint when it next polls the workers; a worker that dies
        # before that poll would be restarted from the previous checkpoint (or from step 0: Ray issue #46814). Block
        # until this checkpoint is committed, so "restart from the last checkpoint" means the one just written.
        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
        if self.rank == 0:  # only now may a restarted run build its data for this checkpoint
            mark_committed(self.checkpoints_dir, self.state)

    def end_epoch(self, n_batches: int) -> None:
        """Count the epoch; an epoch without a single batch is an error (the loop would never end). ``n_batches``
        is what this attempt took: after a resume at an epoch's last batch it is 0, the epoch's count is not."""
        if n_batches == 0 and self.state.epoch_batches == 0:
            raise RuntimeError(
                f"rank {self.rank}: the training split '{self.cfg.data.train_split}' under {self.cfg.data.root} "
                f"yielded no batch of {self.micro_batch} (fewer samples per worker than the batch size?)"
            )
        self.state.epoch += 1
        self.state.epoch_batches = 0

    def close(self) -> None:
        self.flush_journal()
        self.monitor.close()
        self.journal.close()
