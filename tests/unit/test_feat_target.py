"""Issue 13: L_feat's target — the teacher's tokens (projection only when widths differ) or a frozen copy of the
student's initial encoder, kept out of the saved student, the optimizer and DDP, and rebuilt exactly on resume."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from dad_ray.config import ConfigError, OptimConfig, build_config
from dad_ray.losses import feature_loss
from dad_ray.models import create_model
from dad_ray.train.checkpoint import STUDENT_FILE, TrainState, load_checkpoint, save_checkpoint
from dad_ray.train.schedule import build_optimizer
from dad_ray.train.task import StudentTask, build_task, feat_target

PRETRAINED = {"model.student_init": "full", "model.student_weights": "init.safetensors"}


def _cfg(**overrides):
    return build_config("smoke", overrides=overrides)


def test_auto_target_follows_the_students_initialisation():
    assert feat_target(_cfg()) == "teacher"  # random student (the embedded default): nothing to keep
    assert feat_target(_cfg(**PRETRAINED)) == "initial"  # the paper's students start from a DAv2 encoder
    assert feat_target(_cfg(**PRETRAINED, **{"loss.feat_target": "teacher"})) == "teacher"
    for preset in ("nyu_vitl_to_vitb", "nyu_vitl_to_vits", "nyu_vitl_to_convnext_atto"):
        assert feat_target(build_config(preset)) == "initial", preset
    with pytest.raises(ConfigError, match=r"loss\.feat_target: 'initial' .* random weights"):
        _cfg(**{"loss.feat_target": "initial"})


def _student(seed=0):
    torch.manual_seed(seed)
    return create_model("dav2_micro")


def test_initial_copy_is_frozen_hidden_and_a_snapshot():
    student = _student()
    task = build_task(student, _cfg(**PRETRAINED), teacher_dims=[192])
    assert task.use_feat and task.teacher_dims == () and len(task.feat_proj) == 0  # no projection
    assert task.initial is not None and task.initial is not student
    assert {id(p) for p in task.parameters()} == {id(p) for p in student.parameters()}
    assert set(task.state_dict()) == {f"student.{k}" for k in student.state_dict()}
    opt, _ = build_optimizer(task, OptimConfig(lr=1e-2, max_steps=5))
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not in_opt & {id(p) for p in task.initial.parameters()}
    x = torch.randn(1, 3, 28, 28)
    out = task(x, teacher_dim=192)
    _, expected = student(x, return_features=True)
    torch.testing.assert_close(out["feat_target"], expected)  # same weights at the start: same tokens
    assert out["features"].shape == out["feat_target"].shape and not out["feat_target"].requires_grad
    # train the student (L_feat against the target and a depth term): the target does not move
    before = out["feat_target"].clone()
    for _ in range(2):
        out = task(x, teacher_dim=192)
        (out["crop"].mean() + feature_loss(out["features"] + 0.1, out["feat_target"], margin=1.0)).backward()
        opt.step()
        opt.zero_grad()
    after = task(x, teacher_dim=192)
    torch.testing.assert_close(after["feat_target"], before, rtol=0, atol=0)
    assert not torch.equal(after["features"], before)  # ... while the student did move
    assert all(p.grad is None for p in task.initial.parameters())


def test_to_moves_the_hidden_copy_and_train_mode_leaves_it_in_eval():
    task = build_task(_student(), _cfg(**PRETRAINED), teacher_dims=[192])
    task.to(torch.float64).train()
    assert {p.dtype for p in task.initial.parameters()} == {torch.float64}
    assert task.student.training and not task.initial.training


def test_teacher_target_projects_only_when_widths_differ():
    cfg = _cfg(**{"loss.feat_target": "teacher"})
    assert build_task(_student(), cfg, teacher_dims=[192]).feat_proj.keys() == {"192"}
    same = build_task(_student(), cfg, teacher_dims=[96])  # dav2_micro's own width: tokens as they are
    assert len(same.feat_proj) == 0 and same.use_feat and same.initial is None
    assert not build_task(_student(), _cfg(**{"loss.lambda_feat": 0.0}), teacher_dims=[192]).use_feat


def test_not_in_ddp_parameters():
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        task = build_task(_student(), _cfg(**PRETRAINED), teacher_dims=[192])
        ddp = torch.nn.parallel.DistributedDataParallel(task)
        assert {id(p) for p in ddp.parameters()} == {id(p) for p in task.student.parameters()}
        out = ddp(torch.randn(1, 3, 28, 28), None, 192)
        (out["crop"].mean() + feature_loss(out["features"], out["feat_target"], margin=1.0)).backward()
    finally:
        dist.destroy_process_group()


def _step(task, opt, sched, x):
    out = task(x, teacher_dim=192)
    loss = out["crop"].mean() + feature_loss(out["features"], out["feat_target"] + 0.05, margin=1.0)
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def test_checkpoint_resume_is_exact_and_rebuilds_the_initial_copy(tmp_path):
    cfg = _cfg(**PRETRAINED)
    init = {k: v.clone() for k, v in _student(0).state_dict().items()}  # "the weights file"
    x = torch.randn(1, 3, 28, 28)

    def fresh(seed):
        student = _student(seed)  # another process: another random init ...
        student.load_state_dict(init)  # ... then model.student_weights
        task = build_task(student, cfg, teacher_dims=[192])
        opt, sched = build_optimizer(task, OptimConfig(lr=1e-3, max_steps=50, warmup_steps=2))
        return task, opt, sched

    task, opt, sched = fresh(0)
    for _ in range(2):
        _step(task, opt, sched, x)
    save_checkpoint(
        tmp_path, rank=0, student=task.student, extra_modules={"feat_proj": task.feat_proj}, optimizer=opt,
        scheduler=sched, state=TrainState(step=2), cfg=cfg,
    )  # fmt: skip
    assert set(load_file(tmp_path / STUDENT_FILE)) == set(task.student.state_dict())  # the student alone
    _step(task, opt, sched, x)
    reference = {k: v.clone() for k, v in task.state_dict().items()}

    task2, opt2, sched2 = fresh(7)
    load_checkpoint(
        tmp_path, rank=0, student=task2.student, extra_modules={"feat_proj": task2.feat_proj}, optimizer=opt2,
        scheduler=sched2,
    )  # fmt: skip
    for k, v in task2.initial.state_dict().items():
        assert torch.equal(v, init[k]), k  # the target is the initialisation, not the resumed weights
    _step(task2, opt2, sched2, x)
    for k, v in task2.state_dict().items():
        assert torch.equal(v, reference[k]), k  # bit-identical continuation


def test_compute_losses_uses_the_initial_target():
    """Through compute_losses: feat = L_feat(student tokens, initial tokens), independent of the teacher's tokens."""
    from dad_ray.train.task import compute_losses

    class _Teachers:
        dims = [192]
        models = [create_model("dav2_micro")]

        def dim(self, index):
            return 192

        def token_grid(self, index, height, width):
            return (height // 14, width // 14)

        def predict(self, index, crop, local=None):
            b, _, c, _ = crop.shape
            return torch.rand(b, c, c) + 0.1, torch.randn(b, (c // 14) ** 2, 192), None

    cfg = _cfg(**PRETRAINED, **{"loss.lambda_lg": 0.0, "loss.lambda_grad": 0.0})
    task = build_task(_student(), cfg, teacher_dims=[192])
    batch = {"crop_image": torch.randn(1, 3, 28, 28)}
    parts, out, _ = compute_losses(task, _Teachers(), batch, cfg, use_feat=task.use_feat)
    cos = F.cosine_similarity(out["features"], out["feat_target"], dim=-1)
    keep = cos <= cfg.loss.feat_margin
    expected = ((1 - cos) * keep).sum() / keep.sum().clamp_min(1)
    assert parts["feat"].item() == pytest.approx(expected.item())
    assert isinstance(task, StudentTask)
