"""``model.teacher_placement: data`` on a real local Ray: the smoke preset trained with the teacher in the workers
and with the teacher in a Ray Data actor stage gives the same loss journal, and a teacher actor killed mid-run is
restarted by Ray with no step lost."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from dad_ray.train.monitor import read_journal

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_local():
    from dad_ray.runtime import init_ray

    init_ray(4)
    yield
    ray.shutdown()


def _stage_actor_pids() -> list[int]:
    """PIDs of live teacher-stage actor processes (Ray titles them ``ray::MapWorker(MapBatches(TeacherStage))``);
    read from /proc, which costs nothing, unlike polling Ray's state API on 2 cores."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"TeacherStage" in f.read():
                        pids.append(int(entry))
            except OSError:  # the process ended while we looked
                continue
    return pids


def _kill_a_teacher_actor(killed: list, stop: threading.Event, after_s: float = 2.0) -> None:
    """SIGKILL the first teacher-stage actor process once it has been alive ``after_s`` seconds (mid-run: the
    pool lives for one epoch, a few seconds in the smoke preset)."""
    first_seen = None
    while not stop.is_set():
        pids = _stage_actor_pids()
        if pids:
            first_seen = first_seen or time.monotonic()
            if time.monotonic() - first_seen >= after_s:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
        time.sleep(0.2)


def test_data_placement_matches_the_worker_placement_and_survives_a_killed_teacher_actor(
    ray_local, tmp_path, smoke_assets
):
    from dad_ray.train import fit

    common = {"model.teacher_stage.transport": "float32", "train.max_failures": 0}
    worker = smoke_assets.config(tmp_path / "runs", "worker", **common)
    staged = smoke_assets.config(tmp_path / "runs", "data", **common, **{"model.teacher_placement": "data"})
    fit(worker)

    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_a_teacher_actor, args=(killed, stop), daemon=True)
    killer.start()
    try:
        result = fit(staged)  # max_failures 0: a training-worker failure would fail the run
    finally:
        stop.set()
        killer.join(timeout=10)
    assert killed, "no teacher-stage actor was seen alive long enough to be killed"
    assert result.metrics["step"] == staged.optim.max_steps

    def losses(name: str) -> dict[int, float]:
        journal = read_journal(tmp_path / "runs" / name / "progress.jsonl")
        assert [e["attempt_start"] for e in journal if "attempt_start" in e] == [0]  # no Train restart
        return {e["step"]: e["loss"] for e in journal if "step" in e}

    a, b = losses("worker"), losses("data")
    assert sorted(b) == list(range(1, staged.optim.max_steps + 1))  # every step once: none lost, none repeated
    # Same rows in the same order (preserve_order), same teacher weights, same float32 inputs: the stage's
    # forward differs from the worker's only by float summation order where batches are grouped differently.
    np.testing.assert_allclose([b[s] for s in sorted(a)], [a[s] for s in sorted(a)], rtol=1e-4)
