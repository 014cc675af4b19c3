"""``data.batch_size: auto``: find the largest per-worker micro-batch that fits in GPU memory, keep the effective
batch with gradient accumulation."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from dad_ray.config import ExperimentConfig

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


def _probe_fits(cfg: ExperimentConfig, task: torch.nn.Module, device: torch.device) -> Callable[[int], bool]:
    c = cfg.data.crop_size
    gh, gw = cfg.data.global_size

    def fits(b: int) -> bool:
        try:
            crop = torch.randn(b, 3, c, c, device=device)
            glob = torch.randn(b, 3, gh, gw, device=device) if cfg.loss.lambda_lg > 0 else None
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                out = task(crop, glob)
                loss = sum(v.float().mean() for v in out.values())
            loss.backward()
            ok = True
        except torch.OutOfMemoryError:
            ok = False
        task.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        return ok

    return fits


def resolve_batch_size(cfg: ExperimentConfig, task: torch.nn.Module, device: torch.device) -> tuple[int, int]:
    """(micro_batch, grad_accum) for this worker: the configured values, or the probed ones for ``auto``.

    The probe leaves ~15 % headroom for the teacher activations and the allocator's fragmentation."""
    if cfg.data.batch_size != "auto":
        return int(cfg.data.batch_size), cfg.optim.grad_accum
    if device.type != "cuda":
        raise ValueError("data.batch_size=auto needs a GPU worker (train.use_gpu=true)")
    target = AUTO_TARGET_BATCH * cfg.optim.grad_accum
    largest = largest_fitting(_probe_fits(cfg, task, device), limit=target)
    if largest == 0:
        raise RuntimeError(f"not even a batch of 1 at crop {cfg.data.crop_size} fits in GPU memory")
    micro, accum = split_effective_batch(target, max(1, int(largest * 0.85)))
    logger.info(
        "batch_size=auto: largest fitting micro-batch %d → micro-batch %d x %d accumulation", largest, micro, accum
    )
    return micro, accum
