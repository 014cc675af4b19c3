"""The Ray Train worker loop: ``train_loop_per_worker(config)`` runs on every worker of the ``TorchTrainer``.

Per optimizer step: ``grad_accum`` micro-batches → (distill) frozen teacher pseudo-labels on the shared-context crop
and the local patches, student on the crop and the global view → loss parts → backward (DDP syncs on the last
micro-batch) → clip → AdamW → schedule. Every ``val_every`` steps all ranks validate on their share of the held-out
split, reduce the metric sums exactly, and call ``ray.train.report`` together (with a checkpoint every
``checkpoint_every`` steps).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F

from dad_ray.config import ExperimentConfig, from_dict
from dad_ray.data import storage, train_batches
from dad_ray.logging_utils import setup_logging
from dad_ray.metrics import MetricAccumulator, evaluate_disparity
from dad_ray.train.autobatch import resolve_batch_size
from dad_ray.train.checkpoint import TrainState, load_checkpoint, save_checkpoint
from dad_ray.train.monitor import JOURNAL_FILE, Journal, Monitor, scale_stats
from dad_ray.train.schedule import build_optimizer, group_lrs
from dad_ray.train.task import StudentTask, TeacherPool, build_student, compute_losses

logger = logging.getLogger(__name__)

FAIL_MARKER = ".fail_injected_step_{step}"


def autocast_context(cfg: ExperimentConfig, device: torch.device):
    """bf16 autocast on GPU ('auto' or 'bf16'), on CPU only when asked for ('bf16'); else a no-op."""
    precision = cfg.train.precision
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _maybe_inject_failure(cfg: ExperimentConfig, run_dir: str, step: int, rank: int) -> None:
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
            pred = student(batch["image"])
        pred = F.interpolate(
            pred.float()[:, None], size=batch["depth"].shape[-2:], mode="bilinear", align_corners=False
        )
        per_image, valid = evaluate_disparity(pred[:, 0], batch["depth"], cfg.eval.protocol, cfg.eval.alignment)
        acc.add(per_image, valid)
    student.train()
    acc.reduce()
    return acc.compute()


def _report(
    metrics: dict[str, Any],
    *,
    with_checkpoint: bool,
    rank: int,
    save_kwargs: dict[str, Any],
) -> None:
    if not with_checkpoint:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="dad_ray_ckpt_") as tmp:
        save_checkpoint(tmp, rank=rank, **save_kwargs)
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"checkpoint_step{metrics['step']:07d}",
        )
    # Ray Train V2's controller registers a reported checkpoint when it next polls the workers; a worker that dies
    # before that poll would be restarted from the previous checkpoint (or from step 0: Ray issue #46814). Block
    # until this checkpoint is committed, so "restart from the last checkpoint" means the one just written.
    ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg: ExperimentConfig = from_dict(ExperimentConfig, config["experiment"])
    run_dir: str = config["run_dir"]
    tb_dir: str | None = config.get("tensorboard_dir")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    setup_logging(rank=rank)
    device = ray.train.torch.get_device()
    seed_everything(cfg.train.seed * 1000 + rank)
    distill = cfg.loss.mode == "distill"

    student = build_student(cfg.model)
    teachers = TeacherPool(cfg.model.teachers, device, seed=cfg.train.seed * 1000 + rank) if distill else None
    feat_dims = teachers.dims if distill and cfg.loss.lambda_feat > 0 else []
    task = StudentTask(student, feat_dims).to(device)
    optimizer, scheduler = build_optimizer(task, cfg.optim)
    extra_modules = {"feat_proj": task.feat_proj}

    state = TrainState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state, extra = load_checkpoint(
                ckpt_dir,
                rank=rank,
                student=student,
                extra_modules=extra_modules,
                optimizer=optimizer,
                scheduler=scheduler,
            )
        if teachers is not None and "teachers" in extra:
            teachers.load_state_dict(extra["teachers"])
        logger.info("resumed from checkpoint at step %d (epoch %d)", state.step, state.epoch)

    micro_batch, grad_accum = resolve_batch_size(cfg, task, device)
    model = ray.train.torch.prepare_model(
        task, parallel_strategy_kwargs={"find_unused_parameters": len(set(feat_dims)) > 1}
    )
    model.train()
    monitor = Monitor(tb_dir, rank, cfg.optim.max_steps, state.step)
    node_ids = _gather_node_ids()  # every rank takes part in the gather
    journal = Journal(storage.join(run_dir, JOURNAL_FILE) if rank == 0 else None, state.step, node_ids)
    shard = ray.train.get_dataset_shard("train")

    def save_kwargs() -> dict[str, Any]:
        return {
            "student": student,
            "extra_modules": extra_modules,
            "optimizer": optimizer,
            "scheduler": scheduler,
            "state": state,
            "cfg": cfg,
            "extra_state": {"teachers": teachers.state_dict()} if teachers is not None else {},
        }

    micro = 0
    last_vis: dict[str, torch.Tensor] = {}
    while state.step < cfg.optim.max_steps:
        t_wait = time.perf_counter()
        n_batches = 0
        for batch in train_batches(shard, cfg.data, state.epoch, batch_size=micro_batch, device=device):
            n_batches += 1
            data_wait = time.perf_counter() - t_wait
            sync = (micro + 1) % grad_accum == 0
            no_sync = model.no_sync() if (world > 1 and not sync) else contextlib.nullcontext()
            with no_sync:
                with autocast_context(cfg, device):
                    parts, out, t_crop = compute_losses(model, teachers, batch, cfg, use_feat=bool(feat_dims))
                loss = parts["total"] / grad_accum
                loss.backward()
            monitor.add({f"loss/{k}": v.item() for k, v in parts.items()})
            monitor.add(scale_stats(out["crop"], "pred/student"))
            if t_crop is not None:
                monitor.add(scale_stats(t_crop, "pred/teacher"))
            monitor.step_done(batch["crop_image"].shape[0], data_wait)
            micro += 1
            if not sync:
                t_wait = time.perf_counter()
                continue

            if cfg.optim.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                monitor.add({"train/grad_norm": grad_norm.item()})
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            step = state.step
            journal.write(step, state.epoch, parts["total"].item())
            last_vis = {"image": batch["crop_image"], "student": out["crop"], "gt": batch["crop_depth"]}
            if t_crop is not None:
                last_vis["teacher"] = t_crop

            if step % cfg.train.log_every == 0:
                monitor.flush(step, group_lrs(optimizer), world)
            if cfg.train.image_every and step % cfg.train.image_every == 0:
                gt = last_vis["gt"]
                gt_disp = torch.where(gt > 0, 1.0 / gt.clamp_min(1e-6), torch.zeros_like(gt))
                monitor.image_grid(step, last_vis["image"], [last_vis.get("teacher"), last_vis["student"], gt_disp])
            if step % cfg.train.val_every == 0 or step == cfg.optim.max_steps:
                if _validate_and_report(
                    cfg, state, student, device, rank, monitor, save_kwargs, loss_value=parts["total"]
                ):
                    journal.checkpoint(step)
                monitor.sync()  # uploads when the run directory is a URI
                journal.sync()
            _maybe_inject_failure(cfg, run_dir, step, rank)
            if step >= cfg.optim.max_steps:
                break
            t_wait = time.perf_counter()
        if n_batches == 0:
            raise RuntimeError(
                f"rank {rank}: the training split '{cfg.data.train_split}' under {cfg.data.root} yielded no batch of "
                f"{micro_batch} (fewer samples per worker than the batch size?)"
            )
        state.epoch += 1
    monitor.close()
    journal.close()


def _gather_node_ids() -> list[str]:
    """The Ray node id of every rank, in rank order (rank 0's report is the one Ray keeps)."""
    node_id = ray.get_runtime_context().get_node_id()
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [node_id]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, node_id)
    return out


