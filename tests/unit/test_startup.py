"""Start-up phases from a run's journal (issue 16: where a Tune trial's ~20 s before its first step go)."""

from __future__ import annotations

import math
import sys
import time

import pytest

from dad_ray.train.monitor import Journal, read_journal
from dad_ray.train.startup import launch_stamp, process_start_time, startup_phases, worker_stamp
from dad_ray.tune.analysis import TrialSummary, startup_summary

STAMP = {"launcher_process": 100.0, "launch": 103.0, "worker_process": 107.0, "loop": 113.5}


def _lines(startup=STAMP, started=114.0, first_step=117.5):
    return [
        {"attempt_start": 0, "node_ids": ["n0"], "time": started, "startup": startup},
        {"step": 1, "epoch": 0, "loss": 1.0, "time": first_step},
        {"step": 2, "epoch": 0, "loss": 0.9, "time": 118.0},
    ]


def test_phases_of_a_fresh_run():
    assert startup_phases(_lines()) == {
        "launcher process": 3.0,
        "controller + worker group": 4.0,
        "worker process": 6.5,
        "build": 0.5,
        "first step": 3.5,
        "total": 17.5,
    }


def test_only_the_first_attempt_counts():
    restarted = [*_lines(), {"attempt_start": 2, "node_ids": ["n1"], "time": 500.0, "startup": STAMP}]
    restarted.append({"step": 3, "epoch": 0, "loss": 0.8, "time": 510.0})
    assert startup_phases(restarted)["total"] == 17.5


@pytest.mark.parametrize(
    "lines",
    [
        [],  # nothing written
        _lines()[:1],  # never reached a step
        [{k: v for k, v in _lines()[0].items() if k != "startup"}, *_lines()[1:]],  # a journal without the record
        [_lines()[0], {"attempt_start": 0, "node_ids": [], "time": 300.0}, *_lines()[1:]],  # restarted before step 1
    ],
)
def test_no_phases_without_a_first_attempt_that_stepped(lines):
    assert startup_phases(lines) is None


def test_without_a_process_start_the_phases_that_need_it_are_left_out():
    stamp = {**STAMP, "launcher_process": None, "worker_process": None}
    phases = startup_phases(_lines(startup=stamp))
    assert phases == {"build": 0.5, "first step": 3.5, "total": 117.5 - 103.0}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_process_start_time_is_this_process_start():
    start = process_start_time()
    assert start is not None and 0 < time.time() - start < 7 * 24 * 3600
    launch = launch_stamp()
    assert launch["launcher_process"] == start and abs(launch["launch"] - time.time()) < 60
    assert worker_stamp(launch, loop=5.0) == {**launch, "worker_process": start, "loop": 5.0}


def test_the_journal_keeps_the_record_the_phases_are_read_from(tmp_path):
    path = tmp_path / "progress.jsonl"
    journal = Journal(path, 0, ["n0"], startup=worker_stamp(launch_stamp(), loop=time.time()))
    journal.write(1, 0, 1.25)
    journal.close()
    phases = startup_phases(read_journal(path))
    assert set(phases) >= {"build", "first step", "total"}
    assert all(math.isfinite(v) for v in phases.values())
    # one process plays launcher and worker here (its start precedes the launch); the worker's own phases are real
    assert phases["build"] >= 0 and phases["first step"] >= 0 and phases["total"] >= 0


def test_summary_line_takes_the_median_of_each_phase():
    def trial(tid, startup):
        return TrialSummary(tid, "TERMINATED", {}, 0.2, 12, 12, False, startup=startup)

    trials = [
        trial("a", startup_phases(_lines())),
        trial("b", startup_phases(_lines(first_step=119.5))),  # first step 5.5 s, total 19.5 s
        trial("c", startup_phases(_lines(first_step=127.5))),  # first step 13.5 s, total 27.5 s
        trial("d", {}),  # never started
    ]
    line = startup_summary(trials)
    assert line.startswith("start-up to the first step, median of 3 trials: 19.5 s (launcher process 3.0 s, ")
    assert line.endswith("build 0.5 s, first step 5.5 s)")
    assert startup_summary([trial("d", {})]) is None
