"""Tune driver: one trial = one distillation run (a ``TorchTrainer`` fitted inside a Tune function trainable).

Layout of an experiment ``<output>/<experiment>/``:

    space.yaml              the search space as given, with --set overrides (``--resume`` rebuilds everything from it)
    base_config.yaml        the resolved base config every trial starts from (paths made absolute)
    <trial dirs>/           Tune's own per-trial results (result.json, progress.csv, ray/tune/* event files)
    trials/<trial id>/      each trial's distillation run: config.yaml, tensorboard/ (+ HParams), checkpoints/
    tuner.pkl, experiment_state-*.json   Tune's state (Tuner.restore)
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from dad_ray.config import ExperimentConfig, get_dotted, save_config, to_dict, with_absolute_paths
from dad_ray.config.loader import read_yaml_mapping
from dad_ray.runtime import init_ray
from dad_ray.tune.hparams import HParamsCallback
from dad_ray.tune.space import SearchSpace, parse_space

logger = logging.getLogger(__name__)

SPACE_FILE = "space.yaml"
NAME_KEY = "_name"  # space.yaml's extra key: the experiment's name
BASE_FILE = "base_config.yaml"
TRIALS_DIR = "trials"


def experiment_dir(output: str | os.PathLike, name: str) -> Path:
    return Path(output).resolve() / name


def trial_run_dir(exp_dir: str | os.PathLike, trial_id: str) -> Path:
    return Path(exp_dir) / TRIALS_DIR / trial_id


def with_absolute_base(space: SearchSpace) -> SearchSpace:
    """Trials run in their own working directories: the space with its base config's local paths made absolute."""
    return replace(space, base=with_absolute_paths(space.base))


