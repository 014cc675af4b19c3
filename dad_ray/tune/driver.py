"""Tune driver: one trial = one distillation run (a ``TorchTrainer`` fitted inside a Tune function trainable).

Layout of an experiment ``<output>/<experiment>/``:

    space.yaml              the search space as given, with --set overrides (``--resume`` rebuilds everything from it)
    base_config.yaml        the resolved base config every trial starts from (paths made absolute)
    <trial dirs>/           Tune's own per-trial results (result.json, progress.csv, ray/tune/* event files)
    trials/<trial id>/      each trial's distillation run: config.yaml, tensorboard/ (+ HParams), checkpoints/
    warm_start/             with ``warm_start_steps``: the shared distillation every trial starts from, and its
                            ``student.safetensors`` (each trial's ``model.student_weights``)
    tuner.pkl, experiment_state-*.json   Tune's state (Tuner.restore)

``<output>`` may be a local directory or a URI (``s3://bucket/tune``, with ``?endpoint_override=…`` if needed): every
directory here is a string built by :mod:`dad_ray.data.storage` (never a ``pathlib.Path``, which would turn a URI
into a local path), so trials on other nodes write into the same experiment.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any

import yaml
from ray import tune

from dad_ray.config import ConfigError, ExperimentConfig, config_to_yaml, get_dotted, to_dict, with_absolute_paths
from dad_ray.data import storage
from dad_ray.runtime import init_ray
from dad_ray.tune.hparams import HParamsCallback
from dad_ray.tune.space import SearchSpace, parse_space

logger = logging.getLogger(__name__)

SPACE_FILE = "space.yaml"
NAME_KEY = "_name"  # space.yaml's extra key: the experiment's name
BASE_FILE = "base_config.yaml"
TRIALS_DIR = "trials"
WARM_START_DIR = "warm_start"


def experiment_dir(output: str | os.PathLike, name: str) -> str:
    """``<output>/<name>``: absolute for a local ``output``, a URI (its query kept) for a URI."""
    return storage.join(storage.absolute(str(output)), name)


def trial_run_dir(exp_dir: str, trial_id: str) -> str:
    return storage.join(exp_dir, TRIALS_DIR, trial_id)


def with_absolute_base(space: SearchSpace) -> SearchSpace:
    """Trials run in their own working directories: the space with its base config's local paths made absolute."""
    return replace(space, base=with_absolute_paths(space.base))


def hparams_of(space: SearchSpace, exp_dir: str, config: dict[str, Any]) -> dict[str, Any]:
    """The resolved value of every searched key in a trial's config."""
    cfg = space.trial_config(config, name="hparams", output=storage.join(exp_dir, TRIALS_DIR))
    tree = to_dict(cfg)
    return {key: get_dotted(tree, key) for key in space.searched_keys}


