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

Everything is vectorised over the batch and the contexts, with no per-context Python loop and no host sync, and
levels must be **nested** (every level divides the finest one, F = max(levels); the coarse segment of a pixel is its
finest segment // (F / S), which equals ⌊S · u⌋ for the powers of two used here). Each map is sorted **once**, by the
composite int64 key (finest segment, order-preserving bits of the value): every finest context is then a sorted run,
its median an index. A coarser context is a union of F / S adjacent runs; its lower median is found by a 32-step
binary search over the 32-bit value keys, counting the union's elements ≤ a candidate with one batched
``searchsorted`` per step (exact: the result is an element of the map). Context ids: level l's segment j is
``offset_l + j``; invalid pixels get the id K (= number of contexts), a bin that is ignored.
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


def finest_level(levels: tuple[int, ...]) -> int:
    """F = max(levels), after checking that every level divides it (the contexts are nested)."""
    finest = max(levels)
    bad = [n for n in levels if n < 1 or finest % n]
    if bad:
        raise ValueError(f"context levels {levels} are not nested: {bad} do not divide the finest level {finest}")
    return finest


def context_ids(reference: torch.Tensor, mask: torch.Tensor, levels: tuple[int, ...]) -> torch.Tensor:
    """reference (B, P) float, mask (B, P) bool → context id of every pixel at every level, (B, L, P) int64.

    Level l's segment j has id ``sum(levels[:l]) + j``; invalid pixels have id K = sum(levels).
    """
    finest = finest_level(levels)
    ref = reference.float()
    big = torch.finfo(ref.dtype).max
    lo = ref.masked_fill(~mask, big).amin(-1, keepdim=True)  # (B, 1)
    hi = ref.masked_fill(~mask, -big).amax(-1, keepdim=True)
    span = hi - lo
    u = torch.where(span > 0, (ref - lo) / span.clamp_min(torch.finfo(ref.dtype).tiny), torch.zeros_like(ref))
    u = u.masked_fill(~mask, 0.0)  # invalid pixels may hold anything (NaN, inf): keep the integer cast defined
    seg = (u * finest).floor_().clamp_(0, finest - 1).long()  # (B, P) finest segment
    # one level at a time with Python integers: no small index tensor copied from the host (a GPU sync)
    ids = torch.stack(
        [torch.div(seg, finest // n, rounding_mode="floor") + sum(levels[:i]) for i, n in enumerate(levels)], dim=1
    )  # (B, L, P)
    return ids.masked_fill_(~mask.unsqueeze(1), sum(levels))


def _ordered_bits(x: torch.Tensor) -> torch.Tensor:
    """float32 (...) → int64 (...) in [0, 2^32), increasing with the value (−0.0 just below +0.0)."""
    bits = x.contiguous().view(torch.int32).long()
    return torch.where(bits >= 0, bits + 2**31, -bits - 1)


def context_medians(x: torch.Tensor, ids: torch.Tensor, levels: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower median and size of every context: x (B, P) float32, ids (B, L, P) from :func:`context_ids` (invalid
    pixels have id K and belong to no context) → (B, K) float32, (B, K) int64. Empty contexts get median 0.

    The median is gathered from ``x`` (its gradient flows to that element); the search runs on detached values.
    """
    b, p = x.shape
    finest = finest_level(levels)
    fi = levels.index(finest)
    run = (ids[:, fi] - sum(levels[:fi])).clamp_(max=finest)  # (B, P) finest segment, invalid → finest
    keys, order = ((run << 32) + _ordered_bits(x.detach().float())).sort(dim=-1)  # (B, P): runs, ascending inside
    run_counts = torch.zeros(b, finest + 1, dtype=torch.long, device=x.device)
    run_counts = run_counts.scatter_add_(1, run, torch.ones_like(run))[:, :finest]  # (B, F)
    run_start = run_counts.cumsum(-1) - run_counts  # (B, F) first sorted position of each run
    positions, counts = [], []
    for n_seg in levels:
        g = finest // n_seg  # runs per context of this level
        cnt = run_counts.view(b, n_seg, g).sum(-1)  # (B, S)
        rank = ((cnt - 1) // 2).clamp_min(0)  # (B, S) 0-based rank of the lower median inside the context
        if g == 1:
            pos = run_start + rank
        else:
            pos = _union_select(keys, run_start.view(b, n_seg, g), run_counts.view(b, n_seg, g), rank + 1)
        positions.append(pos)
        counts.append(cnt)
    pos = torch.cat(positions, 1).clamp_(max=p - 1)  # (B, K) sorted positions of the medians
    counts_k = torch.cat(counts, 1)
    median = x.gather(-1, order.gather(-1, pos))
    return torch.where(counts_k > 0, median, torch.zeros_like(median)), counts_k


def _union_select(keys: torch.Tensor, start: torch.Tensor, count: torch.Tensor, need: torch.Tensor) -> torch.Tensor:
    """Sorted position of the ``need``-th smallest element (1-based) of each union of g runs.

    keys (B, P) sorted composite keys (run << 32 | value bits); start, count (B, S, g) of the runs of each of the S
    contexts; need (B, S) ≥ 1 where the context is not empty → (B, S) positions into ``keys``. Binary search for the
    smallest value key v with #{elements ≤ v} ≥ need (32 steps over the 32-bit keys), then the first run holding v.
    """
    b, n_seg, g = start.shape
    run_base = torch.arange(n_seg * g, device=keys.device).view(1, n_seg, g) << 32  # (1, S, g)
    lo = torch.zeros(b, n_seg, dtype=torch.long, device=keys.device)
    hi = torch.full_like(lo, 2**32 - 1)
    for _ in range(32):
        mid = (lo + hi) // 2
        at_most = torch.searchsorted(keys, (run_base + mid.unsqueeze(-1)).view(b, -1), right=True)
        enough = (at_most.view(b, n_seg, g) - start).sum(-1) >= need
        hi = torch.where(enough, mid, hi)
        lo = torch.where(enough, lo, mid + 1)
    query = (run_base + lo.unsqueeze(-1)).view(b, -1)
    first = torch.searchsorted(keys, query).view(b, n_seg, g)  # (B, S, g) first key >= (run, v) in every run
    found = (first < start + count) & (keys.gather(-1, first.clamp(max=keys.shape[1] - 1).view(b, -1)) == query).view(
        b, n_seg, g
    )
    return first.gather(-1, found.long().argmax(-1, keepdim=True)).squeeze(-1)


def normalize_contexts(x: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor, levels: tuple[int, ...]) -> torch.Tensor:
    """x (B, P), mask (B, P), ids (B, L, P) from :func:`context_ids` → N_u(x) of every pixel at every level,
    (B, L, P) float32. Invalid pixels are 0.
    """
    x = torch.where(mask, x.float(), torch.zeros((), device=x.device))  # garbage in masked pixels never leaks
    median, counts = context_medians(x, ids, levels)  # (B, K)
    b, lvl, p = ids.shape
    k = median.shape[1]
    flat_ids = ids.flatten(1)
    zero = torch.zeros(b, 1, device=x.device, dtype=x.dtype)
    # invalid pixels have id K (median 0) and x = 0, so their deviation is exactly 0 and they add nothing to the MAD
    dev = x.unsqueeze(1) - torch.cat([median, zero], 1).gather(1, flat_ids).view(b, lvl, p)  # (B, L, P)
    abs_sum = x.new_zeros(b, k + 1).scatter_add_(1, flat_ids, dev.abs().flatten(1))
    inv_mad = 1.0 / (abs_sum[:, :k] / counts.clamp_min(1)).clamp_min(MAD_EPS)  # (B, K)
    return dev * torch.cat([inv_mad, zero], 1).gather(1, flat_ids).view(b, lvl, p)


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
    out = normalize_contexts(d.reshape(b, -1), flat_mask, ids, levels)
    return out.view(b, len(levels), h, w)
