"""jobs/tune.py end to end on CPU: 4 trials of the smoke preset with ASHA, one failing, interrupted and resumed.

One experiment for the whole module (about 3 minutes on 2 cores): ``jobs/tune.py`` runs in a subprocess with its
own local Ray and is interrupted (SIGINT) once the first two trials have ended (the third has started);
``resume_search`` (what ``jobs/tune.py --resume`` calls) finishes it on this process's Ray. Every test reads that
experiment.

ASHA's rung records live in the scheduler, which ``Tuner.restore`` does not bring back: a rung decision after the
resume only sees results reported after it. So the trial ASHA must stop (lr 1e-6, worse at the rung than the first
trial) runs before the interruption, in the same process as the trial it is compared with.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[2]
MAX_T = 12


def make_space(data: Path, teacher: Path) -> dict:
    return {
        "base_preset": "smoke",
        "overrides": {
            "data.root": str(data),
            "model.teachers.0.weights": str(teacher),
            "train.max_failures": 0,
            "train.image_every": 0,
            "data.data_cpus": 0.5,
        },
        # grid over whole override sets, run one at a time in this order: good, bad lr (ASHA stops it at step 6:
        # worse than the good one there), good, crash. The interruption comes once the third has started.
        "variants": [
            {"optim.lr": 3.0e-3},
            {"optim.lr": 1.0e-6},
            {"optim.lr": 2.0e-3, "loss.normalization": "global"},
            {"optim.lr": 3.0e-3, "train.fail_at_step": 3},
        ],
        "metric": "val_abs_rel",
        "mode": "min",
        "num_samples": 1,
        "scheduler": {"type": "asha", "time_attr": "step", "max_t": MAX_T, "grace_period": 6, "reduction_factor": 2},
        "max_concurrent_trials": 1,
        "seed": 0,
    }


def trial_dirs(exp_dir: Path) -> list[Path]:
    """Tune's trial directories, in trial order (created when a trial starts)."""
    return sorted((p for p in exp_dir.glob("run_trial_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[3]))


def reported_steps(trial_dir: Path) -> list[int]:
    from dad_ray.tune.analysis import _read_results

    return [r["step"] for r in _read_results(trial_dir) if "step" in r]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, smoke_assets):
    workdir = tmp_path_factory.mktemp("tune")
    space_file = workdir / "tune_test.yaml"
    space_file.write_text(yaml.safe_dump(make_space(smoke_assets.data, smoke_assets.teacher)))
    out = workdir / "out"
    exp_dir = out / "tune_test"

    # phase 1: jobs/tune.py, interrupted with SIGINT once the third trial has started (one trial at a time: the
    # first two have ended)
    log = open(workdir / "phase1.log", "w")
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "tune.py"), "--space", str(space_file), "--output", str(out)],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    deadline = time.monotonic() + 400
    while len(trial_dirs(exp_dir)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert proc.poll() is None, f"jobs/tune.py ended before the interruption: {(workdir / 'phase1.log').read_text()}"
    first = trial_dirs(exp_dir)[:2]
    assert len(first) == 2, f"the third trial did not start in time: {(workdir / 'phase1.log').read_text()}"
    steps = [reported_steps(p) for p in first]
    assert steps == [[6, MAX_T], [6]], f"expected the good trial to finish and ASHA to stop the bad one: {steps}"
    snapshot = {p.name: (p / "result.json").read_text() for p in first}
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()
    tune_state = exp_dir / "tuner.pkl"
    assert tune_state.is_file()

    # phase 2: resume on this process's Ray (with dashboard: see dad_ray.runtime)
    from dad_ray.runtime import init_ray
    from dad_ray.tune.analysis import analyze
    from dad_ray.tune.driver import resume_search

    init_ray(4)
    try:
        results = resume_search(exp_dir)
        report = analyze(exp_dir)
        yield {"exp_dir": exp_dir, "results": results, "report": report, "snapshot": snapshot, "workdir": workdir}
    finally:
        ray.shutdown()


def test_all_trials_ran_and_asha_stopped_one_early(experiment):
    report = experiment["report"]
    assert len(report.trials) == 4
    stopped = [t for t in report.trials if t.stopped_early]
    assert len(stopped) >= 1
    assert all(t.steps < MAX_T for t in stopped)
    # ASHA stopped it at the rung because it was worse than the better half seen there. (The trial interrupted by
    # SIGINT may have reached its step-6 checkpoint before Tune stopped it: resumed from there, it reports only step
    # 12 — so only trials that reported at the rung are compared.)
    rung = 6
    at_rung = {t.trial_id: h["metric"] for t in report.trials for h in t.history if h["step"] == rung}
    for t in stopped:
        assert at_rung[t.trial_id] > min(at_rung.values())
    finished = [t for t in report.trials if t.status == "TERMINATED" and not t.stopped_early]
    assert finished and all(t.steps == MAX_T for t in finished)
    assert report.steps_spent < report.steps_full
    assert report.best is not None and report.best.status == "TERMINATED"
    # each trial's start-up, phase by phase, from its journal (dad_ray.train.startup); one machine, one clock
    timed = [t.startup for t in report.trials if t.startup]
    assert len(timed) >= 2
    for phases in timed:
        parts = {k: v for k, v in phases.items() if k != "total"}
        assert len(parts) == 5 and all(v >= 0 for v in parts.values())
        assert phases["total"] == pytest.approx(sum(parts.values()))


def test_failed_trial_is_recorded_and_did_not_stop_the_experiment(experiment):
    report = experiment["report"]
    failed = [t for t in report.trials if t.status == "ERROR"]
    assert len(failed) == 1
    assert failed[0].hparams["optim.lr"] == 3.0e-3 and failed[0].error
    assert len(experiment["results"].errors) == 1
    assert sum(t.status == "TERMINATED" for t in report.trials) == 3


def test_resume_kept_the_finished_trials(experiment):
    exp_dir = experiment["exp_dir"]
    for name, text in experiment["snapshot"].items():
        assert (exp_dir / name / "result.json").read_text() == text, f"{name} was rerun"
    assert len(experiment["snapshot"]) < 4  # the interruption left trials to resume


def test_stopped_trials_released_workers_and_placement_groups(experiment):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        live = [pg for pg in ray.util.placement_group_table().values() if pg["state"] != "REMOVED"]
        if not live and ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]:
            break
        time.sleep(1)
    assert live == []
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]


