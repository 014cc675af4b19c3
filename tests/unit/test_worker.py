"""The worker's pieces that run without Ray: the checkpointed unit and the data-wait timer."""


import pytest
import torch

import dad_ray.train.worker as worker
from dad_ray.config import OptimConfig, build_config
from dad_ray.models import create_model
from dad_ray.train.checkpoint import (
    DATA_POSITION_FILE,
    STATE_FILE,
    Checkpointed,
    TrainState,
    check_data_position,
    checkpoint_dir_name,
    latest_data_position,
    load_checkpoint,
    mark_committed,
)
from dad_ray.train.schedule import build_optimizer
from dad_ray.train.task import StudentTask
from dad_ray.train.worker import timed


class Draws:
    """Stands in for the teacher pool: a generator whose state travels with the checkpoint."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def _parts(seed: int, extra_state: dict) -> Checkpointed:
    torch.manual_seed(seed)
    task = StudentTask(create_model("dav2_micro"), teacher_dims=[192])
    opt, sched = build_optimizer(task, OptimConfig(lr=1e-3, max_steps=50, warmup_steps=3))
    return Checkpointed(task.student, {"feat_proj": task.feat_proj}, opt, sched, extra_state)


def test_checkpointed_saves_and_restores_one_unit_in_the_checkpoint_format(tmp_path):
    draws = Draws(5)
    saved = _parts(0, {"teachers": draws})
    draws.generator.manual_seed(11)  # the state at save time is what comes back
    expected_draw = torch.rand(1, generator=torch.Generator().set_state(draws.generator.get_state()))
    state = TrainState(step=3, epoch=1, epoch_batches=5, val_round=2, best_abs_rel=0.25)
    saved.save(tmp_path, rank=0, state=state, cfg=build_config("smoke"))

    # the plain functions read what the unit wrote: the on-disk format is save_checkpoint's
    blob = torch.load(tmp_path / STATE_FILE, weights_only=True)
    assert set(blob) == {
        "optimizer", "scheduler", "modules", "step", "epoch", "epoch_batches", "val_round", "best_abs_rel", "extra",
    }  # fmt: skip
    assert not (tmp_path / DATA_POSITION_FILE).exists()  # marked only once Ray Train committed the checkpoint
    assert set(blob["modules"]) == {"feat_proj"} and set(blob["extra"]) == {"teachers"}

    restored_draws = Draws(99)
    restored = _parts(1, {"teachers": restored_draws})
    assert restored.load(tmp_path, rank=0) == state
    assert torch.equal(torch.rand(1, generator=restored_draws.generator), expected_draw)
    for key, value in saved.student.state_dict().items():
        assert torch.equal(value, restored.student.state_dict()[key]), key
    for key, value in saved.extra_modules["feat_proj"].state_dict().items():
        assert torch.equal(value, restored.extra_modules["feat_proj"].state_dict()[key]), key
    assert restored.scheduler.state_dict() == saved.scheduler.state_dict()

    # a supervised run's checkpoint has no teacher state: loading it leaves the pool's draw state alone
    _parts(2, {}).save(tmp_path / "supervised", rank=0, state=state, cfg=build_config("smoke"))
    untouched = Draws(7)
    before = untouched.generator.get_state()
    _parts(3, {"teachers": untouched}).load(tmp_path / "supervised", rank=0)
    assert torch.equal(untouched.generator.get_state(), before)
    _, extra = load_checkpoint(tmp_path / "supervised", rank=0, **_kwargs(_parts(4, {})))
    assert extra == {}


def _kwargs(parts: Checkpointed) -> dict:
    return {
        "student": parts.student,
        "extra_modules": dict(parts.extra_modules),
        "optimizer": parts.optimizer,
        "scheduler": parts.scheduler,
    }


def test_timed_counts_only_the_wait_for_each_item(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(worker.time, "perf_counter", lambda: clock[0])

    def loader(n: int):
        for i in range(n):
            clock[0] += 1.0 + i  # producing item i takes 1 + i seconds
            yield i

    out = []
    for item, wait in timed(loader(3)):
        out.append((item, wait))
        clock[0] += 10.0  # the consumer's work on an item is not waiting for data
    assert out == [(0, 1.0), (1, 2.0), (2, 3.0)]
    assert list(timed([])) == []


def test_the_newest_committed_checkpoints_data_position_is_what_a_resumed_run_builds_its_data_for(tmp_path):
    """Ray Train's dataset factory reads the newest committed checkpoint's data position (directory names sort by
    step; a checkpoint is marked once committed); a worker resumed from another checkpoint refuses to go on with
    data built for the wrong epoch — unless its checkpoint only lacked the mark (its node died between the commit and
    the mark): rank 0 marks it and the workers restart on the right data."""
    runs = tmp_path / "checkpoints"
    assert latest_data_position(str(runs)) is None  # no run yet: epoch 0
    check_data_position(TrainState(), str(runs))
    for step, epoch, taken in ((6, 0, 6), (16, 1, 4), (12, 1, 0)):
        (runs / checkpoint_dir_name(step)).mkdir(parents=True)
        mark_committed(str(runs), TrainState(step=step, epoch=epoch, epoch_batches=taken))
    (runs / "checkpoint_step0000020").mkdir()  # uploaded, never committed (its node died): no mark, not used
    (runs / "checkpoint_step0000020" / STATE_FILE).write_bytes(b"")
    (runs / ".validate_storage_marker").write_text("")
    assert latest_data_position(str(runs)) == {"step": 16, "epoch": 1, "epoch_batches": 4}
    assert latest_data_position(f"file://{runs}") == {"step": 16, "epoch": 1, "epoch_batches": 4}
    check_data_position(TrainState(step=16, epoch=1, epoch_batches=4), str(runs))
    with pytest.raises(RuntimeError, match=r"step 6 \(epoch 0\).*built for epoch 1.*cannot continue"):
        check_data_position(TrainState(step=6, epoch=0, epoch_batches=6), str(runs))

    # committed at step 24 (epoch 2), the node lost before the mark: rank 1 only reports, rank 0 marks
    (runs / checkpoint_dir_name(24)).mkdir()
    resumed = TrainState(step=24, epoch=2, epoch_batches=2)
    with pytest.raises(RuntimeError, match="marked committed now"):
        check_data_position(resumed, str(runs), rank=1)
    assert latest_data_position(str(runs))["step"] == 16
    with pytest.raises(RuntimeError, match="marked committed now"):
        check_data_position(resumed, str(runs), rank=0)
    assert latest_data_position(str(runs)) == {"step": 24, "epoch": 2, "epoch_batches": 2}
    check_data_position(resumed, str(runs), rank=0)  # the restarted workers go on
