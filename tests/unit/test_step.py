"""The training step (issue 16): one step function for every loop, no host read per micro-batch, teachers in bf16
under inference mode with crop and patches in one pass, SDPA attention, one teacher per optimizer step on every
rank, the real-step batch-size probe, fused AdamW on CUDA, ``train.compile``."""

from __future__ import annotations

import ast
import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import dad_ray
import dad_ray.train.autobatch as autobatch
from dad_ray.config import build_config
from dad_ray.models import create_model, save_weights
from dad_ray.train.monitor import Journal, Monitor, read_journal, scale_stats
from dad_ray.train.schedule import build_optimizer, use_fused
from dad_ray.train.step import build_plain_step, build_teachers, synthetic_batch, teacher_dtype
from dad_ray.train.task import TeacherPool

PACKAGE = Path(dad_ray.__file__).parent


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine two threads spin-wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("teacher") / "micro.safetensors"
    torch.manual_seed(1)
    save_weights(create_model("dav2_micro"), path)
    return str(path)


def tiny_cfg(weights: str, teachers: int = 1, **overrides):
    """The smoke preset at 28 px with ``teachers`` dav2_micro teachers (equal probabilities)."""
    base = {
        "data.crop_size": 28,
        "data.local_patch_size": 28,
        "data.global_size": [28, 42],
        "data.batch_size": 2,
        "model.teachers.0.weights": weights,
        "loss.feat_target": "teacher",
    }
    cfg = build_config("smoke", overrides={**base, **overrides})
    if teachers > 1:
        one = cfg.model.teachers[0]
        pool = tuple(type(one)(one.name, weights, 1.0 / teachers) for _ in range(teachers))
        cfg = type(cfg)(**{**cfg.__dict__, "model": type(cfg.model)(**{**cfg.model.__dict__, "teachers": pool})})
    return cfg


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# ----------------------------------------------------------------------------------------------------------------
# One teacher per optimizer step, the same on every rank


def test_every_rank_draws_the_same_teacher_once_per_optimizer_step(weights):
    cfg = tiny_cfg(weights, teachers=2, **{"optim.grad_accum": 2, "data.global_size": [28, 28]})
    batch = synthetic_batch(cfg, 1, torch.device("cpu"))
    ranks = []
    for rank in (0, 1):  # what two Ray Train ranks do: rank-specific global seeds, the same teacher seed
        torch.manual_seed(1000 + rank)
        step = build_plain_step(cfg, torch.device("cpu"))
        calls = [count_calls(m) for m in step.teachers.models]
        used = []
        for _ in range(4):  # optimizer steps
            first, second = step.micro(batch), step.micro(batch)
            assert first.teacher_index == second.teacher_index  # both micro-batches of a step
            assert not first.sync and second.sync
            step.optimizer_step()
            used.append(first.teacher_index)
        assert [c[0] for c in calls] == [2 * used.count(0), 2 * used.count(1)]  # the drawn teacher really ran
        ranks.append(used)
    expected_gen = torch.Generator().manual_seed(cfg.train.seed)  # one draw per optimizer step, not per micro-batch
    expected = [
        int(torch.multinomial(torch.tensor([0.5, 0.5], dtype=torch.float64), 1, generator=expected_gen))
        for _ in range(4)
    ]
    assert ranks[0] == ranks[1] == expected
    assert set(expected) == {0, 1}


# ----------------------------------------------------------------------------------------------------------------
# Teachers: bf16 weights, inference mode, one pass, SDPA


