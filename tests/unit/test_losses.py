"""L_Dis and its normalisations: hand-computed values, invariances, masking, bf16, and a slow loop reference."""

from __future__ import annotations

import math

import pytest
import torch

from dad_ray.losses import context_ids, context_medians, dis_loss, dis_loss_per_image, normalize
from dad_ray.losses.reference import loop_dis_loss, loop_dis_loss_per_image

NORMS = ("global", "hybrid", "local", "none")


def loop_dis_loss_per_image_detached(student, teacher, mask, normalization):
    """The slow loop reference's (:mod:`dad_ray.losses.reference`) values, detached, and valid."""
    values, valid = loop_dis_loss_per_image(student.detach(), teacher, mask, normalization)
    return values.detach(), valid


def _rand(b=3, h=9, w=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.rand(b, h, w, generator=g) * 5
    student = teacher * 0.5 + torch.rand(b, h, w, generator=g)
    mask = torch.rand(b, h, w, generator=g) > 0.2
    return student, teacher, mask


def test_lower_median_convention():
    x = torch.tensor([[4.0, 1.0, 3.0, 2.0], [5.0, 7.0, 6.0, 0.0]])
    mask = torch.tensor([[True] * 4, [True, True, True, False]])
    ids = context_ids(x, mask, (1,))
    med, counts = context_medians(x, ids, (1,))
    assert med[:, 0].tolist() == [2.0, 6.0]  # lower median of [1, 2, 3, 4] is 2; [5, 6, 7] → 6
    assert counts[:, 0].tolist() == [4, 3]
    assert med[0, 0] == torch.median(x[0])


def test_context_ids_segments():
    t = torch.arange(8.0).view(1, 8)
    ids = context_ids(t, torch.ones(1, 8, dtype=torch.bool), (1, 2, 4))
    assert ids[0, 0].tolist() == [0] * 8
    assert ids[0, 1].tolist() == [1, 1, 1, 1, 2, 2, 2, 2]
    assert ids[0, 2].tolist() == [3, 3, 4, 4, 5, 5, 6, 6]  # floor(4k/7): the maximum lands in the top segment
    ids = context_ids(t, torch.tensor([[True] * 7 + [False]]), (2,))
    assert ids[0, 0, -1] == 2  # invalid pixel → the ignored bin K


def test_hand_values_global():
    t = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    s = torch.tensor([[[1.0, 1.0, 2.0, 5.0]]])
    m = torch.ones_like(t, dtype=torch.bool)
    # teacher: median 2, MAD 1 → [-1, 0, 1, 2]; student: median 1, MAD 1.25 → [0, 0, 0.8, 3.2]
    assert normalize(t, m, "global")[0, 0, 0].tolist() == [-1.0, 0.0, 1.0, 2.0]
    assert dis_loss(s, t, m, "global").item() == pytest.approx(0.6, abs=1e-6)
    assert dis_loss(s, t, m, "none").item() == pytest.approx(0.75, abs=1e-6)


def test_hand_values_all_normalisations():
    # teacher [0, 1, 2, 3]: S=1 all; S=2 {0, 1} {2, 3}; S=4 singletons (N = 0). student [0, 2, 1, 3]:
    # S=1: t → [-1, 0, 1, 2], s → [-1, 1, 0, 2] (diff [0, 1, 1, 0]); S=2: both [0, 2] per pair (diff 0)
    t = torch.tensor([[[0.0, 1.0, 2.0, 3.0]]])
    s = torch.tensor([[[0.0, 2.0, 1.0, 3.0]]])
    m = torch.ones_like(t, dtype=torch.bool)
    assert dis_loss(s, t, m, "global").item() == pytest.approx(0.5, abs=1e-6)
    assert dis_loss(s, t, m, "hybrid").item() == pytest.approx(1 / 6, abs=1e-6)
    assert dis_loss(s, t, m, "local").item() == pytest.approx(0.0, abs=1e-6)
    assert dis_loss(s, t, m, "none").item() == pytest.approx(0.5, abs=1e-6)


def test_hand_value_local_pairs():
    # teacher 0..7 at S=4 → pairs {0,1} {2,3} {4,5} {6,7}, each normalised to [0, 2]
    t = torch.arange(8.0).view(1, 1, 8)
    s = torch.tensor([[[0.0, 3.0, 5.0, 4.0, 1.0, 1.0, 0.0, 10.0]]])
    # pairs of s: [0,3] → [0,2] (0); [5,4] → [2,0] (2+2); [1,1] → MAD 0 → [0,0] (0+2); [0,10] → [0,2] (0)
    assert dis_loss(s, t, torch.ones_like(t, dtype=torch.bool), "local").item() == pytest.approx(6 / 8, abs=1e-6)


@pytest.mark.parametrize("normalization", NORMS)
def test_matches_loop_reference(normalization):
    s, t, m = _rand()
    m[1] = False  # an image with no valid pixel
    m[2, :, :5] = False
    values, valid = dis_loss_per_image(s, t, m, normalization)
    ref_values, ref_valid = loop_dis_loss_per_image_detached(s, t, m, normalization)
    assert valid.tolist() == ref_valid.tolist() == [True, False, True]
    torch.testing.assert_close(values, ref_values, atol=1e-5, rtol=1e-5)
    # the scalar the benchmark times: the mean over the valid images, 0 when there is none
    torch.testing.assert_close(
        loop_dis_loss(s, t, m, normalization), dis_loss(s, t, m, normalization), atol=1e-5, rtol=1e-5
    )
    assert loop_dis_loss(s, t, torch.zeros_like(m), normalization).item() == 0.0


@pytest.mark.parametrize("normalization", NORMS)
def test_matches_loop_reference_with_ties(normalization):
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 6, (2, 7, 7), generator=g).float()  # many ties and boundary values
    s = torch.randint(0, 4, (2, 7, 7), generator=g).float()
    m = torch.rand(2, 7, 7, generator=g) > 0.1
    values, _ = dis_loss_per_image(s, t, m, normalization)
    expected = loop_dis_loss_per_image_detached(s, t, m, normalization)[0]
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=1e-5)