def _validate_and_report(cfg, state, student, device, rank, monitor, save_kwargs, loss_value) -> bool:
    """Validate, report to Ray Train (with a checkpoint every ``checkpoint_every`` steps and at the end); returns
    whether a checkpoint was reported (and committed)."""
    metrics = validate(student, cfg, device)
    state.val_round += 1
    state.best_abs_rel = min(state.best_abs_rel, metrics["abs_rel"])
    monitor.scalars(state.step, {f"val/{k}": v for k, v in metrics.items()})
    report = {f"val_{k}": v for k, v in metrics.items()}
    report.update(
        step=state.step,
        epoch=state.epoch,
        val_round=state.val_round,
        loss=float(loss_value.item()),
        best_val_abs_rel=state.best_abs_rel,
        node_ids=_gather_node_ids(),
        world_rank=rank,
    )
    if rank == 0:
        logger.info(
            "validation %d at step %d: abs_rel=%.4f d1=%.4f (%d images, %d without valid pixels)",
            state.val_round,
            state.step,
            metrics["abs_rel"],
            metrics["d1"],
            metrics["n_images"],
            metrics["n_invalid"],
        )
    with_ckpt = state.step % cfg.train.checkpoint_every == 0 or state.step == cfg.optim.max_steps
    _report(report, with_checkpoint=with_ckpt, rank=rank, save_kwargs=save_kwargs())
    return with_ckpt
