"""Gradient matching, feature alignment, local-global crops, the distillation total and the supervised losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dad_ray.config.schema import LossConfig
from dad_ray.losses import (
    crop_boxes,
    dis_loss,
    distill_losses,
    feature_loss,
    gradient_loss,
    local_global_loss,
    silog_loss,
    ssi_loss,
    supervised_losses,
)


def loop_gradient_loss(student, teacher, mask, scales):
    """Slow reference with normalization 'none': per image, per scale, per pixel pair."""
    values = []
    for s, t, m in zip(student, teacher, mask):
        if not m.any():
            continue
        total = 0.0
        r_full = (s - t).tolist()
        for k in range(scales):
            step = 2**k
            rows, cols = range(0, s.shape[0], step), range(0, s.shape[1], step)
            acc, n = 0.0, 0
            for i in rows:
                for j in cols:
                    if not m[i, j]:
                        continue
                    n += 1
                    if j + step < s.shape[1] and m[i, j + step]:
                        acc += abs(r_full[i][j + step] - r_full[i][j])
                    if i + step < s.shape[0] and m[i + step, j]:
                        acc += abs(r_full[i + step][j] - r_full[i][j])
            total += acc / max(n, 1)
        values.append(total)
    return sum(values) / max(len(values), 1)


def test_gradient_loss_hand_values():
    s = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]])
    m = torch.ones_like(s, dtype=torch.bool)
    # x: |1-0| + |4-2| = 3, y: |2-0| + |4-1| = 5 → 8 / 4 valid pixels; the 1x1 second scale has no pair
    assert gradient_loss(s, torch.zeros_like(s), m, "none", scales=1).item() == pytest.approx(2.0)
    assert gradient_loss(s, torch.zeros_like(s), m, "none", scales=2).item() == pytest.approx(2.0)
    ramp = (torch.arange(4.0).view(4, 1) * 4 + torch.arange(4.0)).view(1, 4, 4)
    # scale 0: 12 x-pairs of 1 + 12 y-pairs of 4 = 60 / 16; scale 1 ([::2, ::2]): (2+2 + 8+8) / 4 = 5
    m4 = torch.ones_like(ramp, dtype=torch.bool)
    assert gradient_loss(ramp, torch.zeros_like(ramp), m4, "none", scales=2).item() == pytest.approx(3.75 + 5.0)


def test_gradient_loss_matches_loop_and_masking():
    g = torch.Generator().manual_seed(0)
    s, t = torch.rand(3, 9, 10, generator=g), torch.rand(3, 9, 10, generator=g)
    m = torch.rand(3, 9, 10, generator=g) > 0.3
    m[1] = False
    out = gradient_loss(s, t, m, "none", scales=3)
    assert out.item() == pytest.approx(loop_gradient_loss(s, t, m, 3), rel=1e-5)
    s_bad = s.clone()
    s_bad[~m] = float("nan")
    assert gradient_loss(s_bad, t, m, "none", scales=3).item() == pytest.approx(out.item(), rel=1e-6)
    glob = gradient_loss(s, t, m, "global", scales=3)
    assert gradient_loss(2.5 * s - 1.0, t, m, "global", scales=3).item() == pytest.approx(glob.item(), rel=1e-4)
    assert gradient_loss(3 * t + 2, t, m, "global").item() == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="'global' or 'none'"):
        gradient_loss(s, t, m, "hybrid")


def test_feature_loss_hand_values():
    fs = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], requires_grad=True)
    ft = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]], requires_grad=True)
    c = 1 - 1 / math.sqrt(2)
    assert feature_loss(fs, ft, 0.85).item() == pytest.approx((1.0 + c) / 2, abs=1e-6)  # cos 1 is ignored
    assert feature_loss(fs, ft, 1.0).item() == pytest.approx((0.0 + 1.0 + c) / 3, abs=1e-6)
    none_left = feature_loss(fs, ft, -1.0)  # every cosine exceeds -1
    assert none_left.item() == 0.0 and none_left.grad_fn is not None
    feature_loss(fs, ft, 0.85).backward()
    assert ft.grad is None and fs.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="one shape"):
        feature_loss(fs, ft[:, :2], 0.85)


def test_crop_boxes_maps_back_to_pixels():
    g = torch.arange(2 * 8 * 8, dtype=torch.float32).view(2, 8, 8) ** 1.3  # a distinctive pattern per image
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.25, 1.0, 0.75]], [[0.0, 0.0, 1.0, 1.0], [0.0, 0.5, 0.5, 1.0]]])
    same = crop_boxes(g, boxes, 4)  # (2, 2, 4, 4)
    torch.testing.assert_close(same[0, 0], g[0, :4, :4])  # top-left quarter of image 0
    torch.testing.assert_close(same[0, 1], g[0, 4:8, 2:6])
    torch.testing.assert_close(same[1, 1], g[1, :4, 4:8])  # top-right quarter of image 1 (batch index kept)
    torch.testing.assert_close(same[1, 0], F.avg_pool2d(g[1:2, None], 2)[0, 0])  # whole map, down-sampled 2x
    half = crop_boxes(g, boxes, 2)
    torch.testing.assert_close(half[0, 0], F.avg_pool2d(g[None, None, 0, :4, :4], 2)[0, 0])


def test_local_global_loss():
    g = torch.Generator().manual_seed(1)
    teacher_global = torch.rand(2, 16, 16, generator=g) + 0.1
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.25, 0.5, 0.75, 1.0], [0.5, 0.0, 1.0, 0.5]]).expand(2, 3, 4)
    teacher_local = torch.stack(
        [teacher_global[:, 0:8, 0:8], teacher_global[:, 4:12, 8:16], teacher_global[:, 8:16, 0:8]], 1
    )  # (2, 3, 8, 8)
    mask = torch.ones_like(teacher_local, dtype=torch.bool)
    student = (3.0 * teacher_global + 0.5).requires_grad_(True)
    assert local_global_loss(student, teacher_local, boxes, mask, "hybrid").item() == pytest.approx(0.0, abs=1e-5)
    noisy = (teacher_global + 0.3 * torch.rand(2, 16, 16, generator=g)).requires_grad_(True)
    mask[1, 2] = False  # a patch with no valid pixel contributes nothing
    out = local_global_loss(noisy, teacher_local, boxes, mask, "hybrid")
    crops = [noisy[:, 0:8, 0:8], noisy[:, 4:12, 8:16], noisy[:, 8:16, 0:8]]
    per_patch = [
        dis_loss(crops[n][b : b + 1], teacher_local[b : b + 1, n], mask[b : b + 1, n])
        for b in range(2)
        for n in range(3)
    ]
    expected = sum(v for i, v in enumerate(per_patch) if i != 5) / 5
    assert out.item() == pytest.approx(expected.item(), rel=1e-5)
    out.backward()
    assert noisy.grad[:, 8:16, 0:8].abs().sum() > 0


def _parts_inputs(seed=0, b=2):
    g = torch.Generator().manual_seed(seed)
    return dict(
        student_crop=torch.rand(b, 14, 14, generator=g, requires_grad=True),
        teacher_crop=torch.rand(b, 14, 14, generator=g),
        mask_crop=torch.ones(b, 14, 14, dtype=torch.bool),
        student_global=torch.rand(b, 28, 28, generator=g, requires_grad=True),
        teacher_local=torch.rand(b, 4, 14, 14, generator=g),
        boxes=torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.5, 0.5, 1.0], [0.5, 0.0, 1.0, 0.5], [0.5, 0.5, 1.0, 1.0]])
        .expand(b, 4, 4)
        .contiguous(),
        mask_local=torch.ones(b, 4, 14, 14, dtype=torch.bool),
        feat_student=torch.randn(b, 5, 8, generator=g, requires_grad=True),
        feat_teacher=torch.randn(b, 5, 8, generator=g),
    )


def test_distill_losses_total_and_parts():
    cfg = LossConfig(normalization="hybrid", lambda_lg=0.5, lambda_feat=1.0, lambda_grad=2.0)
    x = _parts_inputs()
    parts = distill_losses(**x, cfg=cfg)
    assert set(parts) == {"sc", "lg", "feat", "grad", "total"}
    assert parts["sc"].item() == pytest.approx(dis_loss(x["student_crop"], x["teacher_crop"], x["mask_crop"]).item())
    assert parts["grad"].item() == pytest.approx(
        gradient_loss(x["student_crop"], x["teacher_crop"], x["mask_crop"], "global", 4).item()
    )
    assert parts["feat"].item() == pytest.approx(feature_loss(x["feat_student"], x["feat_teacher"], 0.85).item())
    expected = parts["sc"] + 0.5 * parts["lg"] + 1.0 * parts["feat"] + 2.0 * parts["grad"]
    assert parts["total"].item() == pytest.approx(expected.item())
    assert all(parts[k].item() > 0 for k in ("sc", "lg", "feat", "grad"))
    parts["total"].backward()
    for k in ("student_crop", "student_global", "feat_student"):
        assert x[k].grad is not None and x[k].grad.abs().sum() > 0


def test_distill_losses_skips_parts():
    x = _parts_inputs(seed=1)
    cfg = LossConfig(lambda_lg=0.0, lambda_feat=1.0, lambda_grad=0.0)
    parts = distill_losses(**{**x, "feat_student": None, "feat_teacher": None}, cfg=cfg)
    assert set(parts) == {"sc", "lg", "feat", "grad", "total"}
    assert parts["lg"].item() == parts["feat"].item() == parts["grad"].item() == 0.0
    assert parts["total"].item() == pytest.approx(parts["sc"].item())
    none_cfg = LossConfig(normalization="none")
    p = distill_losses(**x, cfg=none_cfg)
    assert p["grad"].item() == pytest.approx(
        gradient_loss(x["student_crop"], x["teacher_crop"], x["mask_crop"], "none").item()
    )


def test_ssi_loss():
    g = torch.Generator().manual_seed(2)
    gt = torch.rand(2, 10, 10, generator=g) * 9 + 0.5
    mask = torch.ones_like(gt, dtype=torch.bool)
    gt_holes = gt.clone()
    gt_holes[:, :3] = 0.0  # missing ground truth
    assert ssi_loss(2.0 / gt + 0.3, gt_holes, mask).item() == pytest.approx(0.0, abs=1e-5)
    pred = torch.rand(2, 10, 10, generator=g, requires_grad=True)
    out = ssi_loss(pred, gt_holes, mask)
    assert out.item() == pytest.approx(dis_loss(pred[:, 3:], 1.0 / gt[:, 3:], mask[:, 3:], "global").item(), rel=1e-5)
    out.backward()
    assert (pred.grad[:, :3] == 0).all()


def test_silog_hand_value():
    gt = torch.full((1, 2, 2), 2.0)
    m = torch.ones_like(gt, dtype=torch.bool)
    c = 1.5  # e = ln 1.5 everywhere → sqrt(e² − 0.5·e²) = ln 1.5 · sqrt(0.5)
    assert silog_loss(gt * c, gt, m, 0.5).item() == pytest.approx(math.log(c) * math.sqrt(0.5), rel=1e-5)
    assert silog_loss(gt * c, gt, m, 1.0).item() == pytest.approx(0.0, abs=1e-5)
    pred = torch.tensor([[[1.0, 4.0], [2.0, 2.0]]])  # e = [ln .5, ln 2, 0, 0]: mean 0, mean e² = ln²2 / 2
    assert silog_loss(pred, gt, m, 0.5).item() == pytest.approx(math.log(2) / math.sqrt(2), rel=1e-5)


def test_supervised_losses_modes():
    g = torch.Generator().manual_seed(3)
    gt = torch.rand(2, 12, 12, generator=g) * 5 + 1
    mask = torch.ones_like(gt, dtype=torch.bool)
    pred = torch.rand(2, 12, 12, generator=g)
    cfg = LossConfig(mode="supervised", supervised_loss="ssi", supervised_grad_weight=0.5)
    parts = supervised_losses(pred, gt, mask, cfg)
    assert set(parts) == {"ssi", "grad", "total"}
    assert parts["total"].item() == pytest.approx(parts["ssi"].item() + 0.5 * parts["grad"].item())
    assert parts["grad"].item() > 0
    silog = supervised_losses(gt * 2, gt, mask, LossConfig(mode="supervised", supervised_loss="silog"))
    assert set(silog) == {"silog", "grad", "total"}
    assert silog["total"].item() == pytest.approx(math.log(2) * math.sqrt(0.5), rel=1e-5)