def test_medians_of_unions_of_runs_by_hand():
    # values chosen so that every level's lower median differs from the medians of its halves; negative values,
    # -0.0 and +0.0 exercise the order-preserving key
    ref = torch.arange(8.0).view(1, 8)  # finest (S=4) runs {0,1} {2,3} {4,5} {6,7}; S=2 {0..3} {4..7}
    x = torch.tensor([[5.0, -3.0, 0.0, -0.0, 9.0, -7.5, 2.0, 1.0]])
    mask = torch.ones(1, 8, dtype=torch.bool)
    ids = context_ids(ref, mask, (1, 2, 4))
    med, counts = context_medians(x, ids, (1, 2, 4))
    # S=1: sorted [-7.5, -3, -0, 0, 1, 2, 5, 9] → rank 3 = 0; S=2: [-3, -0, 0, 5] → -0 / 0, [-7.5, 1, 2, 9] → 1;
    # S=4: [-3, 5] → -3, [-0, 0] → 0, [-7.5, 9] → -7.5, [1, 2] → 1
    assert med[0].tolist() == [0.0, 0.0, 1.0, -3.0, 0.0, -7.5, 1.0]
    assert counts[0].tolist() == [8, 4, 4, 2, 2, 2, 2]
    for level, n_seg in enumerate((1, 2, 4)):
        for j in range(n_seg):
            sel = ids[0, level] == sum((1, 2, 4)[:level]) + j
            assert med[0, sum((1, 2, 4)[:level]) + j] == torch.median(x[0][sel])


def test_medians_match_torch_median_on_random_maps_with_ties_and_holes():
    g = torch.Generator().manual_seed(5)
    ref = torch.rand(4, 300, generator=g)
    x = torch.randint(-20, 20, (4, 300), generator=g).float() / 4  # many ties
    mask = torch.rand(4, 300, generator=g) > 0.3
    mask[3] = False
    levels = (1, 2, 4)
    ids = context_ids(ref, mask, levels)
    med, counts = context_medians(x, ids, levels)
    for b in range(4):
        for c in range(sum(levels)):
            sel = (ids[b] == c).any(0)
            assert counts[b, c] == sel.sum()
            expected = torch.median(x[b][sel]) if sel.any() else torch.tensor(0.0)
            assert med[b, c] == expected, (b, c)


def test_levels_must_be_nested():
    with pytest.raises(ValueError, match="not nested"):
        context_ids(torch.rand(1, 10), torch.ones(1, 10, dtype=torch.bool), (1, 3, 4))


