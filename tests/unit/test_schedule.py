"""The lr schedule is a pure function of the step; param groups are selected by name."""

import math

import pytest
import torch

from dad_ray.config import OptimConfig
from dad_ray.train.autobatch import largest_fitting, split_effective_batch
from dad_ray.train.schedule import build_optimizer, group_lrs, lr_factor, param_groups


def test_poly_schedule_hand_values():
    cfg = OptimConfig(max_steps=100, warmup_steps=0, schedule="poly", poly_power=0.9)
    assert lr_factor(0, cfg) == 1.0
    assert lr_factor(50, cfg) == pytest.approx(0.5**0.9)
    assert lr_factor(100, cfg) == 0.0
    assert lr_factor(150, cfg) == 0.0  # clamped past the end


def test_warmup_then_cosine_with_floor():
    cfg = OptimConfig(max_steps=110, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert [lr_factor(s, cfg) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(110, cfg) == pytest.approx(0.1)


def test_constant_schedule():
    cfg = OptimConfig(max_steps=10, schedule="constant")
    assert {lr_factor(s, cfg) for s in range(12)} == {1.0}


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.pretrained = torch.nn.Linear(4, 4)
        self.pretrained.pos_embed = torch.nn.Parameter(torch.zeros(1, 2, 4))
        self.depth_head = torch.nn.Linear(4, 1)


def test_param_groups_by_name_encoder_lr_is_a_tenth():
    cfg = OptimConfig(lr=1e-3, encoder_lr_mult=0.1, weight_decay=0.01, decay_exclude=True)
    groups = {g["name"]: g for g in param_groups(_Toy().named_parameters(), cfg)}
    assert set(groups) == {"encoder", "encoder/no_decay", "decoder", "decoder/no_decay"}
    assert groups["encoder"]["lr"] == pytest.approx(1e-4) and groups["decoder"]["lr"] == pytest.approx(1e-3)
    assert groups["encoder/no_decay"]["weight_decay"] == 0.0 and groups["decoder"]["weight_decay"] == 0.01
    assert len(groups["encoder/no_decay"]["params"]) == 2  # bias + pos_embed


def test_weight_decay_on_every_parameter_by_default():
    """The paper's / DAv2's AdamW: one decay for all parameters, biases, norms and the position embedding included."""
    toy = _Toy()
    cfg = OptimConfig(lr=1e-3, encoder_lr_mult=0.1, weight_decay=0.01)
    assert cfg.decay_exclude is False
    groups = {g["name"]: g for g in param_groups(toy.named_parameters(), cfg)}
    assert set(groups) == {"encoder", "decoder"}
    assert {g["weight_decay"] for g in groups.values()} == {0.01}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert ids["encoder"] == {id(toy.pretrained.weight), id(toy.pretrained.bias), id(toy.pretrained.pos_embed)}
    assert ids["decoder"] == {id(toy.depth_head.weight), id(toy.depth_head.bias)}
    opt, _ = build_optimizer(toy, cfg)
    assert sum(len(g["params"]) for g in opt.param_groups) == 5  # nothing left out


def test_decay_exclude_decays_the_same_values_less():
    """One AdamW step from the same state: with exclusion, a bias moves by the Adam update only; without it, the
    bias also shrinks by lr * wd * value (decoupled decay), computed by hand."""
    steps = {}
    for exclude in (False, True):
        torch.manual_seed(0)
        toy = _Toy()
        with torch.no_grad():
            toy.depth_head.bias.fill_(2.0)
        opt, _ = build_optimizer(toy, OptimConfig(lr=0.1, weight_decay=0.5, decay_exclude=exclude, max_steps=10))
        toy.depth_head(torch.zeros(1, 4)).sum().backward()  # d bias = 1: Adam's first step moves it by -lr
        opt.step()
        steps[exclude] = toy.depth_head.bias.item()
    assert steps[True] == pytest.approx(2.0 - 0.1, abs=1e-6)
    assert steps[False] == pytest.approx(2.0 * (1 - 0.1 * 0.5) - 0.1, abs=1e-6)


def test_scheduler_follows_lr_factor_for_every_group():
    cfg = OptimConfig(lr=1e-3, max_steps=20, warmup_steps=5)
    opt, sched = build_optimizer(_Toy(), cfg)
    for step in range(12):
        lrs = group_lrs(opt)
        assert lrs["decoder"] == pytest.approx(1e-3 * lr_factor(step, cfg))
        assert lrs["encoder"] == pytest.approx(1e-4 * lr_factor(step, cfg))
        opt.step()
        sched.step()


@pytest.mark.parametrize("capacity", [1, 3, 8, 13, 64])
def test_largest_fitting_batch_search(capacity):
    calls = []

    def fits(b):
        calls.append(b)
        return b <= capacity

    assert largest_fitting(fits, limit=32) == min(capacity, 32)
    assert max(calls) <= 33


def test_largest_fitting_none():
    assert largest_fitting(lambda b: False, limit=8) == 0


@pytest.mark.parametrize(
    ("target", "micro_max", "expected"), [(8, 8, (8, 1)), (8, 5, (4, 2)), (8, 3, (2, 4)), (6, 4, (3, 2))]
)
def test_split_effective_batch_keeps_the_effective_batch(target, micro_max, expected):
    micro, accum = split_effective_batch(target, micro_max)
    assert (micro, accum) == expected and micro * accum == target
