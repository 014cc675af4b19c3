"""Where a run's start-up goes, from the timestamps its journal keeps (issue 16: a Tune trial spent ~20 s on 2 cores
before its first step, which makes many short trials expensive).

The process that builds the ``TorchTrainer`` (a Tune trial, or ``jobs/distill.py``) stamps the launch
(:func:`launch_stamp`: its own process start and the time of the call) into the trainer's ``train_loop_config``;
rank 0 adds its worker process's start, the loop's entry and the end of its set-up to the journal's first
``attempt_start`` line (``"startup"``); the first step line has the time that step was issued. :func:`startup_phases`
turns one journal into the phases below. Times are wall clocks of the nodes involved (a multi-node run adds their
offset to the controller phase). A restarted worker group reuses the launch stamp, so only a run's first attempt is
read.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

# (phase, from, to): the keys of the journal's "startup" record, plus "started" (the attempt line's own time) and
# "first_step" (the first step line's time)
PHASES = (
    ("launcher process", "launcher_process", "launch"),  # a Tune trial: its actor's start → the trainer built
    ("controller + worker group", "launch", "worker_process"),  # Ray Train's controller, placement, worker spawn
    ("worker process", "worker_process", "loop"),  # Python, Ray, torch and the model libraries imported
    ("build", "loop", "started"),  # student, teachers, optimizer, resume, DDP wrap
    ("first step", "started", "first_step"),  # the first batch (Ray Data's start) and the step itself
)


def process_start_time() -> float | None:
    """Wall-clock time (seconds since the epoch) at which this process started: Linux's ``/proc``; None where there
    is none."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, counted after the command name
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def launch_stamp() -> dict[str, float | None]:
    """What the launching process adds to the trainer's ``train_loop_config``: its start and the time now."""
    return {"launcher_process": process_start_time(), "launch": time.time()}


def worker_stamp(launch: Mapping[str, Any] | None, loop: float) -> dict[str, float | None]:
    """Rank 0's ``startup`` record: the launch stamp, this worker process's start and the loop's entry ``loop``."""
    return {**(launch or {}), "worker_process": process_start_time(), "loop": loop}


def startup_phases(lines: Iterable[Mapping[str, Any]]) -> dict[str, float] | None:
    """The seconds of each phase of :data:`PHASES` and ``"total"`` (launcher process → first step), from a run's
    journal lines (:func:`dad_ray.train.monitor.read_journal`); only the phases whose two ends were recorded. None
    when the first attempt has no start-up record or never reached a step."""
    attempt = None
    for line in lines:
        if attempt is None:
            if "attempt_start" in line:
                if not isinstance(line.get("startup"), Mapping):
                    return None
                attempt = {**line["startup"], "started": line.get("time")}
        elif "step" in line:
            attempt["first_step"] = line.get("time")
            break
        elif "attempt_start" in line:
            return None  # restarted before its first step line was written
    if attempt is None or attempt.get("first_step") is None:
        return None
    out = {name: attempt[a] - attempt[b] for name, b, a in PHASES if attempt.get(a) is not None and attempt.get(b)}
    first = next((attempt[k] for k in ("launcher_process", "launch", "worker_process", "loop") if attempt.get(k)), None)
    if first is not None:
        out["total"] = attempt["first_step"] - first
    return out
