"""Learning-rate schedule as a pure function of the optimizer step, and AdamW with encoder/decoder groups."""

from __future__ import annotations

import math

import torch

from dad_ray.config import OptimConfig

ENCODER_PREFIX = "pretrained."  # official DAv2 layout: encoder params live under `pretrained.`


def lr_factor(step: int, cfg: OptimConfig) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based): linear warm-up, then poly/cosine/constant decay.

    Warm-up: ``(step + 1) / warmup_steps`` for ``step < warmup_steps``. Decay over the remaining steps with progress
    ``p = (step - warmup) / (max_steps - warmup)`` in [0, 1]: poly ``(1 - p) ** power``, cosine
    ``0.5 (1 + cos(pi p))``; the result never goes below ``min_lr_ratio``.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    if cfg.schedule == "poly":
        decay = (1.0 - progress) ** cfg.poly_power
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay


def param_groups(named_params, cfg: OptimConfig) -> list[dict]:
    """AdamW groups selected by parameter name: encoder (``pretrained.*``) at ``lr * encoder_lr_mult``, the rest at
    ``lr``; every parameter decays by ``weight_decay`` (the paper's and DAv2's AdamW), unless ``decay_exclude``: then
    biases and norm/scale parameters (ndim <= 1) and position/class/mask tokens get none (groups ``*/no_decay``)."""
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        bare = name.removeprefix("module.")
        part = "encoder" if bare.startswith(ENCODER_PREFIX) or f".{ENCODER_PREFIX}" in bare else "decoder"
        no_decay = cfg.decay_exclude and (p.ndim <= 1 or bare.endswith(("pos_embed", "cls_token", "mask_token")))
        groups.setdefault((part, no_decay), []).append(p)
    out = []
    for (part, no_decay), params in sorted(groups.items()):
        lr = cfg.lr * (cfg.encoder_lr_mult if part == "encoder" else 1.0)
        out.append(
            {
                "params": params,
                "lr": lr,
                "initial_lr": lr,
                "weight_decay": 0.0 if no_decay else cfg.weight_decay,
                "name": f"{part}{'/no_decay' if no_decay else ''}",
            }
        )
    return out


def build_optimizer(
    module: torch.nn.Module, cfg: OptimConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over :func:`param_groups` and a LambdaLR that applies :func:`lr_factor` to every group. The fused
    AdamW kernel (one launch for every parameter) when the parameters are on CUDA (:func:`use_fused`); PyTorch's
    default implementation elsewhere, so CPU runs keep their numbers."""
    groups = param_groups(module.named_parameters(), cfg)
    fused = use_fused([p for g in groups for p in g["params"]])
    optimizer = torch.optim.AdamW(groups, betas=cfg.betas, **({"fused": True} if fused else {}))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
    return optimizer, scheduler


def use_fused(params: list[torch.Tensor]) -> bool:
    """Whether AdamW should use its fused kernel: every parameter on a CUDA device (build the optimizer after the
    module moved to its device)."""
    return bool(params) and all(p.device.type == "cuda" for p in params)


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Current lr per named group family (encoder / decoder), for logging — by name, never by index."""
    out: dict[str, float] = {}
    for group in optimizer.param_groups:
        out.setdefault(group["name"].split("/")[0], group["lr"])
    return out
