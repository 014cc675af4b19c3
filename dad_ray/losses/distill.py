"""Distill-Any-Depth losses (reference/METHOD.md): L_Dis, shared-context, local-global, feature, gradient, total.

Maps are (B, H, W) float disparities, masks (B, H, W) bool. Every function is vectorised over the batch, the
contexts and the local patches, computes its statistics in float32 (bf16 autocast safe), detaches the teacher, and
returns a scalar that is the mean over *valid* items (an image with no valid pixel contributes nothing; when nothing is
valid the result is 0 and still connected to the student's graph, so ``backward`` works on every rank).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dad_ray.config.schema import LossConfig
from dad_ray.losses.normalize import Normalization, context_ids, levels_of, normalize, normalize_contexts


def roi_align(*args, **kwargs) -> torch.Tensor:
    """``torchvision.ops.roi_align``, imported on first use: importing torchvision imports ``torch._dynamo`` (~1.5 s
    per cold process on 2 cores), which the processes that only reference the losses (the metrics of a Tune trial,
    the Ray Train controller) never need."""
    from torchvision.ops import roi_align as _roi_align

    return _roi_align(*args, **kwargs)


def _check_maps(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> None:
    if student.ndim != 3 or student.shape != teacher.shape or student.shape != mask.shape:
        raise ValueError(
            f"expected student, teacher and mask of one shape (B, H, W), got {tuple(student.shape)}, "
            f"{tuple(teacher.shape)}, {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool, got {mask.dtype}")


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (B,) over ``valid`` (B,) bool; 0 (still in the graph of ``values``) when none is valid."""
    return torch.where(valid, values, torch.zeros_like(values)).sum() / valid.sum().clamp_min(1)


def dis_loss_per_image(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, normalization: Normalization = "hybrid"
) -> tuple[torch.Tensor, torch.Tensor]:
    """L_Dis of every image: student, teacher (B, H, W), mask (B, H, W) bool → values (B,) float32, valid (B,) bool.

    value_b = (1/M_b) Σ_i (1/|U_i|) Σ_{u∋i} |N_u(d^s)_i − N_u(d^t)_i| over the M_b valid pixels, where the contexts
    U_i of pixel i are cut from the **teacher's** disparity range (hybrid: S ∈ {1, 2, 4}, local: S = 4, global: the
    whole image; see :mod:`dad_ray.losses.normalize`); ``none`` is plain L1. Images without a valid pixel have
    value 0 and valid False.
    """
    _check_maps(student, teacher, mask)
    b = student.shape[0]
    teacher = teacher.detach()
    m = mask.reshape(b, -1)
    n_valid = m.sum(-1)  # (B,)
    if normalization == "none":
        s = torch.where(m, student.reshape(b, -1).float(), torch.zeros((), device=student.device))
        t = torch.where(m, teacher.reshape(b, -1).float(), torch.zeros((), device=student.device))
        per_pixel = (s - t).abs()  # (B, P), 0 at invalid pixels
    else:
        levels = levels_of(normalization)
        ids = context_ids(teacher.reshape(b, -1), m, levels)  # (B, L, P)
        ns = normalize_contexts(student.reshape(b, -1), m, ids, levels)  # (B, L, P)
        nt = normalize_contexts(teacher.reshape(b, -1), m, ids, levels)
        per_pixel = (ns - nt).abs().mean(1)  # every valid pixel is in exactly one context per level
    values = (per_pixel * m).sum(-1) / n_valid.clamp_min(1)
    return values, n_valid > 0


def dis_loss(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, normalization: Normalization = "hybrid"
) -> torch.Tensor:
    """L_Dis, scalar: the mean over valid images of :func:`dis_loss_per_image` (shapes (B, H, W))."""
    return masked_mean(*dis_loss_per_image(student, teacher, mask, normalization))