def test_best_config_round_trips_into_distill(experiment):
    from dad_ray.config import build_config, load_config
    from dad_ray.tune.analysis import write_best_config

    report = experiment["report"]
    path = write_best_config(report)
    assert path == str(experiment["exp_dir"] / "best_config.yaml")  # a string: the experiment may be a URI
    trial_cfg = load_config(experiment["exp_dir"] / "trials" / report.best.trial_id / "config.yaml")
    best = build_config(config_file=path)
    assert best == replace(trial_cfg, train=replace(trial_cfg.train, name=f"best_{report.best.trial_id}"))
    assert best.optim.lr == report.best.hparams["optim.lr"]
    run = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "distill.py"), "--config", str(path), "--print-config"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr
    assert yaml.safe_load(run.stdout)["optim"]["lr"] == report.best.hparams["optim.lr"]


def test_tensorboard_has_scalars_and_hparams(experiment):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    report = experiment["report"]
    for trial in report.trials:
        tb = experiment["exp_dir"] / "trials" / trial.trial_id / "tensorboard"
        acc = EventAccumulator(str(tb))
        acc.Reload()
        scalars = set(acc.Tags()["scalars"])
        # a trial that failed before its first validation has no best metric: only its steps are written
        expected_tags = {"hparams/steps"} | ({"hparams/best_val_abs_rel"} if trial.history else set())
        assert expected_tags <= scalars, trial.trial_id
        assert "loss/total" in scalars, (trial.trial_id, scalars)
        if trial.status == "TERMINATED":
            assert "val/abs_rel" in scalars
        content = acc.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        assert start.session_start_info.hparams["optim.lr"].number_value == pytest.approx(trial.hparams["optim.lr"])
        expected = "error" if trial.status == "ERROR" else "completed"
        assert start.session_start_info.hparams["status"].string_value == expected
        if not (trial.best != trial.best):  # not nan
            (event,) = acc.Scalars("hparams/best_val_abs_rel")
            assert event.value == pytest.approx(trial.best, rel=1e-5)


def test_analyze_job_table_and_plots(experiment):
    run = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "analyze.py"), str(experiment["exp_dir"])],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr
    assert "stopped by ASHA" in run.stdout and "ERROR" in run.stdout and "search efficiency" in run.stdout
    assert "start-up to the first step, median of" in run.stdout
    plots = experiment["exp_dir"] / "plots"
    names = {p.name for p in plots.glob("*.png")}
    assert {"validation_curves.png", "metric_vs_optim_lr.png"} <= names
    assert all((plots / n).stat().st_size > 1000 for n in names)


def test_invalid_space_fails_before_any_trial(tmp_path):
    space = make_space(tmp_path / "data", tmp_path / "teacher.safetensors")
    space["variants"][0] = {"optim.lr": 3.0e-3, "data.crop_size": 60}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(space))
    run = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "tune.py"), "--space", str(bad), "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert run.returncode == 2
    assert "data.crop_size" in run.stderr and "multiple of 14" in run.stderr
    assert not (tmp_path / "out").exists()