@pytest.mark.parametrize("normalization", ("global", "hybrid", "local"))
def test_gradient_matches_loop_reference(normalization):
    s, t, m = _rand(seed=4)
    s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    dis_loss(s1, t, m, normalization).backward()
    values, valid = loop_dis_loss_per_image(s2, t, m, normalization)
    values[valid].mean().backward()
    torch.testing.assert_close(s1.grad, s2.grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("normalization", ("global", "hybrid", "local"))
def test_affine_invariance(normalization):
    s, t, m = _rand(seed=1)
    base = dis_loss(s, t, m, normalization)
    for a, b in ((3.0, -2.0), (0.25, 7.0)):
        assert dis_loss(a * s + b, t, m, normalization).item() == pytest.approx(base.item(), rel=1e-4, abs=1e-5)
        assert dis_loss(s, a * t + b, m, normalization).item() == pytest.approx(base.item(), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("normalization", NORMS)
def test_zero_at_equality(normalization):
    _, t, m = _rand(seed=2)
    assert dis_loss(t.clone(), t, m, normalization).item() == pytest.approx(0.0, abs=1e-6)
    if normalization != "none":
        assert dis_loss(4.0 * t + 1.0, t, m, normalization).item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("normalization", NORMS)
def test_masked_pixels_do_not_matter(normalization):
    s, t, m = _rand(seed=4)
    s_bad, t_bad = s.clone(), t.clone()
    s_bad[~m] = float("nan")
    t_bad[~m] = torch.tensor([float("inf"), -1e6, 1e6]).repeat(int((~m).sum()) // 3 + 1)[: int((~m).sum())]
    s_bad.requires_grad_(True)
    loss = dis_loss(s_bad, t_bad, m, normalization)
    assert loss.item() == pytest.approx(dis_loss(s, t, m, normalization).item(), abs=1e-6)
    loss.backward()
    assert torch.isfinite(s_bad.grad).all() and (s_bad.grad[~m] == 0).all()


@pytest.mark.parametrize("normalization", NORMS)
def test_invalid_image_contributes_nothing(normalization):
    s, t, m = _rand(seed=5)
    m[0] = False
    full = dis_loss(s, t, m, normalization)
    assert full.item() == pytest.approx(dis_loss(s[1:], t[1:], m[1:], normalization).item(), abs=1e-6)
    s = s.requires_grad_(True)
    none_valid = dis_loss(s, t, torch.zeros_like(m), normalization)
    assert none_valid.item() == 0.0 and none_valid.grad_fn is not None
    none_valid.backward()
    assert torch.isfinite(s.grad).all() and (s.grad == 0).all()


def test_constant_context_no_nan():
    t = torch.ones(2, 6, 6)
    s = torch.ones(2, 6, 6, requires_grad=True)
    loss = dis_loss(s, t, torch.ones_like(t, dtype=torch.bool), "hybrid")
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("normalization", NORMS)
def test_gradient_reaches_student_only(normalization):
    s, t, m = _rand(seed=6)
    s.requires_grad_(True)
    t.requires_grad_(True)
    dis_loss(s, t, m, normalization).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


@pytest.mark.parametrize("normalization", NORMS)
def test_bf16_autocast_matches_float32(normalization):
    s, t, m = _rand(seed=7)
    s16, t16 = s.bfloat16(), t.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dis_loss(s16, t16, m, normalization)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(dis_loss(s16.float(), t16.float(), m, normalization).item(), abs=1e-5)


def test_normalize_shapes_and_errors():
    s, t, m = _rand()
    assert normalize(s, m, "hybrid", reference=t).shape == (3, 3, 9, 11)
    assert normalize(s, m, "none").shape == (3, 1, 9, 11)
    with pytest.raises(ValueError, match="unknown normalization 'median'"):
        dis_loss(s, t, m, "median")
    with pytest.raises(ValueError, match="one shape"):
        dis_loss(s, t[:, :-1], m, "global")
    with pytest.raises(TypeError, match="bool"):
        dis_loss(s, t, m.float(), "global")


def test_global_mad_normalisation_by_hand():
    d = torch.tensor([[[0.0, 0.0, 3.0, 9.0]]])  # lower median 0, MAD (0 + 0 + 3 + 9) / 4 = 3
    out = normalize(d, torch.ones_like(d, dtype=torch.bool), "global")[0, 0, 0]
    assert out.tolist() == [0.0, 0.0, 1.0, 3.0]
    assert not math.isnan(out.sum().item())