def gradient_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor,
    normalization: Normalization = "global",
    scales: int = 4,
) -> torch.Tensor:
    """MiDaS multi-scale gradient matching, scalar; student, teacher (B, H, W), mask (B, H, W) bool.

    R = N(d^s) − N(d^t) with the per-image ``global`` normalisation (or the raw difference for ``none``; the
    context-wise hybrid/local forms give no single residual per pixel and are rejected). For each scale k < ``scales``
    the maps are sub-sampled by striding with step 2^k (as MiDaS) and an image's value is
    (Σ |∂x R| + Σ |∂y R|) / M_k over neighbour pairs whose two pixels are valid, M_k = valid pixels at that scale
    (MiDaS's divisor). Result = mean over images with a valid pixel of Σ_k value_k.
    """
    _check_maps(student, teacher, mask)
    if normalization not in ("global", "none"):
        raise ValueError(f"gradient_loss normalization must be 'global' or 'none', got {normalization!r}")
    if scales < 1:
        raise ValueError(f"scales must be >= 1, got {scales}")
    residual = normalize(student, mask, normalization)[:, 0] - normalize(teacher.detach(), mask, normalization)[:, 0]
    total = torch.zeros(student.shape[0], device=student.device)
    for k in range(scales):  # a fixed handful of scales, each vectorised over the batch
        step = 2**k
        r, m = residual[:, ::step, ::step], mask[:, ::step, ::step]
        mx = m[:, :, 1:] & m[:, :, :-1]
        my = m[:, 1:, :] & m[:, :-1, :]
        gx = ((r[:, :, 1:] - r[:, :, :-1]).abs() * mx).sum((1, 2))
        gy = ((r[:, 1:, :] - r[:, :-1, :]).abs() * my).sum((1, 2))
        total = total + (gx + gy) / m.sum((1, 2)).clamp_min(1)
    return masked_mean(total, mask.flatten(1).any(-1))


def feature_loss(f_student: torch.Tensor, f_teacher: torch.Tensor, margin: float = 0.85) -> torch.Tensor:
    """Feature alignment (Depth Anything), scalar: f_student, f_teacher (B, N, C) patch tokens.

    Mean of (1 − cos(f^s, f^t)) over the tokens of the whole batch whose cosine is ≤ ``margin``; tokens already
    more similar than the margin are ignored (excluded from the mean). 0 (with grad) when every token is ignored.
    """
    if f_student.ndim != 3 or f_student.shape != f_teacher.shape:
        raise ValueError(
            f"expected features of one shape (B, N, C), got {tuple(f_student.shape)} and {tuple(f_teacher.shape)}"
        )
    cos = F.cosine_similarity(f_student.float(), f_teacher.detach().float(), dim=-1, eps=1e-8)  # (B, N)
    keep = cos.detach() <= margin
    return ((1.0 - cos) * keep).sum() / keep.sum().clamp_min(1)


