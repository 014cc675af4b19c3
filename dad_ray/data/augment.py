"""The paper's training augmentations for one sample (NumPy in, NumPy out; resizing with torch on CPU).

Order: horizontal flip (RGB, depth, mask together) -> colour jitter (RGB only, one draw per sample, so every view
sees the same colours) -> three geometric views cut from the same flipped, jittered source:

- shared-context crop: a square of random side in [min(min_crop, short side), short side] at a random position,
  resized to ``crop_size`` x ``crop_size`` (student and teacher both see it); with ``random_crop`` off, the whole
  image resized to ``crop_size`` x ``crop_size`` (the draws are still made, so the other views do not change);
- global view: the whole image resized to ``global_size`` (the student's input for the local-global loss);
- local patches: a ``rows x cols`` grid of overlapping SQUARE patches (aspect kept, so the teacher sees undistorted
  content), each resized to ``local_patch_size``, over the whole image (``local_source`` "image") or over the
  shared-context crop's source pixels (``"crop"``, the paper's implementation). The side is the smallest one for
  which neighbours overlap by at least ``local_overlap`` along both axes while the grid covers the region (clipped to
  its short side); positions are evenly spaced from edge to edge, rounded to whole source pixels. ``local_boxes``
  (y0, x0, y1, x1) are those pixel boxes in the whole image divided by (H, W, H, W): the same box, times
  (Gh, Gw, Gh, Gw), cuts patch n from the global view, whichever region the grid covers.

RGB is resized bilinearly with antialiasing and normalised with ImageNet mean/std. Depth is resized WITHOUT mixing
valid and invalid pixels: depth*mask and mask are resized the same way, the first divided by the second, and a pixel
is valid where the resized mask weight exceeds 0.5 (else depth 0, mask False). Valid neighbours are still averaged
with each other (across a depth edge too), as any bilinear resize does.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dad_ray.data.resize import eval_size, resize_input

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_MEAN_T = torch.from_numpy(IMAGENET_MEAN)[:, None, None]
_STD_T = torch.from_numpy(IMAGENET_STD)[:, None, None]
PATCH = 14


@dataclass(frozen=True)
class AugmentSpec:
    """The augmentation fields of :class:`~dad_ray.config.schema.DataConfig` (picklable, small)."""

    crop_size: int
    min_crop: int
    global_size: tuple[int, int]
    local_patch_size: int
    local_grid: tuple[int, int]
    local_overlap: float
    hflip: bool
    color_jitter: float
    local_source: str = "image"  # "image": patches of the whole image; "crop": of the shared-context crop
    random_crop: bool = True  # False: the shared-context view is the whole image (Table 2's baseline)

    @classmethod
    def from_config(cls, cfg) -> AugmentSpec:
        return cls(
            crop_size=cfg.crop_size,
            min_crop=cfg.min_crop,
            global_size=tuple(cfg.global_size),
            local_patch_size=cfg.local_patch_size,
            local_grid=tuple(cfg.local_grid),
            local_overlap=cfg.local_overlap,
            hflip=cfg.hflip,
            color_jitter=cfg.color_jitter,
            local_source=cfg.local_source,
            random_crop=cfg.random_crop,
        )


def sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """The augmentation randomness of one row: a pure function of (seed, epoch, key)."""
    return np.random.default_rng([int(seed), int(epoch), zlib.crc32(str(key).encode())])


def local_boxes_px(height: int, width: int, grid: tuple[int, int], overlap: float) -> np.ndarray:
    """(N, 4) int64 pixel boxes (y0, x0, y1, x1), row-major over the grid, of the square local patches."""
    rows, cols = grid
    side_y = height / (rows - (rows - 1) * overlap)
    side_x = width / (cols - (cols - 1) * overlap)
    side = int(np.ceil(min(max(side_y, side_x), height, width)))
    y0 = np.round(np.linspace(0, height - side, rows)).astype(np.int64)
    x0 = np.round(np.linspace(0, width - side, cols)).astype(np.int64)
    yy, xx = np.meshgrid(y0, x0, indexing="ij")
    yy, xx = yy.ravel(), xx.ravel()
    return np.stack([yy, xx, yy + side, xx + side], axis=1)


def local_patch_boxes(height: int, width: int, crop_box: tuple[int, int, int, int], spec: AugmentSpec) -> np.ndarray:
    """(N, 4) int64 source-pixel boxes (y0, x0, y1, x1) of the local patches in the whole (flipped) image: the
    :func:`local_boxes_px` grid over the whole image (``local_source`` "image"), or over the shared-context region
    ``crop_box`` (y0, x0, y1, x1), shifted by its corner (``"crop"``, the paper's reading). Either way the boxes are
    in whole-image pixels, so divided by (H, W, H, W) they cut the same content from the global view."""
    if spec.local_source == "image":
        return local_boxes_px(height, width, spec.local_grid, spec.local_overlap)
    cy0, cx0, cy1, cx1 = crop_box
    boxes = local_boxes_px(cy1 - cy0, cx1 - cx0, spec.local_grid, spec.local_overlap)
    return boxes + np.array([cy0, cx0, cy0, cx0], dtype=np.int64)


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) float -> (3, h, w), bilinear with antialiasing."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def resize_depth(depth: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W) depth + bool mask -> resized, never blending valid with invalid pixels (see the module docstring)."""
    if tuple(depth.shape) == tuple(size):
        return depth, mask
    m = mask.to(depth.dtype)
    both = torch.stack([depth * m, m])[None]
    out = F.interpolate(both, size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    weight = out[1]
    valid = weight > 0.5
    return torch.where(valid, out[0] / weight.clamp_min(1e-6), torch.zeros_like(weight)), valid


def normalize(image: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) in [0, 1] -> ImageNet-normalised."""
    return (image - _MEAN_T) / _STD_T


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    return image.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def normalize_uint8(image: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) uint8 (on any device) -> float32 ImageNet-normalised, on the same device."""
    mean = _MEAN_T.to(image.device)
    std = _STD_T.to(image.device)
    return (image.float().div_(255.0) - mean) / std


_GRAY = torch.tensor([0.299, 0.587, 0.114])


def _jitter(image: torch.Tensor, factors: np.ndarray) -> torch.Tensor:
    """Brightness b, contrast c, saturation s (each in [1 - strength, 1 + strength]), in this order, on (3, H, W) in
    [0, 1], clamped once at the end. The three steps compose into one affine colour map, applied in a single pass:
    brightness x -> b x; contrast x -> c (x - m) + m with m the mean gray of b x; saturation x -> s x + (1 - s) gray(x)
    (a 3x3 matrix M that keeps gray, so M 1 = 1): y = c b M x + (1 - c) m."""
    b, c, s = (float(f) for f in factors)
    m = b * float(torch.tensordot(_GRAY, image, dims=1).mean())
    sat = s * torch.eye(3) + (1.0 - s) * _GRAY[None, :].expand(3, 3)
    out = torch.tensordot(c * b * sat, image, dims=1)
    return out.add_((1.0 - c) * m).clamp_(0.0, 1.0)


def _views(src: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, 5, h, w) stacks of [R, G, B, depth * mask, mask] -> resized (image (N, 3), depth (N), mask (N)) in ONE
    interpolation: RGB bilinear with antialiasing, depth by the mask-weighted rule of :func:`resize_depth`."""
    if tuple(src.shape[-2:]) != tuple(size):
        src = F.interpolate(src, size=size, mode="bilinear", align_corners=False, antialias=True)
    weight = src[:, 4]
    valid = weight > 0.5
    depth = torch.where(valid, src[:, 3] / weight.clamp_min(1e-6), torch.zeros_like(weight))
    return src[:, :3], depth, valid


def _teacher_channels(maps: list[np.ndarray]) -> torch.Tensor:
    """(H, W) maps, NaN invalid -> (2 * len(maps), H, W): [value * valid, valid] per map."""
    extra = []
    for m in maps:
        t = torch.from_numpy(np.asarray(m, dtype=np.float32))
        valid = torch.isfinite(t).float()
        extra += [torch.nan_to_num(t, nan=0.0) * valid, valid]
    return torch.stack(extra)


def _teacher_views(
    crop_src: torch.Tensor, patches: torch.Tensor, order: list[int], spec: AugmentSpec
) -> dict[str, torch.Tensor]:
    """The precomputed teachers' channels (5 + 2n, 6 + 2n for the n-th index of ``order``) of the crop source
    (1, K, ch, cw) and the patch sources (N, K, s, s) → ``teacher{i}_crop`` (C, C), ``_crop_mask``, ``_local``
    (N, P, P), ``_local_mask``."""
    out = {}
    for n, i in enumerate(order):
        pair = slice(5 + 2 * n, 7 + 2 * n)
        crop, crop_valid = _masked_view(crop_src[:, pair], (spec.crop_size,) * 2)
        out[f"teacher{i}_crop"], out[f"teacher{i}_crop_mask"] = crop[0], crop_valid[0]
        local, local_valid = _masked_view(patches[:, pair], (spec.local_patch_size,) * 2)
        out[f"teacher{i}_local"], out[f"teacher{i}_local_mask"] = local, local_valid
    return out


def _masked_view(pair: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2, h, w) stacks of [value * valid, valid] -> resized (value (N, H, W), valid (N, H, W)) by the rule of
    :func:`resize_depth` (the same interpolation as the image and depth views of :func:`_views`)."""
    if tuple(pair.shape[-2:]) != tuple(size):
        pair = F.interpolate(pair, size=size, mode="bilinear", align_corners=False, antialias=True)
    weight = pair[:, 1]
    valid = weight > 0.5
    return torch.where(valid, pair[:, 0] / weight.clamp_min(1e-6), torch.zeros_like(weight)), valid


IMAGE_COLUMNS = ("crop_image", "global_image", "local_images")


def augment_sample(
    image: np.ndarray,
    depth: np.ndarray,
    spec: AugmentSpec,
    rng: np.random.Generator,
    *,
    uint8_images: bool = False,
    teachers: dict[int, np.ndarray] | None = None,
) -> dict:
    """One training row (fixed shapes; see :func:`dad_ray.data.pipeline.train_dataset`).

    Images are float32 ImageNet-normalised, or with ``uint8_images`` the same [0, 1] values rounded to uint8 (the
    pipeline's 4x smaller transport format; :func:`normalize_uint8` finishes the job on the consumer).

    ``teachers``: precomputed teacher maps by teacher index, (H, W) float32 disparity with NaN where invalid
    (:mod:`dad_ray.data.teacher_columns`). Each is flipped, cropped and resized with the depth: the same source
    boxes, the same interpolation, the same rule that never blends valid with invalid pixels; the row then carries
    ``teacher{i}_crop`` (C, C), ``teacher{i}_crop_mask``, ``teacher{i}_local`` (N, P, P), ``teacher{i}_local_mask``.
    The random draws are the same with or without them.
    """
    h, w = depth.shape
    # All random draws first, in a fixed order (flip, crop side, crop position, jitter): switching jitter on or
    # off leaves the geometry of a row unchanged.
    flip = bool(rng.random() < 0.5) and spec.hflip
    short = min(h, w)
    side = int(rng.integers(min(spec.min_crop, short), short + 1))
    y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    factors = rng.uniform(1.0 - spec.color_jitter, 1.0 + spec.color_jitter, size=3)

    img = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    dep = torch.from_numpy(np.array(depth, dtype=np.float32))
    if spec.color_jitter > 0:
        img = _jitter(img, factors)
    mask = (dep > 0).float()
    src = torch.cat([img, (dep * mask)[None], mask[None]])  # (5, H, W): every geometric op moves all five together
    order = sorted(teachers or {})
    if order:  # two more channels per precomputed teacher: value * valid, valid (resized as depth and mask are)
        src = torch.cat([src, _teacher_channels([teachers[i] for i in order])])
    if flip:
        src = src.flip(-1)

    ch, cw = (side, side) if spec.random_crop else (h, w)  # the shared-context region (the whole image if no crop)
    y0, x0 = (y0, x0) if spec.random_crop else (0, 0)
    crop_src = src[None, :, y0 : y0 + ch, x0 : x0 + cw]
    crop_img, crop_dep, crop_mask = _views(crop_src[:, :5], (spec.crop_size,) * 2)
    glob_img, glob_dep, glob_mask = _views(src[None, :5], tuple(spec.global_size))
    boxes = local_patch_boxes(h, w, (y0, x0, y0 + ch, x0 + cw), spec)  # all the same square side
    patches = torch.stack([src[:, by0:by1, bx0:bx1] for by0, bx0, by1, bx1 in boxes.tolist()])
    loc_img, loc_dep, loc_mask = _views(patches[:, :5], (spec.local_patch_size,) * 2)
    scale = np.array([h, w, h, w], dtype=np.float32)
    finish = _to_uint8 if uint8_images else normalize
    carried = _teacher_views(crop_src, patches, order, spec)
    return {
        **{k: v.numpy() for k, v in carried.items()},
        **{
            "crop_image": finish(crop_img[0]).numpy(),
            "crop_depth": crop_dep[0].numpy(),
            "crop_mask": crop_mask[0].numpy(),
            "global_image": finish(glob_img[0]).numpy(),
            "global_depth": glob_dep[0].numpy(),
            "global_mask": glob_mask[0].numpy(),
            "local_images": finish(loc_img).numpy(),
            "local_depth": loc_dep.numpy(),
            "local_mask": loc_mask.numpy(),
            "local_boxes": boxes.astype(np.float32) / scale,
        },
    }


def eval_image(image: np.ndarray, input_size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, h, w) float32 ImageNet-normalised at :func:`~dad_ray.data.resize.eval_size`, resized
    by :func:`~dad_ray.data.resize.resize_input` (the one evaluation resize: bicubic, no antialias, no clamp)."""
    h, w = image.shape[:2]
    img = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    img = resize_input(img[None], eval_size(h, w, input_size))[0]
    return normalize(img).numpy()
