"""The slow reference of L_Dis: a per-image, per-level, per-context Python loop (HDN-style), written the
straightforward way from the definition in ``reference/METHOD.md`` and :func:`dad_ray.losses.dis_loss_per_image`.

Never used in training. The unit tests check the vectorised loss (values and gradients) against it, and
``jobs/benchmark.py losses`` times the vectorised loss against it (after checking that the two agree).
"""

from __future__ import annotations

import torch

from dad_ray.losses.normalize import LEVELS, MAD_EPS


def loop_dis_loss_per_image(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, normalization: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """L_Dis of every image by loops: student, teacher (B, H, W), mask (B, H, W) bool → values (B,) float32 in the
    student's graph (the teacher is detached), valid (B,) bool.

    Per image: the valid pixels; per level S of ``normalization`` (``LEVELS``) and per segment j < S of the teacher's
    disparity range (floor(S u) with u the teacher's values min-max scaled to [0, 1], the maximum in the top
    segment), both maps are normalised on the selected pixels with ``torch.median`` (the lower median) and the mean
    absolute deviation (clamped to ``MAD_EPS``); a pixel's value is the mean over levels of |N(s) − N(t)|, the
    image's value the mean over its valid pixels. ``none`` is the plain L1. An image without a valid pixel has value
    0 (still in the graph) and valid False.
    """
    values, valid = [], []
    for s_img, t_img, m_img in zip(student.float(), teacher.detach().float(), mask):
        if not m_img.any():
            values.append(s_img.sum() * 0.0)
            valid.append(False)
            continue
        s, t = s_img[m_img], t_img[m_img]
        if normalization == "none":
            values.append((s - t).abs().mean())
            valid.append(True)
            continue
        levels = LEVELS[normalization]
        acc = torch.zeros_like(s)
        lo, hi = t.min(), t.max()
        u = (t - lo) / (hi - lo) if hi > lo else torch.zeros_like(t)
        for n_seg in levels:
            seg = torch.clamp(torch.floor(u * float(n_seg)), max=n_seg - 1)
            for j in range(n_seg):
                sel = seg == j
                if not sel.any():
                    continue
                normed = []
                for x in (s[sel], t[sel]):
                    med = torch.median(x)
                    mad = (x - med).abs().mean()
                    normed.append((x - med) / torch.clamp(mad, min=MAD_EPS))
                acc = acc.index_put((sel.nonzero(as_tuple=True)[0],), (normed[0] - normed[1]).abs(), accumulate=True)
        values.append((acc / len(levels)).mean())
        valid.append(True)
    return torch.stack(values), torch.tensor(valid)


def loop_dis_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, normalization: str) -> torch.Tensor:
    """L_Dis, scalar, by loops: the mean over valid images of :func:`loop_dis_loss_per_image` (0, still in the
    student's graph, when no image has a valid pixel), as :func:`dad_ray.losses.dis_loss`."""
    values, valid = loop_dis_loss_per_image(student, teacher, mask, normalization)
    return values[valid].mean() if valid.any() else values.sum() * 0.0
