"""``data.batch_size: auto``: find the largest per-worker micro-batch that fits in GPU memory, keep the effective
batch with gradient accumulation."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from dad_ray.config import ExperimentConfig
from dad_ray.train.step import forward_backward, synthetic_batch
from dad_ray.train.task import TeacherPool

logger = logging.getLogger(__name__)

AUTO_TARGET_BATCH = 8  # per-worker effective batch that "auto" keeps (the paper's batch on one GPU)


def largest_fitting(fits: Callable[[int], bool], limit: int) -> int:
    """Largest b in [1, limit] with ``fits(b)``, assuming fits is monotone (doubling, then bisection). 0 if none."""
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:  # invariant: fits(lo), not fits(hi) (or hi beyond limit)
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def split_effective_batch(target: int, micro_max: int) -> tuple[int, int]:
    """(micro_batch, grad_accum) with micro_batch * grad_accum == target and micro_batch <= micro_max, largest
    micro-batch first."""
    for micro in range(min(target, micro_max), 0, -1):
        if target % micro == 0:
            return micro, target // micro
    raise ValueError(f"no micro-batch <= {micro_max} divides {target}")


def probe_fits(
    cfg: ExperimentConfig,
    task: torch.nn.Module,
    device: torch.device,
    teachers: TeacherPool | None,
    optimizer: torch.optim.Optimizer,
) -> Callable[[int], bool]:
    """``fits(b)``: whether the real step — :func:`~dad_ray.train.step.forward_backward` (every teacher in turn,
    the student, the losses, backward) on a synthetic batch of ``b`` at the config's shapes — runs without a CUDA
    out-of-memory error, with AdamW's two moment buffers allocated beside it when the optimizer has no state yet.

    The probe leaves no trace: gradients are dropped, buffers (e.g. BatchNorm statistics) restored, the RNGs forked,
    the teacher draw untouched (it iterates over the teachers instead of drawing).
    """
    use_feat = bool(getattr(task, "use_feat", False))  # the StudentTask knows whether L_feat is on
    indices = range(len(teachers.models)) if teachers is not None else [0]
    # teachers not loaded here (precomputed, or run in the data stage): their labels arrive as batch columns
    carried = tuple(i for i, m in enumerate(teachers.models) if m is None) if teachers is not None else ()
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def fits(b: int) -> bool:
        buffers = {name: buf.detach().clone() for name, buf in task.named_buffers()}
        moments = [] if optimizer.state else [torch.empty_like(p) for p in params for _ in range(2)]
        ok = True
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                batch = synthetic_batch(cfg, b, device, carried=carried)
                for index in indices:
                    forward_backward(task, teachers, batch, cfg, use_feat=use_feat, teacher_index=index)
                    task.zero_grad(set_to_none=True)
        except torch.OutOfMemoryError:
            ok = False
        finally:
            del moments
            task.zero_grad(set_to_none=True)
            with torch.no_grad():
                for name, buf in task.named_buffers():
                    buf.copy_(buffers[name])
            if device.type == "cuda":
                torch.cuda.empty_cache()
        return ok

    return fits


def resolve_batch_size(
    cfg: ExperimentConfig,
    task: torch.nn.Module,
    device: torch.device,
    teachers: TeacherPool | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[int, int]:
    """(micro_batch, grad_accum) for this worker: the configured values, or the probed ones for ``auto``
    (:func:`probe_fits`: the real step, before DDP wraps the task).

    The result keeps ~15 % headroom for DDP's gradient buckets and the allocator's fragmentation."""
    if cfg.data.batch_size != "auto":
        return int(cfg.data.batch_size), cfg.optim.grad_accum
    if device.type != "cuda":
        raise ValueError("data.batch_size=auto needs a GPU worker (train.use_gpu=true)")
    if optimizer is None:
        raise ValueError("data.batch_size=auto probes with the real step: pass the optimizer (and the teachers)")
    target = AUTO_TARGET_BATCH * cfg.optim.grad_accum
    largest = largest_fitting(probe_fits(cfg, task, device, teachers, optimizer), limit=target)
    if largest == 0:
        raise RuntimeError(f"not even a batch of 1 at crop {cfg.data.crop_size} fits in GPU memory")
    micro, accum = split_effective_batch(target, max(1, int(largest * 0.85)))
    logger.info(
        "batch_size=auto: largest fitting micro-batch %d → micro-batch %d x %d accumulation", largest, micro, accum
    )
    return micro, accum
