"""Distill-Any-Depth losses: normalisations, L_Dis, shared-context / local-global / feature / gradient, supervised."""

from dad_ray.losses.distill import (
    crop_boxes,
    dis_loss,
    dis_loss_per_image,
    distill_losses,
    feature_loss,
    gradient_loss,
    local_global_loss,
    masked_mean,
    resample_tokens,
)
from dad_ray.losses.normalize import LEVELS, MAD_EPS, context_ids, context_medians, levels_of, normalize
from dad_ray.losses.supervised import disparity_target, silog_loss, ssi_loss, supervised_losses

__all__ = [
    "LEVELS",
    "MAD_EPS",
    "context_ids",
    "context_medians",
    "crop_boxes",
    "dis_loss",
    "dis_loss_per_image",
    "disparity_target",
    "distill_losses",
    "feature_loss",
    "gradient_loss",
    "levels_of",
    "local_global_loss",
    "masked_mean",
    "normalize",
    "resample_tokens",
    "silog_loss",
    "ssi_loss",
    "supervised_losses",
]
