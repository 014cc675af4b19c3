"""Checkpoint save → load restores the exact training state (weights, optimizer, scheduler, RNG, counters)."""

import random

import numpy as np
import torch

from dad_ray.config import OptimConfig, build_config
from dad_ray.models import create_model
from dad_ray.train.checkpoint import STUDENT_FILE, TrainState, load_checkpoint, save_checkpoint
from dad_ray.train.schedule import build_optimizer
from dad_ray.train.task import StudentTask


def _setup(seed):
    torch.manual_seed(seed)
    task = StudentTask(create_model("dav2_micro"), teacher_dims=[192])
    opt, sched = build_optimizer(task, OptimConfig(lr=1e-3, max_steps=50, warmup_steps=3))
    return task, opt, sched


def _train_step(task, opt, sched, x):
    out = task(x, teacher_dim=192)
    loss = out["crop"].mean() + out["features"].pow(2).mean()
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def test_save_load_restores_the_exact_state(tmp_path):
    cfg = build_config("smoke")
    x = torch.randn(2, 3, 56, 56)
    task, opt, sched = _setup(0)
    for _ in range(3):
        _train_step(task, opt, sched, x)
    state = TrainState(step=3, epoch=1, val_round=2, best_abs_rel=0.25)
    torch.manual_seed(123)
    np.random.seed(7)
    random.seed(9)
    save_checkpoint(
        tmp_path,
        rank=0,
        student=task.student,
        extra_modules={"feat_proj": task.feat_proj},
        optimizer=opt,
        scheduler=sched,
        state=state,
        cfg=cfg,
        extra_state={"teachers": {"generator": torch.Generator().manual_seed(5).get_state()}},
    )
    assert (tmp_path / STUDENT_FILE).is_file() and (tmp_path / "rng_rank0.pt").is_file()
    expected_rand = (torch.rand(3), np.random.rand(3), random.random())
    _train_step(task, opt, sched, x)  # the reference continues one more step
    reference = {k: v.clone() for k, v in task.state_dict().items()}

    torch.manual_seed(999)  # a fresh process: different init, different RNG
    task2, opt2, sched2 = _setup(1)
    restored, extra = load_checkpoint(
        tmp_path,
        rank=0,
        student=task2.student,
        extra_modules={"feat_proj": task2.feat_proj},
        optimizer=opt2,
        scheduler=sched2,
    )
    assert restored == state
    assert torch.equal(extra["teachers"]["generator"], torch.Generator().manual_seed(5).get_state())
    got_rand = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got_rand[0], expected_rand[0]) and np.array_equal(got_rand[1], expected_rand[1])
    assert got_rand[2] == expected_rand[2]
    assert sched2.last_epoch == sched.last_epoch - 1
    _train_step(task2, opt2, sched2, x)
    for key, value in task2.state_dict().items():
        assert torch.equal(value, reference[key]), key  # bit-identical continuation
