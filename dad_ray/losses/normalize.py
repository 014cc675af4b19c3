"""Scale-and-shift normalisations of disparity maps: global (MiDaS), hybrid and local (HDN depth-range contexts).

A *context* is a set of pixels normalised together: N_u(d)_i = (d_i − median_u(d)) / MAD_u(d) with
MAD_u(d) = mean_{j∈u} |d_j − median_u(d)|. Contexts come in *levels*: level S splits the **reference** (teacher)
disparity range [min, max] of an image's valid pixels into S equal segments, so the contexts of one level partition
the valid pixels. ``global`` = level 1 (one context, the whole image); ``local`` = level 4; ``hybrid`` = levels
1, 2, 4 (7 contexts, each pixel in exactly 3).

Conventions (tested in ``tests/unit/test_losses*.py``):

- **Median = lower median** (``torch.median``'s convention): the element of rank ⌊(n − 1) / 2⌋ of the n sorted
  values, so the median of [1, 2, 3, 4] is 2. The median is an element of the map, and its gradient flows to it.
- Segment of a pixel: ⌊S · (d_ref − min) / (max − min)⌋ clipped to S − 1 (the maximum lands in the top segment; a
  value exactly on a boundary goes to the upper segment); when max == min every pixel is in segment 0.
- MAD is clamped to ``eps`` (1e-6) before dividing, so a constant context normalises to 0, never NaN/inf.
- Statistics are computed in float32 whatever the input dtype (bf16 autocast safe).

Everything is vectorised over the batch and the contexts: each map is sorted once, and the members of each context
are grouped by a stable sort of the context ids (the teacher's contexts are value ranges, so its sorted order is
already grouped and needs no second sort). Context ids: level l's segment j is ``offset_l + j``; invalid pixels get
the id K (= number of contexts), a bin that is ignored.
"""

from __future__ import annotations

from typing import Literal

import torch

Normalization = Literal["global", "hybrid", "local", "none"]

LEVELS: dict[str, tuple[int, ...]] = {"global": (1,), "local": (4,), "hybrid": (1, 2, 4)}
MAD_EPS = 1e-6


def levels_of(normalization: str) -> tuple[int, ...]:
    """The context levels of a normalisation ("none" has none)."""
    if normalization == "none":
        return ()
    if normalization not in LEVELS:
        raise ValueError(f"unknown normalization {normalization!r}; expected one of global, hybrid, local, none")
    return LEVELS[normalization]


def context_ids(reference: torch.Tensor, mask: torch.Tensor, levels: tuple[int, ...]) -> torch.Tensor:
    """reference (B, P) float, mask (B, P) bool → context id of every pixel at every level, (B, L, P) int64.

    Level l's segment j has id ``sum(levels[:l]) + j``; invalid pixels have id K = sum(levels).
    """
    ref = reference.float()
    big = torch.finfo(ref.dtype).max
    lo = ref.masked_fill(~mask, big).amin(-1, keepdim=True)  # (B, 1)
    hi = ref.masked_fill(~mask, -big).amax(-1, keepdim=True)
    span = hi - lo
    u = torch.where(span > 0, (ref - lo) / span.clamp_min(torch.finfo(ref.dtype).tiny), torch.zeros_like(ref))
    u = u.masked_fill(~mask, 0.0)
    s = torch.tensor(levels, device=ref.device, dtype=ref.dtype).view(1, -1, 1)  # (1, L, 1)
    seg = torch.minimum(torch.floor(u.unsqueeze(1) * s), s - 1).long()  # (B, L, P)
    offsets = torch.tensor([sum(levels[:i]) for i in range(len(levels))], device=ref.device).view(1, -1, 1)
    return torch.where(mask.unsqueeze(1), seg + offsets, torch.full_like(seg, sum(levels)))