def hparams_of(space: SearchSpace, exp_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The resolved value of every searched key in a trial's config."""
    cfg = space.trial_config(config, name="hparams", output=str(exp_dir / TRIALS_DIR))
    tree = to_dict(cfg)
    return {key: get_dotted(tree, key) for key in space.searched_keys}


def run_trial(config: dict[str, Any], space: SearchSpace, exp_dir: str) -> None:
    """Tune function trainable: build the trial's config, fit one TorchTrainer, forward its reports to Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from dad_ray.train import build_trainer, run_dir

    trial_id = tune.get_context().get_trial_id()
    cfg = space.trial_config(config, name=trial_id, output=f"{exp_dir}/{TRIALS_DIR}")
    save_config(cfg, Path(run_dir(cfg)) / "config.yaml")
    logger.info("trial %s: %s", trial_id, {k: v for k, v in config.items()})
    result = build_trainer(cfg, callbacks=[TuneReportCallback()]).fit()
    if result.error is not None:
        raise RuntimeError(f"trial {trial_id}: training failed: {result.error}") from result.error


def default_concurrency(space: SearchSpace, cfg: ExperimentConfig) -> int:
    """Cluster GPUs ÷ GPUs per trial; on CPU, how many trials' workers + data tasks fit beside one free CPU."""
    import ray

    resources = ray.cluster_resources()
    if space.gpus_per_trial > 0:
        return max(1, int(resources.get("GPU", 0) // space.gpus_per_trial))
    per_trial = cfg.train.num_workers * cfg.train.cpus_per_worker + cfg.data.data_cpus
    return max(1, int((resources.get("CPU", 1) - 1) // per_trial))


def _trainable(space: SearchSpace, exp_dir: Path, cfg: ExperimentConfig):
    trainable = tune.with_parameters(run_trial, space=space, exp_dir=str(exp_dir))
    resources: dict[str, float] = {"cpu": space.cpus_per_trial}
    if space.gpus_per_trial > 0 and not cfg.train.use_gpu:
        resources["gpu"] = space.gpus_per_trial
    return tune.with_resources(trainable, resources)


def _run_config(space: SearchSpace, exp_dir: Path) -> tune.RunConfig:
    callback = HParamsCallback(
        hparams_of=lambda config: hparams_of(space, exp_dir, config),
        tensorboard_dir_of=lambda trial_id: trial_run_dir(exp_dir, trial_id) / "tensorboard",
        metric=space.metric,
        mode=space.mode,
    )
    return tune.RunConfig(
        name=exp_dir.name,
        storage_path=str(exp_dir.parent),
        failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        callbacks=[callback],
        verbose=1,
    )


def _scheduler(space: SearchSpace):
    if space.scheduler is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    s = space.scheduler
    return ASHAScheduler(
        time_attr=s.time_attr, max_t=s.max_t, grace_period=s.grace_period, reduction_factor=s.reduction_factor
    )


def prepare(space: SearchSpace, output: str | os.PathLike, name: str | None = None) -> tuple[SearchSpace, Path]:
    """Resolve paths, write space.yaml/base_config.yaml, and run ``prepare_experiment`` once (data + teacher)."""
    from dad_ray.train import prepare_experiment

    exp_dir = experiment_dir(output, name or space.name)
    space = with_absolute_base(space)
    cfg = space.base
    cfg = prepare_experiment(replace(cfg, train=replace(cfg.train, name="prepare", output=str(exp_dir / TRIALS_DIR))))
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / SPACE_FILE).write_text(yaml.safe_dump({**space.source, NAME_KEY: exp_dir.name}, sort_keys=False))
    save_config(cfg, exp_dir / BASE_FILE)
    return space, exp_dir


def run_search(
    space: SearchSpace,
    output: str | os.PathLike,
    *,
    name: str | None = None,
    max_concurrent_trials: int | None = None,
    stop: Any = None,
) -> tune.ResultGrid:
    """Validate (already done by :func:`~dad_ray.tune.space.load_space`), prepare data/teacher once, then run every
    trial."""
    space, exp_dir = prepare(space, output, name)
    cfg = space.base
    concurrency = max_concurrent_trials or space.max_concurrent_trials or default_concurrency(space, cfg)
    logger.info(
        "experiment %s: %d trials, %d at a time, ASHA %s → %s",
        exp_dir.name,
        space.total_trials(),
        concurrency,
        space.scheduler,
        exp_dir,
    )
    from ray.tune.search import BasicVariantGenerator

    tuner = tune.Tuner(
        _trainable(space, exp_dir, cfg),
        param_space=space.param_space(),
        tune_config=tune.TuneConfig(
            metric=space.metric,
            mode=space.mode,
            num_samples=space.num_samples,
            scheduler=_scheduler(space),
            search_alg=BasicVariantGenerator(random_state=space.seed, max_concurrent=concurrency),
            max_concurrent_trials=concurrency,
            time_budget_s=space.time_budget_s,
        ),
        run_config=_run_config(space, exp_dir) if stop is None else _with_stop(_run_config(space, exp_dir), stop),
    )
    return tuner.fit()


def _with_stop(run_config: tune.RunConfig, stop: Any) -> tune.RunConfig:
    return replace(run_config, stop=stop)


def load_experiment_space(exp_dir: str | os.PathLike) -> SearchSpace:
    """The space an experiment directory was started with (its ``space.yaml``), base paths made absolute."""
    exp_dir = Path(exp_dir).resolve()
    path = exp_dir / SPACE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a tune experiment directory (no {SPACE_FILE})")
    data = read_yaml_mapping(path, "search space")
    name = data.pop(NAME_KEY, exp_dir.name)
    return with_absolute_base(parse_space(data, path=str(path), name=name))


def resume_search(exp_dir: str | os.PathLike, *, restart_errored: bool = False) -> tune.ResultGrid:
    """Continue an interrupted experiment: finished trials are kept, unfinished ones resume from their checkpoints
    (each trial's TorchTrainer continues its own run), errored ones are restarted only if asked."""
    exp_dir = Path(exp_dir).resolve()
    if not tune.Tuner.can_restore(str(exp_dir)):
        raise FileNotFoundError(f"{exp_dir}: no Tune experiment state to resume from")
    space = load_experiment_space(exp_dir)
    cfg = space.base
    init_ray()
    tuner = tune.Tuner.restore(
        str(exp_dir),
        trainable=_trainable(space, exp_dir, cfg),
        resume_unfinished=True,
        resume_errored=False,
        restart_errored=restart_errored,
    )
    return tuner.fit()
