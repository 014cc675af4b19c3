"""The experiment around a run's trainer: validate the config, prepare data and teachers, fit (see
:mod:`dad_ray.train.trainer`), evaluate, write the outputs, format the metrics table.

Outputs of a run (``<train.output>/<train.name>/``):

    config.yaml            the resolved config (``jobs/distill.py --config`` on it reproduces the run); a new
                           submission whose config differs from it (outside RESUMABLE_KEYS) is refused, or with
                           ``fresh`` the run directory is emptied and a new run starts there
    tensorboard/           scalars, image grids (rank 0)
    checkpoints/           Ray Train's run directory: checkpoint_step*/ (best K by validation AbsRel + latest)
    progress.jsonl         one line per optimizer step and per worker-group start
    untrained_student.safetensors, student.safetensors   the seeded initial and the final student (official layout)
    final_metrics.json     {"teacher": {...}, "student": {...}, "untrained_student": {...}, "_info": {...}}
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from dad_ray.config import ConfigError, ExperimentConfig, from_dict, is_uri, save_config, to_dict, with_absolute_paths
from dad_ray.config.schema import DataConfig
from dad_ray.data import storage
from dad_ray.data.prepare import ensure_synthetic_splits
from dad_ray.metrics import METRIC_KEYS
from dad_ray.models import is_model, save_weights
from dad_ray.models.hub import weights_available
from dad_ray.models.registry import unknown_model_message
from dad_ray.models.weights import EvalSettings
from dad_ray.runtime import init_ray
from dad_ray.train.monitor import JOURNAL_FILE
from dad_ray.train.task import build_student
from dad_ray.train.trainer import CHECKPOINT_DIR, copy_student, fit, run_dir
from dad_ray.train.worker import seed_everything

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
UNTRAINED_FILE = "untrained_student.safetensors"
FINAL_STUDENT_FILE = "student.safetensors"
METRICS_FILE = "final_metrics.json"

# The keys in which a new submission may differ from the config.yaml of the run it continues: they say how long the
# run goes on, where it lives and how it rides out failures — not how the checkpoints it resumes were trained. Any
# other difference would resume old weights under a config that does not describe them, so it is refused.
#   optim.max_steps     continuing a run for longer is what resubmitting is for (the schedule's horizon moves with it)
#   train.name/output   the run's location: the saved config was found there, so a run directory moved or copied
#                       elsewhere (or a URI spelled with a trailing '/') is still the same run
#   train.max_failures  how many worker failures Ray Train retries
#   train.fail_at_step  the fault-injection test hook (first attempt only)
RESUMABLE_KEYS = frozenset(
    {"optim.max_steps", "train.name", "train.output", "train.max_failures", "train.fail_at_step"}
)
# what a run directory holds once a run started in it (``fresh`` empties only such directories)
RUN_MARKERS = frozenset({CONFIG_FILE, CHECKPOINT_DIR, JOURNAL_FILE, "tensorboard", UNTRAINED_FILE})


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()  # a key one of two compared configs does not have


def _needs_bootstrap(cfg: ExperimentConfig) -> list[int]:
    """Indices of the teachers whose weights file is not given or does not exist."""
    return [
        i
        for i, t in enumerate(cfg.model.teachers)
        if not t.column and (not t.weights or not weights_available(t.weights))  # precomputed: nothing to train
    ]


def validate_experiment(cfg: ExperimentConfig) -> None:
    """Everything that can be checked before a worker starts: model names, weight files, data location."""
    names = [("model.student", cfg.model.student)]
    if cfg.loss.mode == "distill":
        # a precomputed teacher's name only labels it (it may be a model we do not have, e.g. GenPercept)
        names += [(f"model.teachers[{i}].name", t.name) for i, t in enumerate(cfg.model.teachers) if not t.column]
        validate_precomputed_teachers(cfg)
    for key, name in names:
        if not is_model(name):
            raise ConfigError(f"{key}: {unknown_model_message(name)}")
    if cfg.model.student.startswith("timm:"):
        validate_timm_student(cfg)
    if cfg.model.student_init != "none" and not weights_available(cfg.model.student_weights):
        raise ConfigError(
            f"model.student_weights: file not found (nor in the Hugging Face cache): {cfg.model.student_weights}"
        )
    if cfg.loss.mode == "distill" and not cfg.bootstrap.enabled:
        for i in _needs_bootstrap(cfg):
            weights = cfg.model.teachers[i].weights
            raise ConfigError(
                f"model.teachers[{i}].weights: "
                + (f"file not found: {weights}" if weights else "no teacher weights given")
                + " (download the official checkpoint, or set bootstrap.enabled=true to train a small teacher)"
            )
    validate_data(cfg)


def validate_precomputed_teachers(cfg: ExperimentConfig) -> None:
    """A precomputed teacher's column holds disparity only, no features: L_feat then needs the "initial" target
    (or lambda_feat 0). (Whether every training source carries its column is checked by validate_data.)"""
    from dad_ray.train.task import feat_target

    for i, t in enumerate(cfg.model.teachers):
        if t.column and cfg.loss.lambda_feat > 0 and feat_target(cfg) == "teacher":
            raise ConfigError(
                f"model.teachers[{i}]: precomputed teacher {t.name!r} (column {t.column!r}) has no features for "
                "L_feat, whose target resolves to 'teacher': set loss.feat_target=initial (the student's own "
                "initial encoder) or loss.lambda_feat=0"
            )


def synthetic_plan(data: DataConfig) -> list[tuple[str, int, bool]]:
    """The ``(split, scenes, with depth)`` that ``data.synthetic`` generates under ``data.root`` (empty when
    ``train_samples`` is 0): the labeled training scenes (in ``bootstrap_split`` when set, and in ``train_split``
    unless it holds the ``unlabeled_samples`` depth-less scenes), the validation split and the test split."""
    syn = data.synthetic
    if syn.train_samples == 0:
        return []
    if syn.unlabeled_samples and data.bootstrap_split in ("", data.train_split):
        raise ConfigError(
            "data.bootstrap_split: data.synthetic.unlabeled_samples makes data.train_split unlabeled: name another "
            "(labeled) split for the teacher's scenes"
        )
    plan = {data.train_split: (syn.unlabeled_samples, False) if syn.unlabeled_samples else (syn.train_samples, True)}
    if data.bootstrap_split:
        plan[data.bootstrap_split] = (syn.train_samples, True)
    if (data.val_root or data.root) == data.root:
        plan.setdefault(data.val_split, (syn.val_samples, True))
    if (data.test_root or data.root) == data.root:
        plan.setdefault(data.test_split, (syn.test_samples or syn.val_samples, True))
    return [(split, count, depth) for split, (count, depth) in plan.items()]


def _data_sets(cfg: ExperimentConfig) -> list[tuple[str, str, str, str]]:
    """Every shard set the run reads: (config key, root, split, why it needs depth or "")."""
    data = cfg.data
    supervised = "supervised training (loss.mode=supervised) needs depth; distil on it (loss.mode=distill)"
    sets = [
        (f"data.train_sources[{i}]" if data.train_sources else "data.root/data.train_split", s.root, s.split,
         supervised if cfg.loss.mode == "supervised" else "")
        for i, s in enumerate(data.training_sources)
    ]  # fmt: skip
    if cfg.loss.mode == "distill" and cfg.bootstrap.enabled and _needs_bootstrap(cfg):
        boot = "bootstrap trains the missing teacher on ground truth"
        if data.bootstrap_split:
            sets.append(("data.bootstrap_split", data.root, data.bootstrap_split, boot))
        else:
            sets += [(key, root, split, boot) for key, root, split, _ in sets]
    sets.append(("data.val_root/data.val_split", *data.val_location, "validation computes depth metrics"))
    sets.append(("data.test_root/data.test_split", *data.test_location, "the final evaluation computes depth metrics"))
    return sets


def validate_data(cfg: ExperimentConfig) -> None:
    """Before Ray starts: every shard set the run reads exists (or ``data.synthetic`` will generate it) and carries
    depth where the run needs it (supervised training, bootstrap, validation, evaluation) — a depth-less source is
    refused naming its key, root and split; validation on the test set warns, or fails under
    ``data.holdout: error``. Reads manifests only (local or URI)."""
    from dad_ray.data.manifest import has_depth, read_manifest

    generated = {split: depth for split, _count, depth in synthetic_plan(cfg.data)}
    for key, root, split, needs in _data_sets(cfg):
        manifest = read_manifest(storage.join(root, split), required=False)
        if manifest is not None:
            depth = has_depth(manifest)
        elif root == cfg.data.root and split in generated:
            depth = generated[split]
        else:
            raise ConfigError(
                f"{key}: no shards for split '{split}' under {root} (make them with jobs/prepare_data.py"
                + (
                    ", or set data.synthetic.train_samples to generate synthetic scenes)"
                    if root == cfg.data.root
                    else ")"
                )
            )
        if needs and not depth:
            raise ConfigError(f"{key}: {storage.join(root, split)} holds depth-less (unlabeled) shards, but {needs}")
    _check_teacher_columns(cfg)
    _check_holdout(cfg.data)


def _check_teacher_columns(cfg: ExperimentConfig) -> None:
    """Every training source carries the column of every precomputed teacher (manifest ``teacher_columns``)."""
    from dad_ray.data.manifest import read_manifest
    from dad_ray.data.teacher_columns import teacher_columns

    wanted = [(i, t.column) for i, t in enumerate(cfg.model.teachers) if t.column] if cfg.loss.mode == "distill" else []
    if not wanted:
        return
    for source in cfg.data.training_sources:
        location = storage.join(source.root, source.split)
        manifest = read_manifest(location, required=False)
        have = teacher_columns(manifest) if manifest is not None else {}
        for i, column in wanted:
            if column not in have:
                raise ConfigError(
                    f"model.teachers[{i}].column: the training source {location} has no precomputed teacher column "
                    f"{column!r} (it has: {', '.join(sorted(have)) or 'none'}; attach one with jobs/attach_teacher.py "
                    "or jobs/predict.py --write-column)"
                )


def _check_holdout(data: DataConfig) -> None:
    """Validation (model selection, Tune's metric) must not be the set the final numbers are reported on."""
    if data.val_location != data.test_location:
        return
    root, split = data.val_location
    message = (
        f"data.val_split: validation (best-K checkpoints, Tune's metric) uses {storage.join(root, split)}, the set the "
        "final evaluation reports on (data.test_root/data.test_split): model selection would see the test numbers. "
        "Point data.val_root/data.val_split at a labeled held-out set"
    )
    if data.holdout == "error":
        raise ConfigError(message + " (data.holdout: error)")
    logger.warning("%s (data.holdout: warn)", message)


def validate_timm_student(cfg: ExperimentConfig) -> None:
    """A timm student is built (on the meta device: no memory, no weights) to check that it has multi-scale features
    and takes dad_ray's input sizes (multiples of 14: crops, global views, evaluation sizes), and, with
    ``model.student_pretrained``, that timm's weights are in the local cache."""
    import torch

    from dad_ray.models import create_model
    from dad_ray.models.timm_student import PretrainedNotCachedError, cached_pretrained_file

    name = cfg.model.student
    try:
        with torch.device("meta"):
            student = create_model(name)
    except ValueError as err:
        raise ConfigError(f"model.student: {err}") from err
    if 14 % student.size_multiple:
        raise ConfigError(
            f"model.student: {name} takes input sides that are multiples of {student.size_multiple}, but dad_ray's "
            "crops, global views and evaluation sizes are multiples of 14 (the teachers' patch size): choose a "
            "patch-14 ViT or a convolutional backbone (which pads its input)"
        )
    if cfg.model.student_pretrained:
        try:
            cached_pretrained_file(student.timm_name)
        except PretrainedNotCachedError as err:
            raise ConfigError(f"model.student_pretrained: {err}") from err


def bootstrap_teachers(cfg: ExperimentConfig) -> None:
    """Embedded default: train each missing small teacher on ground truth and cache it at its weights path."""
    for i in _needs_bootstrap(cfg):
        teacher = cfg.model.teachers[i]
        if not teacher.weights:
            raise ConfigError(f"model.teachers[{i}].weights: bootstrap needs a path to cache the trained teacher at")
        dest = teacher.weights  # a local path or a URI (on a cluster: the bucket, so every node finds it)
        stem = storage.basename(dest).rsplit(".", 1)[0]
        boot = cfg.bootstrap
        steps = boot.max_steps
        data = replace(cfg.data, batch_size=boot.batch_size)
        if cfg.data.bootstrap_split:  # labeled scenes of their own (the student distils on unlabeled ones)
            data = replace(data, train_split=cfg.data.bootstrap_split, train_sources=())
        boot_cfg = replace(
            cfg,
            model=replace(cfg.model, student=teacher.name, student_weights="", student_init="none"),
            loss=replace(cfg.loss, mode="supervised"),
            optim=replace(cfg.optim, lr=boot.lr, max_steps=steps, warmup_steps=min(cfg.optim.warmup_steps, steps - 1)),
            data=data,
            train=replace(
                cfg.train,
                name=f"bootstrap_{stem}",
                output=storage.absolute(storage.parent(dest)),
                val_every=steps,
                checkpoint_every=steps,
                image_every=0,
                fail_at_step=-1,
            ),
        )
        logger.info("bootstrap: training teacher %s on ground truth for %d steps → %s", teacher.name, steps, dest)
        copy_student(fit(boot_cfg), dest)
        logger.info("bootstrap: teacher cached at %s", dest)


def flat_config(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{dotted key: value}`` of a plain config dict; lists of mappings (``model.teachers``) by index
    (``model.teachers.0.weights``, as ``--set`` addresses them), other lists (``data.global_size``) as one value."""
    if isinstance(tree, Mapping):
        items = [(str(k), v) for k, v in tree.items()]
    elif isinstance(tree, list | tuple) and any(isinstance(v, Mapping) for v in tree):
        items = [(str(i), v) for i, v in enumerate(tree)]
    else:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flat_config(value, f"{prefix}.{key}" if prefix else key))
    return out


def config_changes(
    saved: Mapping[str, Any], new: Mapping[str, Any], allowed: Collection[str] = RESUMABLE_KEYS
) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (saved value, new value)}`` for every leaf that differs between two plain config dicts
    (:data:`ABSENT` where one has no such key), keys in ``allowed`` left out. Pure: no files, no Ray."""
    old_flat, new_flat = flat_config(saved), flat_config(new)
    keys = [*new_flat, *(k for k in old_flat if k not in new_flat)]
    changes = {k: (old_flat.get(k, ABSENT), new_flat.get(k, ABSENT)) for k in keys if k not in allowed}
    return {k: (old, new_) for k, (old, new_) in changes.items() if old != new_}


def changed_config_message(directory: str, changes: Mapping[str, tuple[Any, Any]]) -> str:
    """The refusal: which keys differ from the run's saved config (old → new) and the three ways forward."""
    lines = [f"  {key}: {old!r} → {new!r}" for key, (old, new) in changes.items()]
    return (
        f"{directory} holds a run whose saved config differs from this one in {len(lines)} key(s); continuing it "
        "would resume its checkpoints under settings that did not train them:\n"
        + "\n".join(lines)
        + f"\nResubmit with the run's config (--config {storage.join(directory, CONFIG_FILE)}; only "
        + ", ".join(sorted(RESUMABLE_KEYS))
        + " may change), choose another --name, or pass --fresh to delete this run and start a new one under its name"
    )


def saved_config(directory: str) -> dict[str, Any] | None:
    """The ``config.yaml`` of the run at ``directory`` (local or URI, read through :mod:`dad_ray.data.storage`) as a
    plain dict normalised as a new config is (defaults filled in, local paths absolute); None if there is none."""
    path = storage.join(directory, CONFIG_FILE)
    fs, inner = storage.resolve(path)
    if not storage.exists(fs, inner):
        return None
    try:
        data = yaml.safe_load(storage.read_bytes(fs, inner)) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"expected a mapping, got {type(data).__name__}")
        cfg = from_dict(ExperimentConfig, data)
    except (yaml.YAMLError, ConfigError) as err:
        raise ConfigError(
            f"{path}: the saved config of this run cannot be read ({err}); pass --fresh to delete the run and start a "
            "new one under its name"
        ) from None
    return to_dict(with_absolute_paths(cfg))


def check_run_config(cfg: ExperimentConfig) -> None:
    """Refuse (:class:`ConfigError` listing the keys) to continue the run in ``cfg``'s run directory when ``cfg``
    differs from its saved ``config.yaml`` outside :data:`RESUMABLE_KEYS`; no saved config: nothing to check."""
    directory = run_dir(cfg)
    saved = saved_config(directory)
    if saved is None:
        return
    changes = config_changes(saved, to_dict(with_absolute_paths(cfg)))
    if changes:
        raise ConfigError(changed_config_message(directory, changes))


def start_fresh(cfg: ExperimentConfig) -> None:
    """``--fresh``: delete everything in ``cfg``'s run directory (local or URI; for a URI also the driver's local
    staging copy) so that a new run starts under the same name. A non-empty directory that holds none of a run's
    files (:data:`RUN_MARKERS`) is refused rather than emptied."""
    directory = run_dir(cfg)
    if cfg.train.name in (".", ".."):
        raise ConfigError(f"train.name: --fresh needs a run name, not {cfg.train.name!r}")
    names = storage.children(directory)
    if names and not RUN_MARKERS.intersection(names):
        raise ConfigError(
            f"--fresh: {directory} does not look like a run directory (none of {', '.join(sorted(RUN_MARKERS))} in "
            "it), so it is not deleted: choose another --name, or delete it yourself"
        )
    storage.clear_dir(directory)
    files = RunFiles(directory)
    if files.remote:
        shutil.rmtree(files.staging, ignore_errors=True)
    if names:
        logger.warning("--fresh: deleted the run in %s (%s); starting a new run there", directory, ", ".join(names))
    else:
        logger.info("--fresh: no run in %s yet; starting a new run there", directory)


def prepare_experiment(cfg: ExperimentConfig, *, fresh: bool = False) -> ExperimentConfig:
    """Validate, make paths absolute, check that a run of the same name was made with this config (or, ``fresh``,
    delete it), generate synthetic shards if configured, and bootstrap missing teachers — once, before any trial or
    worker starts. Returns the config to run (absolute paths; teacher files exist)."""
    cfg = with_absolute_paths(cfg)
    validate_experiment(cfg)
    if fresh:
        start_fresh(cfg)
    else:
        check_run_config(cfg)
    init_ray()
    plan = synthetic_plan(cfg.data)
    if plan:
        ensure_synthetic_splits(cfg.data.root, cfg.data.synthetic, plan)
        validate_data(cfg)  # the generated (or found) splits carry depth where needed
    if cfg.loss.mode == "distill" and _needs_bootstrap(cfg):
        bootstrap_teachers(cfg)
    return cfg


@dataclass(frozen=True)
class RunFiles:
    """The files the driver writes into a run directory (``directory``: a local path or a URI).

    They are written to :attr:`staging` — the run directory itself, or for a URI a local directory whose files are
    uploaded to it (``<tmp>/dad_ray_runs/<hash of the URI>``), so every node can read what the evaluation uses.
    """

    directory: str

    @property
    def remote(self) -> bool:
        return is_uri(self.directory)

    @property
    def staging(self) -> Path:
        if not self.remote:
            return Path(self.directory)
        return Path(tempfile.gettempdir()) / "dad_ray_runs" / uuid.uuid5(uuid.NAMESPACE_URL, self.directory).hex

    def local(self, name: str) -> Path:
        """Where to write ``name`` (in the staging directory)."""
        return self.staging / name

    def fetch(self, name: str) -> bool:
        """Whether ``name`` is in the staging directory, downloading it from a URI run directory if it is there."""
        if self.local(name).is_file():
            return True
        return self.remote and storage.download_file(storage.join(self.directory, name), self.local(name))

    def publish(self, name: str) -> str:
        """The file's path in the run directory (uploaded there first when that is a URI)."""
        if not self.remote:
            return str(self.local(name))
        storage.upload_file(self.local(name), storage.join(self.directory, name))
        return storage.join(self.directory, name)


def _evaluate(cfg: ExperimentConfig, models: dict[str, tuple[str, str]]) -> dict[str, dict[str, float]]:
    """{label: (model name, weights)} → {label: metrics}, all models in one pass over the test set
    (``data.test_root``/``data.test_split``)."""
    from dad_ray.inference import evaluate_checkpoints

    root, split = cfg.data.test_location
    return evaluate_checkpoints(
        models,
        data=root,
        split=split,
        protocol=cfg.eval.protocol,
        alignment=cfg.eval.alignment,
        input_size=cfg.eval.input_size,
        batch_size=cfg.eval.batch_size,
        max_samples=0,  # the whole test set (data.max_val_samples caps validation only)
        use_gpu=cfg.train.use_gpu,
    )


def _models_to_evaluate(cfg: ExperimentConfig, student: str, untrained: str) -> dict[str, tuple[str, str]]:
    """The table's rows: each teacher (distill mode), the trained and the untrained student → (model, weights)."""
    models: dict[str, tuple[str, str]] = {}
    if cfg.loss.mode == "distill":
        for i, t in enumerate(cfg.model.teachers):
            if not t.column:  # a precomputed teacher has no model here to evaluate
                models["teacher" if i == 0 else f"teacher_{i}"] = (t.name, t.weights)
    models["student"] = (cfg.model.student, student)
    models["untrained_student"] = (cfg.model.student, untrained)
    return models


def run_experiment(cfg: ExperimentConfig, *, fresh: bool = False) -> dict[str, Any]:
    """The whole job: prepare → fit (resuming a run of the same name) → evaluate → ``final_metrics.json``.

    A run of the same name whose saved config differs (outside :data:`RESUMABLE_KEYS`) is refused with a
    :class:`ConfigError`; ``fresh`` deletes it first and starts a new run under its name.

    The run directory may be local or a URI (``train.output=s3://bucket/runs``): Ray Train stores the checkpoints
    there itself, the workers upload TensorBoard and the journal, and the driver uploads its files from a local
    staging directory (:class:`RunFiles`), so every node can read the weights the final evaluation uses.
    """
    cfg = prepare_experiment(cfg, fresh=fresh)
    files = RunFiles(run_dir(cfg))
    save_config(cfg, files.local(CONFIG_FILE))
    files.publish(CONFIG_FILE)
    if not files.fetch(UNTRAINED_FILE):
        seed_everything(cfg.train.seed * 1000)  # the same initial student rank 0 builds
        save_weights(build_student(cfg.model), files.local(UNTRAINED_FILE), EvalSettings.from_config(cfg.eval))
    untrained_path = files.publish(UNTRAINED_FILE)
    result = fit(cfg)
    copy_student(result, files.local(FINAL_STUDENT_FILE))
    student_path = files.publish(FINAL_STUDENT_FILE)

    metrics: dict[str, Any] = _evaluate(cfg, _models_to_evaluate(cfg, student_path, untrained_path))
    metrics["_info"] = {
        "protocol": cfg.eval.protocol,
        "alignment": cfg.eval.alignment,
        "split": storage.join(*cfg.data.test_location),
        "steps": result.metrics.get("step") if result.metrics else None,
        "best_val_abs_rel": result.metrics.get("best_val_abs_rel") if result.metrics else None,
    }
    files.local(METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    files.publish(METRICS_FILE)
    return metrics


def format_metrics_table(metrics: dict[str, Any]) -> str:
    """A fixed-width table: one row per evaluated model, one column per metric."""
    rows = [k for k in metrics if not k.startswith("_")]
    header = f"{'model':<20}" + "".join(f"{k:>10}" for k in METRIC_KEYS) + f"{'images':>8}"
    lines = [header, "-" * len(header)]
    for row in rows:
        m = metrics[row]
        lines.append(
            f"{row:<20}"
            + "".join(f"{m.get(k, float('nan')):>10.4f}" for k in METRIC_KEYS)
            + f"{m.get('n_images', 0):>8}"
        )
    info = metrics.get("_info", {})
    if info:
        lines.append(
            f"(protocol {info.get('protocol')}, alignment in {info.get('alignment')} space, {info.get('split')})"
        )
    return "\n".join(lines)
