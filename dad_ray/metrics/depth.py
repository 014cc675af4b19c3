"""Per-image least-squares alignment, depth metrics, and an exact (sum/count) accumulator across workers.

Shapes: maps (B, H, W), masks (B, H, W) bool. Metrics are computed per image and then averaged over images (the
convention of Marigold's evaluation code); all statistics in float64.
"""

from __future__ import annotations

import logging
import math

import torch

logger = logging.getLogger(__name__)

METRIC_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "d1", "d2", "d3")
LOWER_IS_BETTER = {"abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog"}
DEGENERATE_REL = 1e-12  # n·Σx² − (Σx)² ≤ this · n·Σx²: the prediction is constant over the image


def fit_scale_shift(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares (s, t) minimising Σ_valid (s·pred + t − target)² per image: (B, H, W) ×3 → s (B,), t (B,) float64.

    Closed form in float64. Degenerate images: no valid pixel → s = 1, t = 0; a prediction constant over the valid
    pixels (including a single valid pixel) → s = 1, t = mean(target − pred) (the best shift at unit scale).
    """
    if pred.shape != target.shape or pred.shape != mask.shape:
        raise ValueError(f"pred {tuple(pred.shape)}, target {tuple(target.shape)}, mask {tuple(mask.shape)} differ")
    b = pred.shape[0]
    m = mask.reshape(b, -1)
    x = torch.where(m, pred.reshape(b, -1).double(), torch.zeros((), dtype=torch.float64, device=pred.device))
    y = torch.where(m, target.reshape(b, -1).double(), torch.zeros((), dtype=torch.float64, device=pred.device))
    n = m.sum(-1).double()
    sx, sy, sxx, sxy = x.sum(-1), y.sum(-1), (x * x).sum(-1), (x * y).sum(-1)
    det = n * sxx - sx * sx
    ok = det > DEGENERATE_REL * n * sxx
    s = torch.where(ok, (n * sxy - sx * sy) / torch.where(ok, det, torch.ones_like(det)), torch.ones_like(det))
    t = (sy - s * sx) / n.clamp_min(1)
    return s, t


def align_scale_shift(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W) → s·pred + t per image (s, t from :func:`fit_scale_shift`), float64 (B, H, W)."""
    s, t = fit_scale_shift(pred, target, mask)
    return s.view(-1, 1, 1) * pred.double() + t.view(-1, 1, 1)


def per_image_metrics(
    pred_depth: torch.Tensor, gt_depth: torch.Tensor, mask: torch.Tensor
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Depth metrics of every image: (B, H, W) ×3 → ({key: (B,) float64}, valid (B,) bool).

    Over the pixels with mask & gt > 0 & pred > 0 (both finite): abs_rel = mean |d − d*| / d*; sq_rel = mean
    (d − d*)² / d*; rmse = sqrt(mean (d − d*)²); rmse_log = sqrt(mean (ln d − ln d*)²); log10 = mean |log10 d −
    log10 d*|; silog = 100·sqrt(mean e² − (mean e)²) with e = ln d − ln d* (BTS/Marigold convention, not DAv2's
    λ = 0.5 training loss); d_k = fraction with max(d/d*, d*/d) < 1.25^k. Images without a valid pixel get 0 for
    every metric and valid False.
    """
    if pred_depth.shape != gt_depth.shape or pred_depth.shape != mask.shape or pred_depth.ndim != 3:
        raise ValueError(
            f"pred_depth {tuple(pred_depth.shape)}, gt_depth {tuple(gt_depth.shape)}, mask {tuple(mask.shape)} must "
            "be one (B, H, W) shape"
        )
    b = pred_depth.shape[0]
    d = pred_depth.reshape(b, -1).double()
    g = gt_depth.reshape(b, -1).double()
    m = mask.reshape(b, -1) & torch.isfinite(d) & torch.isfinite(g) & (g > 0) & (d > 0)
    d = torch.where(m, d, torch.ones_like(d))
    g = torch.where(m, g, torch.ones_like(g))
    n = m.sum(-1)
    nc = n.clamp_min(1).double()

    def mean(x: torch.Tensor) -> torch.Tensor:
        return (x * m).sum(-1) / nc

    diff = d - g
    e = torch.log(d) - torch.log(g)
    ratio = torch.maximum(d / g, g / d)
    out = {
        "abs_rel": mean(diff.abs() / g),
        "sq_rel": mean(diff.square() / g),
        "rmse": mean(diff.square()).sqrt(),
        "rmse_log": mean(e.square()).sqrt(),
        "log10": mean((torch.log10(d) - torch.log10(g)).abs()),
        "silog": 100.0 * (mean(e.square()) - mean(e).square()).clamp_min(0).sqrt(),
        "d1": mean((ratio < 1.25).double()),
        "d2": mean((ratio < 1.25**2).double()),
        "d3": mean((ratio < 1.25**3).double()),
    }
    valid = n > 0
    return {k: torch.where(valid, v, torch.zeros_like(v)) for k, v in out.items()}, valid


class MetricAccumulator:
    """Sums of per-image metrics and image counts, reduced exactly across workers (sums and counts, never means).

    ``add(per_image, valid)`` takes the output of :func:`per_image_metrics`; ``reduce()`` all-reduces (SUM) when
    ``torch.distributed`` is initialised (call it once, on every rank); ``compute()`` → {metric: mean over valid
    images, "n_images": images seen (valid or not), "n_invalid": images without a valid pixel}. Metrics are NaN when
    no image was valid (and a warning is logged).
    """

    def __init__(self, keys: tuple[str, ...] = METRIC_KEYS) -> None:
        self.keys = tuple(keys)
        self.sums = torch.zeros(len(self.keys), dtype=torch.float64)
        self.n_valid = 0
        self.n_invalid = 0

    def add(self, per_image: dict[str, torch.Tensor], valid: torch.Tensor) -> None:
        missing = [k for k in self.keys if k not in per_image]
        if missing:
            raise KeyError(f"per-image metrics lack {missing}; got {sorted(per_image)}")
        valid = torch.as_tensor(valid, dtype=torch.bool).cpu()
        values = torch.stack([torch.as_tensor(per_image[k]).double().cpu().reshape(-1) for k in self.keys])
        if values.shape[1] != valid.numel():
            raise ValueError(f"{values.shape[1]} per-image values but {valid.numel()} valid flags")
        self.sums += torch.where(valid, values, torch.zeros_like(values)).sum(-1)
        self.n_valid += int(valid.sum())
        self.n_invalid += int((~valid).sum())

    def merge(self, other: MetricAccumulator) -> MetricAccumulator:
        if other.keys != self.keys:
            raise ValueError(f"cannot merge accumulators of keys {other.keys} into {self.keys}")
        self.sums += other.sums
        self.n_valid += other.n_valid
        self.n_invalid += other.n_invalid
        return self

    def reduce(self) -> None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        state = torch.cat([self.sums, torch.tensor([self.n_valid, self.n_invalid], dtype=torch.float64)])
        state = state.to(device) if device is not None else state
        dist.all_reduce(state, op=dist.ReduceOp.SUM)
        state = state.cpu()
        self.sums = state[: len(self.keys)].clone()
        self.n_valid, self.n_invalid = int(round(state[-2].item())), int(round(state[-1].item()))

    def compute(self) -> dict[str, float]:
        if self.n_valid == 0:
            logger.warning("no image with a valid pixel (%d images without one): metrics are NaN", self.n_invalid)
        means = (self.sums / self.n_valid).tolist() if self.n_valid else [math.nan] * len(self.keys)
        out: dict[str, float] = dict(zip(self.keys, means))
        out["n_images"] = self.n_valid + self.n_invalid
        out["n_invalid"] = self.n_invalid
        return out


def depth_metrics(pred_depth: torch.Tensor, gt_depth: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """(B, H, W) ×3 → {metric: mean over images with a valid pixel, "n_images", "n_invalid"} (see per_image_metrics)."""
    acc = MetricAccumulator()
    acc.add(*per_image_metrics(pred_depth, gt_depth, mask))
    return acc.compute()
