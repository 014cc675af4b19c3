"""Issue 13's loss knobs: λ_sc, separate normalisations for L_sc and L_lg, the shorthand that sets both."""

import pytest
import torch

from dad_ray.config import ConfigError, LossConfig, build_config
from dad_ray.losses import dis_loss, distill_losses, gradient_loss, local_global_loss

# Hand-made 2x2 maps. Student [1, 2, 3, 4]: lower median 2, MAD (1 + 0 + 1 + 2) / 4 = 1 → N = [-1, 0, 1, 2].
# Teacher [1, 1, 1, 6]: median 1, MAD 5 / 4 → N = [0, 0, 0, 4]. global L_Dis = (1 + 0 + 1 + 2) / 4 = 1.0;
# none (plain L1) = (0 + 1 + 2 + 2) / 4 = 1.25.
S = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
T = torch.tensor([[[1.0, 1.0], [1.0, 6.0]]])
M = torch.ones(1, 2, 2, dtype=torch.bool)
WHOLE = torch.tensor([[[0.0, 0.0, 1.0, 1.0]]])  # (B, N=1, 4): the local patch is the whole global view


def _inputs(student=S, teacher=T):
    s = student.clone().requires_grad_(True)
    return dict(
        student_crop=s,
        teacher_crop=teacher,
        mask_crop=torch.ones_like(teacher, dtype=torch.bool),
        student_global=s,
        teacher_local=teacher[:, None],
        boxes=WHOLE.expand(teacher.shape[0], 1, 4).contiguous(),
        mask_local=torch.ones_like(teacher, dtype=torch.bool)[:, None],
    )


def test_hand_values_of_the_two_maps():
    assert dis_loss(S, T, M, "global").item() == pytest.approx(1.0)
    assert dis_loss(S, T, M, "none").item() == pytest.approx(1.25)


def test_sc_none_plus_lg_global_by_hand():
    cfg = LossConfig(normalization_sc="none", normalization_lg="global", lambda_lg=0.5, lambda_feat=0, lambda_grad=0)
    parts = distill_losses(**_inputs(), cfg=cfg)
    assert parts["sc"].item() == pytest.approx(1.25)
    assert parts["lg"].item() == pytest.approx(1.0)
    assert parts["total"].item() == pytest.approx(1.25 + 0.5 * 1.0)


def test_lambda_sc_scales_the_shared_context_term():
    cfg = LossConfig(normalization="none", lambda_sc=2.0, lambda_lg=0.0, lambda_feat=0, lambda_grad=0)
    assert distill_losses(**_inputs(), cfg=cfg)["total"].item() == pytest.approx(2.0 * 1.25)


def _random(seed, b=2, h=14, w=14):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, h, w, generator=g) + 0.1, torch.rand(b, h, w, generator=g) + 0.1


def test_sc_hybrid_plus_lg_global_is_the_sum_of_the_two_terms():
    s, t = _random(0)
    x = _inputs(s, t)
    cfg = LossConfig(normalization_sc="hybrid", normalization_lg="global", lambda_lg=0.5, lambda_grad=0)
    parts = distill_losses(**x, cfg=cfg)
    sc = dis_loss(s, t, x["mask_crop"], "hybrid")
    lg = local_global_loss(s, t[:, None], x["boxes"], x["mask_local"], "global")
    assert parts["sc"].item() == pytest.approx(sc.item())
    assert parts["lg"].item() == pytest.approx(lg.item())
    assert parts["total"].item() == pytest.approx(sc.item() + 0.5 * lg.item())
    assert sc.item() != pytest.approx(dis_loss(s, t, x["mask_crop"], "global").item())  # the two really differ


def test_lambda_sc_zero_leaves_only_the_other_terms():
    s, t = _random(1)
    x = _inputs(s, t)
    cfg = LossConfig(lambda_sc=0.0, lambda_lg=0.5, lambda_grad=2.0)
    parts = distill_losses(**x, cfg=cfg)
    assert parts["sc"].item() == 0.0
    lg = local_global_loss(s, t[:, None], x["boxes"], x["mask_local"], "hybrid")
    grad = gradient_loss(s, t, x["mask_crop"], "global", 4)
    assert parts["total"].item() == pytest.approx(0.5 * lg.item() + 2.0 * grad.item())
    parts["total"].backward()
    assert x["student_crop"].grad.abs().sum() > 0


def test_everything_off_still_backpropagates():
    x = _inputs()
    cfg = LossConfig(lambda_sc=0.0, lambda_lg=0.0, lambda_feat=0.0, lambda_grad=0.0)
    parts = distill_losses(**x, cfg=cfg)
    assert parts["total"].item() == 0.0
    parts["total"].backward()  # no "does not require grad" error on a rank whose terms are all off
    assert torch.equal(x["student_crop"].grad, torch.zeros_like(S))


def test_grad_residual_follows_the_shared_context_normalisation():
    s, t = _random(2)
    x = _inputs(s, t)
    cfg = LossConfig(normalization_sc="none", normalization_lg="hybrid", lambda_lg=0.0, lambda_feat=0)
    parts = distill_losses(**x, cfg=cfg)
    assert parts["grad"].item() == pytest.approx(gradient_loss(s, t, x["mask_crop"], "none", 4).item())


@pytest.mark.parametrize(
    ("given", "sc", "lg"),
    [
        ({}, "hybrid", "hybrid"),  # nothing given: the paper's hybrid for both
        ({"normalization": "local"}, "local", "local"),  # the shorthand sets both
        ({"normalization_sc": "none"}, "none", "hybrid"),  # an own key sets one; the other stays hybrid
        ({"normalization_sc": "none", "normalization_lg": "global"}, "none", "global"),
        ({"normalization": "global", "normalization_lg": "global"}, "global", "global"),  # agreeing: allowed
    ],
)
def test_shorthand_and_explicit_keys(given, sc, lg):
    cfg = LossConfig(**given)
    assert (cfg.sc_normalization, cfg.lg_normalization) == (sc, lg)


def test_a_contradiction_is_rejected_with_its_key():
    with pytest.raises(ConfigError, match=r"loss\.normalization_lg: 'none' contradicts .*normalization='hybrid'"):
        build_config("smoke", overrides={"loss.normalization_lg": "none"})  # smoke inherits normalization: hybrid
    cfg = build_config("smoke", overrides={"loss.normalization": None, "loss.normalization_lg": "none"})
    assert (cfg.loss.sc_normalization, cfg.loss.lg_normalization) == ("hybrid", "none")
    with pytest.raises(ConfigError, match=r"loss\.lambda_sc: must be >= 0"):
        LossConfig(lambda_sc=-1.0)
