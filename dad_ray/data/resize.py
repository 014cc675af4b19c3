"""The evaluation resizes, defined once: network input size, image → network input, prediction → ground truth.

Every evaluation path uses these three functions — training validation (the image resized in the Ray Data
pipeline by :func:`dad_ray.data.augment.eval_image`, the prediction upsampled in the worker by
:func:`dad_ray.metrics.evaluate_prediction`), the final evaluation and ``jobs/evaluate.py`` / ``jobs/predict.py``
(:func:`dad_ray.models.predict_disparity`) — so a checkpoint gets the same metrics whichever path evaluates it.
They follow Depth Anything V2's ``infer_image``:

- :func:`eval_size`: scale so that both sides are at least ``input_size`` with the aspect ratio kept
  ("lower_bound"), each side rounded to the nearest multiple of 14 (half to even, like ``np.round``) and raised to
  the next multiple when that falls below ``input_size``;
- :func:`resize_input`: bicubic (a = -0.75, no antialias) on [0, 1] floats, **not clamped** — the official
  ``cv2.resize(INTER_CUBIC)`` of a float image keeps its overshoot, and clamping changes the network's input;
- :func:`resize_prediction`: bilinear with ``align_corners=True`` back to the image (= ground-truth) size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PATCH = 14  # ViT patch size of every Depth Anything model


def eval_size(height: int, width: int, input_size: int) -> tuple[int, int]:
    """(H, W) of an image → the network input (h, w): lower-bound keep-aspect, multiples of 14."""
    if input_size <= 0 or input_size % PATCH:
        raise ValueError(f"input_size must be a positive multiple of {PATCH}, got {input_size}")
    scale = max(input_size / height, input_size / width)

    def constrain(x: float) -> int:
        y = int(np.round(x / PATCH) * PATCH)
        return int(np.ceil(x / PATCH) * PATCH) if y < input_size else y

    return constrain(scale * height), constrain(scale * width)


def resize_input(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """float (B, 3, H, W) in [0, 1] → float (B, 3, h, w): bicubic, no antialias, no clamp (unchanged at its size)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=tuple(size), mode="bicubic", align_corners=False, antialias=False)


def resize_prediction(pred: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """float (B, h, w) prediction at the network input → float32 (B, H, W): bilinear, ``align_corners=True``."""
    if pred.ndim != 3:
        raise ValueError(f"expected a prediction (B, h, w), got shape {tuple(pred.shape)}")
    return F.interpolate(pred[:, None].float(), size=tuple(size), mode="bilinear", align_corners=True)[:, 0]
