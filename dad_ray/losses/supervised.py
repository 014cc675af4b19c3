"""Supervised fine-tuning losses on ground-truth depth: SSI on disparity (+ gradient matching) and SILog.

Shapes: predictions and ground truth (B, H, W) float, masks (B, H, W) bool; ground truth is metric depth with 0 (or
non-finite) = missing, and only pixels with mask & finite gt > 0 count.
"""

from __future__ import annotations

import torch

from dad_ray.config.schema import LossConfig
from dad_ray.losses.distill import dis_loss, gradient_loss, masked_mean

LOG_EPS = 1e-6


def _gt_valid(gt_depth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if gt_depth.shape != mask.shape:
        raise ValueError(f"gt_depth {tuple(gt_depth.shape)} and mask {tuple(mask.shape)} differ in shape")
    return mask & torch.isfinite(gt_depth) & (gt_depth > 0)


def disparity_target(gt_depth: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W) depth in m → (1/depth on valid pixels else 0, valid mask); float32, or float64 for float64 depth
    (the evaluation's precision)."""
    valid = _gt_valid(gt_depth, mask)
    gt = gt_depth if gt_depth.dtype == torch.float64 else gt_depth.float()
    return torch.where(valid, 1.0 / torch.where(valid, gt, torch.ones_like(gt)), torch.zeros_like(gt)), valid


def ssi_loss(pred_disp: torch.Tensor, gt_depth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scale-and-shift-invariant loss on disparity, scalar: pred_disp (B, H, W) vs 1/gt_depth on valid pixels.

    Alignment by MiDaS's median / mean-absolute-deviation normalisation of both maps per image (not least squares) —
    i.e. L_Dis with the ``global`` normalisation against the ground-truth disparity.
    """
    target, valid = disparity_target(gt_depth, mask)
    return dis_loss(pred_disp, target, valid, "global")


def silog_loss(pred_depth: torch.Tensor, gt_depth: torch.Tensor, mask: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """Scale-invariant log loss (DAv2's metric training convention), scalar; pred_depth is metric depth (B, H, W).

    Per image sqrt(mean e² − λ·(mean e)²), e = ln(pred) − ln(gt) over valid pixels (pred clamped to ≥ 1e-6), then the
    mean over images with a valid pixel. (DAv2's own SiLogLoss pools the pixels of the whole batch; per image here
    keeps images of different valid area equally weighted, like every other loss in this package.)
    """
    valid = _gt_valid(gt_depth, mask)
    b = pred_depth.shape[0]
    gt = torch.where(valid, gt_depth.float(), torch.ones_like(gt_depth, dtype=torch.float32))
    pred = torch.where(valid, pred_depth.float(), torch.ones_like(gt))
    e = (torch.log(pred.clamp_min(LOG_EPS)) - torch.log(gt)) * valid
    n = valid.reshape(b, -1).sum(-1)
    mean_e = e.reshape(b, -1).sum(-1) / n.clamp_min(1)
    mean_e2 = e.square().reshape(b, -1).sum(-1) / n.clamp_min(1)
    per_image = torch.sqrt((mean_e2 - lam * mean_e.square()).clamp_min(1e-12))
    return masked_mean(per_image, n > 0)


def supervised_losses(
    pred: torch.Tensor, gt_depth: torch.Tensor, mask: torch.Tensor, cfg: LossConfig
) -> dict[str, torch.Tensor]:
    """Supervised parts and total, each a scalar tensor.

    ``cfg.supervised_loss == "ssi"``: the model output is relative disparity → {"ssi", "grad", "total" = ssi +
    cfg.supervised_grad_weight · grad}, grad = :func:`gradient_loss` (global normalisation) against 1/gt.
    ``"silog"``: the model output is treated as **metric depth** → {"silog", "grad" (0.0, not used), "total" = silog}
    with λ = ``cfg.silog_lambda``.
    """
    if cfg.supervised_loss == "silog":
        silog = silog_loss(pred, gt_depth, mask, cfg.silog_lambda)
        return {"silog": silog, "grad": torch.zeros((), device=silog.device), "total": silog}
    if cfg.supervised_loss != "ssi":
        raise ValueError(f"loss.supervised_loss must be 'ssi' or 'silog', got {cfg.supervised_loss!r}")
    target, valid = disparity_target(gt_depth, mask)
    ssi = dis_loss(pred, target, valid, "global")
    zero = torch.zeros((), device=ssi.device)
    grad = gradient_loss(pred, target, valid, "global") if cfg.supervised_grad_weight > 0 else zero
    return {"ssi": ssi, "grad": grad, "total": ssi + cfg.supervised_grad_weight * grad}