def _level_of_context(levels: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(K,) level index of each context and (K,) id of the first context of that level."""
    level = torch.repeat_interleave(torch.arange(len(levels), device=device), torch.tensor(levels, device=device))
    first = torch.tensor([sum(levels[:i]) for i in range(len(levels))], device=device)[level]
    return level, first


def context_medians(
    x: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor, levels: tuple[int, ...], *, grouped: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower median and size of every context: x (B, P) float32, mask (B, P), ids (B, L, P) → (B, K), (B, K) int64.

    ``grouped=True`` promises that ``x``'s ascending order already groups every level's contexts (true for the
    reference map the contexts were cut from), which skips the per-level stable sort. Empty contexts get median 0.
    """
    b, p = x.shape
    k = sum(levels)
    order = x.detach().masked_fill(~mask, float("inf")).argsort(dim=-1)  # (B, P): valid pixels first, ascending
    ids_sorted = ids.gather(-1, order.unsqueeze(1).expand_as(ids))  # (B, L, P) ids in value order
    if grouped:
        within = None  # ids_sorted is non-decreasing along P for every level
    else:
        within = ids_sorted.sort(dim=-1, stable=True).indices  # (B, L, P) positions into `order`, grouped by id
    counts = torch.zeros(b, k + 1, dtype=torch.long, device=x.device)
    counts.scatter_add_(1, ids.flatten(1), torch.ones_like(ids.flatten(1)))
    counts = counts[:, :k]  # (B, K)
    level, first = _level_of_context(levels, x.device)
    excl = counts.cumsum(-1) - counts  # (B, K) contexts with a smaller id (all levels)
    start = excl - excl[:, first]  # (B, K) start of each context inside its level's grouped row
    pos = (start + ((counts - 1) // 2).clamp_min(0)).clamp(max=p - 1)  # (B, K)
    if within is not None:
        pos = within.flatten(1).gather(1, level * p + pos)  # (B, K) positions into `order`
    pixel = order.gather(-1, pos)  # (B, K)
    median = x.gather(-1, pixel)
    return torch.where(counts > 0, median, torch.zeros_like(median)), counts


def normalize_contexts(
    x: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor, levels: tuple[int, ...], *, grouped: bool = False
) -> torch.Tensor:
    """x (B, P), mask (B, P), ids (B, L, P) → N_u(x) of every pixel at every level, (B, L, P) float32.

    Invalid pixels are 0. ``grouped`` as in :func:`context_medians`.
    """
    x = torch.where(mask, x.float(), torch.zeros((), device=x.device))  # garbage in masked pixels never leaks
    median, counts = context_medians(x, mask, ids, levels, grouped=grouped)  # (B, K)
    b, lvl, p = ids.shape
    pad = torch.zeros(b, 1, device=x.device, dtype=x.dtype)
    med_px = torch.cat([median, pad], 1).gather(1, ids.flatten(1)).view(b, lvl, p)  # (B, L, P)
    dev = (x.unsqueeze(1) - med_px) * mask.unsqueeze(1)
    k = median.shape[1]
    abs_sum = torch.zeros(b, k + 1, device=x.device, dtype=x.dtype).scatter_add(1, ids.flatten(1), dev.abs().flatten(1))
    mad = abs_sum[:, :k] / counts.clamp_min(1)
    mad_px = torch.cat([mad, pad + 1.0], 1).gather(1, ids.flatten(1)).view(b, lvl, p)
    return dev / mad_px.clamp_min(MAD_EPS)


def normalize(
    d: torch.Tensor, mask: torch.Tensor, normalization: Normalization = "global", reference: torch.Tensor | None = None
) -> torch.Tensor:
    """d (B, H, W), mask (B, H, W) bool → normalised maps (B, L, H, W) float32, one per context level.

    ``reference`` (B, H, W) defines the hybrid/local contexts (default: ``d`` itself); ``global`` gives L = 1 and
    ``none`` returns ``d`` as float32 with L = 1. Invalid pixels are 0.
    """
    if d.shape != mask.shape:
        raise ValueError(f"map {tuple(d.shape)} and mask {tuple(mask.shape)} differ in shape")
    b, h, w = d.shape
    if normalization == "none":
        return torch.where(mask, d.float(), torch.zeros((), device=d.device)).unsqueeze(1)
    levels = levels_of(normalization)
    ref = d if reference is None else reference
    flat_mask = mask.reshape(b, -1)
    ids = context_ids(ref.detach().reshape(b, -1), flat_mask, levels)
    out = normalize_contexts(d.reshape(b, -1), flat_mask, ids, levels, grouped=reference is None)
    return out.view(b, len(levels), h, w)