def run_trial(config: dict[str, Any], space: SearchSpace, exp_dir: str) -> None:
    """Tune function trainable: build the trial's config, fit one TorchTrainer, forward its reports to Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from dad_ray.train import build_trainer, run_dir

    trial_id = tune.get_context().get_trial_id()
    cfg = space.trial_config(config, name=trial_id, output=storage.join(exp_dir, TRIALS_DIR))
    save_config_to(cfg, storage.join(run_dir(cfg), "config.yaml"))
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


def save_config_to(cfg: ExperimentConfig, path: str) -> None:
    """The resolved config as YAML at a local path or a URI, atomically (what ``save_config`` writes locally)."""
    storage.write_path(path, config_to_yaml(cfg))


def _trainable(space: SearchSpace, exp_dir: str, cfg: ExperimentConfig):
    trainable = tune.with_parameters(run_trial, space=space, exp_dir=exp_dir)
    resources: dict[str, float] = {"cpu": space.cpus_per_trial}
    if space.gpus_per_trial > 0 and not cfg.train.use_gpu:
        resources["gpu"] = space.gpus_per_trial
    return tune.with_resources(trainable, resources)


def _run_config(space: SearchSpace, exp_dir: str) -> tune.RunConfig:
    callback = HParamsCallback(
        hparams_of=lambda config: hparams_of(space, exp_dir, config),
        tensorboard_dir_of=lambda trial_id: storage.join(trial_run_dir(exp_dir, trial_id), "tensorboard"),
        metric=space.metric,
        mode=space.mode,
    )
    return tune.RunConfig(
        name=storage.basename(exp_dir),
        storage_path=storage.parent(exp_dir),
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


def prepare(space: SearchSpace, output: str | os.PathLike, name: str | None = None) -> tuple[SearchSpace, str]:
    """Resolve paths, write space.yaml/base_config.yaml, and run ``prepare_experiment`` once (data + teacher)."""
    from dad_ray.train import prepare_experiment

    exp_dir = experiment_dir(output, name or space.name)
    space = with_absolute_base(space)
    cfg = space.base
    trials = storage.join(exp_dir, TRIALS_DIR)
    cfg = prepare_experiment(replace(cfg, train=replace(cfg.train, name="prepare", output=trials)))
    source = {**space.source, NAME_KEY: storage.basename(exp_dir)}
    storage.write_path(storage.join(exp_dir, SPACE_FILE), yaml.safe_dump(source, sort_keys=False))
    save_config_to(cfg, storage.join(exp_dir, BASE_FILE))
    return space, exp_dir


def warm_start(space: SearchSpace, exp_dir: str) -> SearchSpace:
    """With ``space.warm_start_steps``: run the shared distillation of the base config (``<exp>/warm_start/``; a
    finished one is reused, an interrupted one resumes) and return the space with every trial's student initialised
    from its student. The trials then compare what the searched values do from a student that already learned,
    instead of ranking the noise of the first steps after a random initialisation."""
    if space.warm_start_steps == 0:
        return space
    from dad_ray.train import copy_student, fit
    from dad_ray.train.checkpoint import STUDENT_FILE

    dest = storage.join(exp_dir, WARM_START_DIR, STUDENT_FILE)
    if not storage.is_file(dest):
        cfg, steps = space.base, space.warm_start_steps
        run = replace(
            cfg,
            optim=replace(cfg.optim, max_steps=steps, warmup_steps=min(cfg.optim.warmup_steps, steps // 2)),
            train=replace(
                cfg.train, name=WARM_START_DIR, output=exp_dir, val_every=steps, checkpoint_every=steps, image_every=0
            ),
        )
        logger.info("warm start: %d steps of the base config → %s", steps, dest)
        copy_student(fit(run), dest)
    model = replace(space.base.model, student_weights=dest, student_init="full")
    return replace(space, base=replace(space.base, model=model))


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
    space = warm_start(space, exp_dir)
    cfg = space.base
    concurrency = max_concurrent_trials or space.max_concurrent_trials or default_concurrency(space, cfg)
    logger.info(
        "experiment %s: %d trials, %d at a time, ASHA %s → %s",
        storage.basename(exp_dir),
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
    """The space an experiment directory (local or URI) was started with (its ``space.yaml``), base paths made
    absolute."""
    exp_dir = storage.absolute(str(exp_dir))
    path = storage.join(exp_dir, SPACE_FILE)
    if not storage.is_file(path):
        raise FileNotFoundError(f"{path}: not a tune experiment directory (no {SPACE_FILE})")
    try:
        data = yaml.safe_load(storage.read_path(path))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a search space must be a mapping, got {type(data).__name__}")
    name = data.pop(NAME_KEY, storage.basename(exp_dir))
    return with_absolute_base(parse_space(data, path=path, name=name))


def resume_search(exp_dir: str | os.PathLike, *, restart_errored: bool = False) -> tune.ResultGrid:
    """Continue an interrupted experiment: finished trials are kept, unfinished ones resume from their checkpoints
    (each trial's TorchTrainer continues its own run), errored ones are restarted only if asked."""
    exp_dir = storage.absolute(str(exp_dir))
    space = load_experiment_space(exp_dir)  # first: names a directory that is no experiment at all
    if not tune.Tuner.can_restore(exp_dir):
        raise FileNotFoundError(f"{exp_dir}: no Tune experiment state to resume from")
    init_ray()
    space = warm_start(space, exp_dir)  # done already, unless the experiment was interrupted during it
    cfg = space.base
    tuner = tune.Tuner.restore(
        exp_dir,
        trainable=_trainable(space, exp_dir, cfg),
        resume_unfinished=True,
        resume_errored=False,
        restart_errored=restart_errored,
    )
    return tuner.fit()