def test_teacher_runs_crop_and_patches_in_one_pass_when_their_sizes_match(weights):
    pool = TeacherPool(tiny_cfg(weights).model.teachers, torch.device("cpu"), seed=0)
    calls = count_calls(pool.models[0])
    g = torch.Generator().manual_seed(0)
    crop, local = torch.randn(2, 3, 28, 28, generator=g), torch.randn(2, 4, 3, 28, 28, generator=g)
    t_crop, t_feat, t_local = pool.predict(0, crop, local)
    assert calls[0] == 1
    assert t_crop.shape == (2, 28, 28) and t_feat.shape == (2, 4, 96) and t_local.shape == (2, 4, 28, 28)
    with torch.no_grad():  # the same as separate passes
        ref_crop, ref_feat = pool.models[0](crop, return_features=True)
        ref_local = pool.models[0](local.flatten(0, 1)).view(2, 4, 28, 28)
    torch.testing.assert_close(t_crop, ref_crop, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(t_feat, ref_feat, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(t_local, ref_local, rtol=1e-5, atol=1e-5)
    # float32 normal tensors (made outside inference mode): the losses may save them for backward
    assert all(t.dtype == torch.float32 and not t.is_inference() for t in (t_crop, t_feat, t_local))
    student = torch.rand(2, 28, 28, requires_grad=True)
    (student * t_crop).sum().backward()  # an inference tensor here would raise

    calls[0] = 0
    pool.predict(0, crop, torch.randn(2, 4, 3, 42, 42, generator=g))  # patch size differs: one pass per size
    assert calls[0] == 2
    calls[0] = 0
    assert pool.predict(0, crop)[2] is None and calls[0] == 1  # no local-global term: the crop alone


def test_teacher_weights_are_stored_in_bf16_under_bf16_precision(weights):
    cpu = torch.device("cpu")
    fp32, bf16 = tiny_cfg(weights), tiny_cfg(weights, **{"train.precision": "bf16"})
    assert teacher_dtype(fp32, cpu) == torch.float32  # CPU default: unchanged numbers
    assert teacher_dtype(fp32, torch.device("cuda")) == torch.bfloat16  # 'auto' on a GPU
    pool = build_teachers(bf16, cpu)
    assert {p.dtype for p in pool.models[0].parameters()} == {torch.bfloat16}
    t_crop, t_feat, _ = pool.predict(0, torch.randn(1, 3, 28, 28))
    assert t_crop.dtype == t_feat.dtype == torch.float32
    assert build_teachers(tiny_cfg(weights, **{"loss.mode": "supervised"}), cpu) is None


@pytest.mark.parametrize("name", ["dav2_micro", "dav2_tiny"])
def test_attention_takes_the_fused_sdpa_path(name, monkeypatch):
    model = create_model(name).eval()
    flags = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
    assert len(flags) == model.spec.depth and all(flags)
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.inference_mode():
        model(torch.randn(1, 3, 28, 28))
    assert len(calls) == model.spec.depth  # every block's attention went through SDPA


# ----------------------------------------------------------------------------------------------------------------
# No host synchronisation inside a step; the monitor and journal read once per window


@contextlib.contextmanager
def no_host_reads(monkeypatch):
    """Every way a tensor's value reaches Python raises inside the block, except while ``allowed`` is entered."""
    state = {"on": True}

    def forbid(name):
        real = getattr(torch.Tensor, name)

        def guarded(self, *a, **k):
            if state["on"]:
                raise AssertionError(f"host read: Tensor.{name}")
            return real(self, *a, **k)

        return guarded

    @contextlib.contextmanager
    def allowed():
        state["on"] = False
        try:
            yield
        finally:
            state["on"] = True

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "__float__", "__int__", "__bool__", "numpy", "__index__"):
            m.setattr(torch.Tensor, name, forbid(name))
        yield allowed


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_a_step_reads_nothing_back_to_the_host(weights, monkeypatch, tmp_path):
    cfg = tiny_cfg(weights)
    step = build_plain_step(cfg, torch.device("cpu"))
    step.teachers.draw = lambda: 0  # the draw is a CPU generator's, tested above
    batch = synthetic_batch(cfg, 1, torch.device("cpu"))
    monitor, journal = Monitor(None, 1, 10, 0), Journal(tmp_path / "j.jsonl", 0)
    with no_host_reads(monkeypatch) as allowed:
        real_step = step.optimizer.step

        def optimizer_step():  # PyTorch's CPU AdamW reads its CPU step counter (the fused CUDA kernel does not)
            with allowed():
                real_step()

        step.optimizer.step = optimizer_step
        for i in range(2):
            micro = step.micro(batch)
            monitor.add({f"loss/{k}": v for k, v in micro.parts.items()})
            monitor.add(scale_stats(micro.out["crop"], "pred/student"))
            monitor.add(scale_stats(micro.teacher_crop, "pred/teacher"))
            monitor.add({"train/grad_norm": step.optimizer_step()})
            journal.write(i + 1, 0, micro.parts["total"], micro.teacher_index)
    scalars = monitor.flush(2, {}, 1)
    assert scalars["train/grad_norm"] > 0 and scalars["loss/total"] > 0
    journal.close()
    assert [e["step"] for e in read_journal(tmp_path / "j.jsonl") if "step" in e] == [1, 2]


def test_monitor_averages_device_sums_over_the_window():
    monitor = Monitor(None, 1, 10, 0)
    monitor.add({"a": torch.tensor(1.0), "b": 4.0})
    monitor.add({"a": torch.tensor(3.0), "b": torch.tensor(2.0)})  # a Python number then a tensor: both summed
    monitor.add({"a": torch.tensor(0.5, dtype=torch.bfloat16)})
    scalars = monitor.flush(1, {"decoder": 1e-3}, 1)
    assert scalars["a"] == pytest.approx(4.5 / 3) and scalars["b"] == 3.0 and scalars["lr/decoder"] == 1e-3
    assert "a" not in monitor.flush(2, {}, 1)  # a new window


def test_scale_stats_are_the_batch_means_of_median_and_mad():
    maps = torch.tensor([[[1.0, 2.0], [3.0, 10.0]], [[0.0, 0.0], [0.0, 4.0]]])  # medians 2 (lower) and 0
    stats = scale_stats(maps, "p")
    # MAD around the median: (1 + 0 + 1 + 8) / 4 = 2.5 and (0 + 0 + 0 + 4) / 4 = 1
    assert stats["p/median"].item() == 1.0 and stats["p/mad"].item() == 1.75


def test_journal_buffers_step_lines_and_writes_exact_losses_at_flush(tmp_path):
    path = tmp_path / "progress.jsonl"
    journal = Journal(path, 0, ["n0", "n1"])
    losses = [torch.tensor(0.1), torch.tensor(1 / 3)]
    journal.write(1, 0, losses[0], teacher=1)
    journal.write(2, 0, losses[1], teacher=0)
    assert [e for e in read_journal(path) if "step" in e] == []  # nothing read back before the flush
    assert journal.pending_teachers() == [1, 0]
    journal.flush([[1, 0], [1, 0]])  # rank 0's and rank 1's teachers
    journal.checkpoint(2)
    journal.write(3, 1, 0.25)  # supervised: no teacher
    journal.close()
    lines = read_journal(path)
    assert lines[0]["attempt_start"] == 0 and lines[0]["node_ids"] == ["n0", "n1"]
    steps = [e for e in lines if "step" in e]
    assert [e["loss"] for e in steps] == [losses[0].item(), losses[1].item(), 0.25]  # float32 values, exact
    assert [e.get("teachers") for e in steps] == [[1, 1], [0, 0], None]
    assert [next(iter(e)) for e in lines[1:]] == ["step", "step", "checkpoint", "step"]
    assert json.loads(path.read_text().splitlines()[1])["time"] > 0


# ----------------------------------------------------------------------------------------------------------------
# batch_size: auto probes with the real step


def test_probe_runs_the_real_step_and_leaves_no_trace(weights):
    cfg = tiny_cfg(weights, teachers=2)
    step = build_plain_step(cfg, torch.device("cpu"))
    calls = [count_calls(m) for m in step.teachers.models]
    params = {k: v.clone() for k, v in step.model.state_dict().items()}
    draws, rng = step.teachers.generator.get_state(), torch.get_rng_state()
    fits = autobatch.probe_fits(cfg, step.model, torch.device("cpu"), step.teachers, step.optimizer)
    assert fits(3)
    assert [c[0] for c in calls] == [1, 1]  # every teacher, one forward each (crop + patches in one pass)
    assert all(torch.equal(v, params[k]) for k, v in step.model.state_dict().items())
    assert all(p.grad is None for p in step.model.parameters()) and not step.optimizer.state
    assert torch.equal(step.teachers.generator.get_state(), draws) and torch.equal(torch.get_rng_state(), rng)


def test_probe_reports_out_of_memory_as_not_fitting(weights, monkeypatch):
    cfg = tiny_cfg(weights)
    step = build_plain_step(cfg, torch.device("cpu"))
    seen = []

    def fake_step(task, teachers, batch, cfg, **kwargs):
        b = batch["crop_image"].shape[0]
        seen.append(b)
        if b > 5:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(autobatch, "forward_backward", fake_step)
    fits = autobatch.probe_fits(cfg, step.model, torch.device("cpu"), step.teachers, step.optimizer)
    assert autobatch.largest_fitting(fits, limit=16) == 5
    assert seen[:5] == [1, 2, 4, 8, 6]  # doubling, then bisection between 4 and 8
    with pytest.raises(ValueError, match="needs a GPU"):
        autobatch.resolve_batch_size(
            tiny_cfg(weights, **{"data.batch_size": "auto", "train.use_gpu": True}), None, torch.device("cpu")
        )


# ----------------------------------------------------------------------------------------------------------------
# Fused AdamW on CUDA, train.compile


def test_fused_adamw_only_when_every_parameter_is_on_cuda():
    assert not use_fused([torch.zeros(1)]) and not use_fused([])
    cuda = SimpleNamespace(device=torch.device("cuda"))
    assert use_fused([cuda, cuda]) and not use_fused([cuda, torch.zeros(1)])
    optimizer, _ = build_optimizer(torch.nn.Linear(2, 2), build_config("smoke").optim)
    assert not optimizer.defaults.get("fused")  # CPU: PyTorch's default AdamW, numbers unchanged


def test_train_compile_compiles_the_student_and_every_teacher(weights, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    build_plain_step(tiny_cfg(weights, teachers=2), torch.device("cpu"))
    assert compiled == []  # off by default
    step = build_plain_step(tiny_cfg(weights, teachers=2, **{"train.compile": True}), torch.device("cpu"))
    assert compiled == [*step.teachers.models, step.model.student]


# ----------------------------------------------------------------------------------------------------------------
# One step function for every loop


def _calls(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            names.add(f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else "")
    return names


def test_every_loop_calls_the_one_step_function():
    train = PACKAGE / "train"
    users = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if "compute_losses" in _calls(p)}
    assert users == {"train/step.py"}  # the loss, forward and backward of a step are composed in one place
    for loop in (train / "worker.py", PACKAGE / "bench" / "train.py"):  # the Ray Train loop, the plain loop
        calls = _calls(loop)
        assert {"TrainStep", "build_plain_step"} & calls, loop
        assert not {"backward", "clip_grad_norm_", "zero_grad"} & calls, loop  # no second step body
    assert "build_plain_step" in _calls(PACKAGE / "bench" / "gpu.py")  # the GPU benchmark times the same step


def test_ddp_all_reduces_only_on_the_last_micro_batch(weights, tmp_path, monkeypatch):
    """The step under DDP (one gloo process): gradients accumulate under no_sync, the last micro-batch syncs."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        cfg = tiny_cfg(weights, **{"optim.grad_accum": 3, "data.global_size": [28, 28]})
        plain = build_plain_step(cfg, torch.device("cpu"))
        plain.model = DDP(plain.model)
        entered = []
        real_no_sync = DDP.no_sync

        @contextlib.contextmanager
        def no_sync(self):
            entered.append(1)
            with real_no_sync(self):
                yield

        monkeypatch.setattr(DDP, "no_sync", no_sync)
        batch = synthetic_batch(cfg, 1, torch.device("cpu"))
        syncs = [plain.micro(batch).sync for _ in range(6)]
        assert syncs == [False, False, True, False, False, True] and len(entered) == 4
    finally:
        dist.destroy_process_group()
