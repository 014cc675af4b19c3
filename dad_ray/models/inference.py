"""Inference: the official pre-processing, :func:`predict_disparity`, and the Ray Data actor :class:`DepthPredictor`.

Pre-processing follows Depth Anything V2's ``infer_image`` through the one set of evaluation resizes,
:mod:`dad_ray.data.resize` (shared with training validation): the image is resized so that both sides are at least
``input_size`` with the aspect ratio kept, each side a multiple of 14 (:func:`~dad_ray.data.resize.eval_size`);
bicubic (a = -0.75, no antialias, no clamp: the same kernel as the official ``cv2.INTER_CUBIC`` on float images, not
bit-identical to OpenCV), then ImageNet mean/std. The disparity is upsampled back to the image size by
:func:`~dad_ray.data.resize.resize_prediction` (bilinear, ``align_corners=True``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dad_ray.data.resize import eval_size, resize_input, resize_prediction
from dad_ray.models.registry import create_model
from dad_ray.models.weights import load_weights

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def network_input_size(height: int, width: int, input_size: int = 518) -> tuple[int, int]:
    """(H, W) of an image → the official network input (h, w): :func:`dad_ray.data.resize.eval_size`."""
    return eval_size(height, width, input_size)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" → cuda if available, else cpu; anything else is passed to ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def preprocess(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (B, H, W, 3) → float32 (B, 3, h, w): scaled to [0, 1], :func:`~dad_ray.data.resize.resize_input`,
    ImageNet-normalised."""
    x = resize_input(images.permute(0, 3, 1, 2).float() / 255.0, size)
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.inference_mode()
def predict_disparity(
    model: nn.Module, images: np.ndarray | torch.Tensor, input_size: int = 518, amp_dtype: torch.dtype | None = None
) -> np.ndarray:
    """uint8 RGB images (B, H, W, 3), all the same size → relative disparity (B, H, W) float32 numpy, at (H, W).

    Runs on the model's device in eval mode (the caller's train/eval mode is restored); ``amp_dtype`` (e.g.
    ``torch.bfloat16``, GPU) enables autocast, fp32 otherwise.
    """
    tensor = torch.as_tensor(images)
    if tensor.ndim != 4 or tensor.shape[-1] != 3 or tensor.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images (B, H, W, 3), got {tuple(tensor.shape)} {tensor.dtype}")
    device = next(model.parameters()).device
    height, width = tensor.shape[1:3]
    x = preprocess(tensor.to(device), network_input_size(height, width, input_size))
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            disparity = model(x)  # (B, h, w)
    finally:
        model.train(was_training)
    return resize_prediction(disparity, (height, width)).cpu().numpy().astype(np.float32, copy=False)


def _as_image_list(images) -> list[np.ndarray]:
    if isinstance(images, np.ndarray) and images.dtype != object:
        if images.ndim != 4:
            raise ValueError(f"expected images (B, H, W, 3), got an array of shape {images.shape}")
        return list(images)
    return [np.asarray(im) for im in images]


def _column(arrays: list[np.ndarray]) -> np.ndarray:
    """Stack equal shapes into (B, ...); otherwise an object array of per-row arrays (Ray's ragged tensors)."""
    if len({a.shape for a in arrays}) <= 1 and arrays:
        return np.stack(arrays)
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


class DepthPredictor:
    """A model ready for inference; call it directly or use it as a Ray Data ``map_batches`` actor class.

    ``predictor.predict(images)`` takes a list (or (B, H, W, 3) array) of uint8 RGB images of any sizes and returns
    one (H, W) float32 disparity per image, in order. Images are grouped by size and run ``batch_size`` at a time.

    ``predictor(batch)`` maps a Ray Data batch ``{"image": ..., other columns}`` to the same columns plus
    ``"disparity"`` ((B, H, W) when all sizes match, else an object array of (H_i, W_i) arrays); the image column is
    dropped unless ``keep_image``.
    """

    def __init__(
        self,
        model_name: str,
        weights: str | Path,
        input_size: int = 518,
        device: str | torch.device = "auto",
        batch_size: int = 4,
        amp_dtype: torch.dtype | None = None,
        image_column: str = "image",
        output_column: str = "disparity",
        keep_image: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        network_input_size(input_size, input_size, input_size)  # validates input_size
        self.device = resolve_device(device)
        self.model = create_model(model_name)
        self.report = load_weights(self.model, weights)
        self.model.eval().requires_grad_(False).to(self.device)
        self.input_size = input_size
        self.batch_size = batch_size
        self.amp_dtype = amp_dtype
        self.image_column = image_column
        self.output_column = output_column
        self.keep_image = keep_image
        logger.info("DepthPredictor %s on %s, input %d: %s", model_name, self.device, input_size, self.report)

    def predict(self, images: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
        images = _as_image_list(images)
        out: list[np.ndarray | None] = [None] * len(images)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(image.shape, []).append(i)
        for indices in by_size.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                batch = np.stack([images[i] for i in chunk])
                for i, d in zip(chunk, predict_disparity(self.model, batch, self.input_size, self.amp_dtype)):
                    out[i] = d
        return out  # type: ignore[return-value]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.image_column not in batch:
            raise KeyError(f"batch has no column {self.image_column!r}; columns: {sorted(batch)}")
        disparity = self.predict(batch[self.image_column])
        out = {k: v for k, v in batch.items() if k != self.image_column or self.keep_image}
        out[self.output_column] = _column(disparity)
        return out