def resample_tokens(
    tokens: torch.Tensor,
    grid: tuple[int, int],
    extent: tuple[float, float],
    out_grid: tuple[int, int],
) -> torch.Tensor:
    """Tokens (B, gh * gw, C) on a ``grid`` (gh, gw) whose first ``extent`` (eh, ew) cells cover the image (fewer than
    the grid where a CNN padded its input) → (B, oh * ow, C) on ``out_grid`` covering the same image (the teacher's).

    Each output cell is the mean of bilinear samples of the input map over the cell's area
    (``torchvision.ops.roi_align``, ``aligned=True``, adaptive sample count): an average pool where the input grid is
    finer, a bilinear interpolation where it is coarser. Returns ``tokens`` itself, with no op at all, when the grids
    and the extent already match (every Depth Anything student of a Depth Anything teacher).
    """
    gh, gw = grid
    if (gh, gw) == tuple(out_grid) and tuple(extent) == (gh, gw):
        return tokens
    b, n, c = tokens.shape
    if n != gh * gw:
        raise ValueError(f"{n} tokens do not fill a {gh}x{gw} grid")
    maps = tokens.float().transpose(1, 2).reshape(b, c, gh, gw)  # (B, C, gh, gw)
    index = torch.arange(b, device=tokens.device, dtype=torch.float32)
    zero = torch.zeros_like(index)  # the box x0 y0 x1 y1, built on the device (no copy from the host: a GPU sync)
    rois = torch.stack([index, zero, zero, zero + float(extent[1]), zero + float(extent[0])], dim=-1)  # (B, 5)
    out = roi_align(maps, rois, output_size=tuple(out_grid), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return out.flatten(2).transpose(1, 2)  # (B, oh * ow, C)


def crop_boxes(maps: torch.Tensor, boxes: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Crop_n: maps (B, H, W), boxes (B, N, 4) float (y0, x0, y1, x1) normalised to [0, 1] → (B, N, P, P).

    ``torchvision.ops.roi_align`` with ``aligned=True`` (pixel i covers [i, i + 1) of the continuous image, so the
    box (0, 0, 1, 1) is the whole map) and the adaptive number of samples per output bin: an integer down-sampling
    of the box's pixels is their box average, equal sizes reproduce the pixels. Differentiable in ``maps``.
    """
    if maps.ndim != 3 or boxes.ndim != 3 or boxes.shape[0] != maps.shape[0] or boxes.shape[-1] != 4:
        raise ValueError(f"expected maps (B, H, W) and boxes (B, N, 4), got {tuple(maps.shape)}, {tuple(boxes.shape)}")
    b, h, w = maps.shape
    n = boxes.shape[1]
    size = (size, size) if isinstance(size, int) else tuple(size)
    y0, x0, y1, x1 = boxes.detach().float().unbind(-1)  # (B, N) each; Python scales: nothing copied from the host
    xyxy = torch.stack([x0 * w, y0 * h, x1 * w, y1 * h], dim=-1)  # (B, N, 4) pixels, x0 y0 x1 y1
    index = torch.arange(b, device=maps.device, dtype=torch.float32).repeat_interleave(n).unsqueeze(-1)
    rois = torch.cat([index, xyxy.reshape(b * n, 4)], dim=-1)  # (B*N, 5)
    out = roi_align(
        maps.float().unsqueeze(1), rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True
    )
    return out.view(b, n, *size)


def local_global_loss(
    student_global: torch.Tensor,
    teacher_local: torch.Tensor,
    boxes: torch.Tensor,
    mask_local: torch.Tensor,
    normalization: Normalization = "hybrid",
) -> torch.Tensor:
    """L_lg = (1/N) Σ_n L_Dis(Crop_n(student(global)), teacher(local_n)), scalar.

    student_global (B, Hg, Wg); teacher_local (B, N, P, P); boxes (B, N, 4) normalised (y0, x0, y1, x1) of each
    local patch in the global view; mask_local (B, N, P, P) bool. All B·N patches are one batch of L_Dis; the result
    is the mean over the patches that have a valid pixel.
    """
    if teacher_local.ndim != 4 or teacher_local.shape != mask_local.shape or boxes.shape[:2] != teacher_local.shape[:2]:
        raise ValueError(
            f"expected teacher_local and mask_local (B, N, P, P) and boxes (B, N, 4), got "
            f"{tuple(teacher_local.shape)}, {tuple(mask_local.shape)}, {tuple(boxes.shape)}"
        )
    crops = crop_boxes(student_global, boxes, tuple(teacher_local.shape[-2:]))  # (B, N, P, P)
    return dis_loss(crops.flatten(0, 1), teacher_local.flatten(0, 1), mask_local.flatten(0, 1), normalization)


def distill_losses(
    *,
    student_crop: torch.Tensor,
    teacher_crop: torch.Tensor,
    mask_crop: torch.Tensor,
    student_global: torch.Tensor | None = None,
    teacher_local: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    mask_local: torch.Tensor | None = None,
    feat_student: torch.Tensor | None = None,
    feat_teacher: torch.Tensor | None = None,
    cfg: LossConfig,
) -> dict[str, torch.Tensor]:
    """All distillation parts and the total: {"sc", "lg", "feat", "grad", "total"}, each a scalar tensor.

    total = λ_sc·sc + λ1·lg + λ2·feat + λ3·grad (``cfg.lambda_sc``, ``lambda_lg``, ``lambda_feat``, ``lambda_grad``).
    sc = L_Dis on the shared-context crop pair (B, C, C) with ``cfg.sc_normalization``; lg = :func:`local_global_loss`
    with ``cfg.lg_normalization``; grad = :func:`gradient_loss` on the crop pair with the per-image ``global``
    normalisation (``none`` when the shared-context normalisation is ``none``) and ``cfg.grad_scales``. lg needs
    student_global/teacher_local/boxes/mask_local, feat needs feat_student/feat_teacher (B, N, C). A part whose λ is
    0 or whose inputs are None is skipped and reported as a 0.0 tensor (stable logging keys); the total stays in the
    student's graph even when every part is skipped.
    """
    zero = student_crop.sum() * 0.0  # connected to the student: backward works whatever is switched off
    parts = {"sc": zero, "lg": zero, "feat": zero, "grad": zero}
    if cfg.lambda_sc > 0:
        parts["sc"] = dis_loss(student_crop, teacher_crop, mask_crop, cfg.sc_normalization)
    lg_inputs = (student_global, teacher_local, boxes, mask_local)
    if cfg.lambda_lg > 0 and all(x is not None for x in lg_inputs):
        parts["lg"] = local_global_loss(student_global, teacher_local, boxes, mask_local, cfg.lg_normalization)
    if cfg.lambda_feat > 0 and feat_student is not None and feat_teacher is not None:
        parts["feat"] = feature_loss(feat_student, feat_teacher, cfg.feat_margin)
    if cfg.lambda_grad > 0:
        grad_norm = "none" if cfg.sc_normalization == "none" else "global"
        parts["grad"] = gradient_loss(student_crop, teacher_crop, mask_crop, grad_norm, cfg.grad_scales)
    parts["total"] = (
        cfg.lambda_sc * parts["sc"]
        + cfg.lambda_lg * parts["lg"]
        + cfg.lambda_feat * parts["feat"]
        + cfg.lambda_grad * parts["grad"]
    )
    return {k: v.float() for k, v in parts.items()}
