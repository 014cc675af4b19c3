"""Evaluate a checkpoint on shards with Ray Data: the logic behind ``jobs/evaluate.py`` and the trainer's final eval.

``read_shards(data, split)`` (re-blocked to ``batch_size`` rows before decoding) →
``map_batches(EvalActor, ActorPoolStrategy)`` (actors planned by :func:`~dad_ray.inference.actors.plan_actors`;
each actor loads every model to evaluate once, predicts disparity at each image's size with
:class:`~dad_ray.models.DepthPredictor`, and turns it into per-image metric rows with
:func:`~dad_ray.metrics.evaluate_disparity`) → the driver streams the small rows back with a progress bar and sums
them in a :class:`~dad_ray.metrics.MetricAccumulator` (sums and counts: exact whatever the number of actors or
blocks). Images with no valid pixel under the protocol are counted and named, never dropped.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch
from tqdm import tqdm

from dad_ray.config.schema import EvalConfig
from dad_ray.data import storage
from dad_ray.data.errors import DataError
from dad_ray.data.resize import eval_size
from dad_ray.inference.actors import plan_for_cluster
from dad_ray.metrics import ALIGNMENTS, METRIC_KEYS, PROTOCOLS, MetricAccumulator, evaluate_disparity, get_protocol
from dad_ray.models.weights import infer_model_name, is_storage_uri, read_eval_settings, resolve_weights_file
from dad_ray.runtime import init_ray

logger = logging.getLogger(__name__)


ORIGINS = ("explicit", "checkpoint", "default")  # an evaluation setting: given, recorded in the weights, EvalConfig's


@dataclass(frozen=True)
class ModelToEvaluate:
    """One model of an evaluation: registry ``name``, ``weights`` (a local path, ``hf://`` or a storage URI, which
    each actor fetches itself), the network ``input_size`` and the ``alignment`` space it is evaluated with, and
    ``sources``: where each of those two came from (:data:`ORIGINS`)."""

    name: str
    weights: str
    input_size: int
    alignment: str
    sources: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        origin = dict(self.sources)
        return (
            f"{self.name}, input size {self.input_size} ({origin.get('input_size', 'given')}), "
            f"alignment in {self.alignment} space ({origin.get('alignment', 'given')})"
        )


def model_to_evaluate(
    weights: str,
    model: str | None = None,
    *,
    input_size: int | None = None,
    alignment: str | None = None,
    defaults: EvalConfig | None = None,
) -> ModelToEvaluate:
    """A checkpoint's evaluation settings: each of ``input_size`` / ``alignment`` is the explicit value when given,
    else what the checkpoint records in its metadata (:func:`~dad_ray.models.weights.read_eval_settings`), else
    ``defaults`` (:class:`~dad_ray.config.schema.EvalConfig`'s). ``model`` None = inferred from the weights."""
    defaults = defaults or EvalConfig()
    recorded = read_eval_settings(weights)
    candidates = {
        "input_size": (input_size, recorded.input_size, defaults.input_size),
        "alignment": (alignment, recorded.alignment, defaults.alignment),
    }
    chosen, sources = {}, []
    for key, values in candidates.items():
        origin, value = next((o, v) for o, v in zip(ORIGINS, values) if v is not None)
        chosen[key] = value
        sources.append((key, origin))
    return ModelToEvaluate(model or infer_model_name(weights), weights, sources=tuple(sources), **chosen)


class EvalActor:
    """Ray Data actor evaluating one or several models on the same decoded images.

    A batch {"key", "image" (B, H, W, 3) uint8 or ragged, "depth" (B, H, W) or ragged} → one row per (model, image):
    "model" (its label), "key", "valid" (bool), "n_pixels" (valid pixels under the protocol) and one float64 column
    per metric (0 where not valid). ``models`` = {label: :class:`ModelToEvaluate`}, each loaded once (weights on a
    storage URI are fetched by the actor: :func:`~dad_ray.models.weights.resolve_weights_file`).
    """

    def __init__(
        self, models: dict[str, ModelToEvaluate], device: str, batch_size: int, protocol: str, threads: int = 1
    ) -> None:
        from dad_ray.models import DepthPredictor

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.predictors = {
            label: DepthPredictor(m.name, m.weights, input_size=m.input_size, device=device, batch_size=batch_size)
            for label, m in models.items()
        }
        self.alignments = {label: m.alignment for label, m in models.items()}
        self.protocol = get_protocol(protocol)

    def _metric_rows(
        self, disparities: list[np.ndarray], depths: list[np.ndarray], keys, alignment: str
    ) -> list[dict[str, Any]]:
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, depth in enumerate(depths):
            if disparities[i].shape != depth.shape:
                raise ValueError(f"row {keys[i]}: prediction {disparities[i].shape} and depth {depth.shape} differ")
            groups.setdefault(depth.shape, []).append(i)
        out: list[dict[str, Any]] = [{} for _ in depths]
        for indices in groups.values():  # one vectorised call per image size (usually a single group)
            pred = torch.from_numpy(np.stack([disparities[i] for i in indices]))
            gt = torch.from_numpy(np.stack([depths[i] for i in indices]))
            per_image, valid = evaluate_disparity(pred, gt, self.protocol, alignment)
            n_pixels = self.protocol.valid_mask(gt).flatten(1).sum(-1)
            for j, i in enumerate(indices):
                out[i] = {"valid": bool(valid[j]), "n_pixels": int(n_pixels[j])}
                out[i].update({k: float(per_image[k][j]) for k in METRIC_KEYS})
        return out

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        depths = [np.asarray(d, dtype=np.float32) for d in batch["depth"]]
        keys = [str(k) for k in batch["key"]]
        rows: dict[str, list] = {"model": [], "key": [], "valid": [], "n_pixels": [], **{k: [] for k in METRIC_KEYS}}
        for label, predictor in self.predictors.items():
            disparities = predictor.predict(batch["image"])
            for key, row in zip(keys, self._metric_rows(disparities, depths, keys, self.alignments[label])):
                rows["model"].append(label)
                rows["key"].append(key)
                for name, value in row.items():
                    rows[name].append(value)
        result = {name: np.asarray(values) for name, values in rows.items()}
        for name in ("model", "key"):
            result[name] = np.asarray(rows[name], dtype=object)
        return result


def evaluate_checkpoint(*, model_name: str, weights: str, **kwargs: Any) -> dict[str, Any]:
    """Metrics of one checkpoint: :func:`evaluate_checkpoints` with a single model (same keyword arguments)."""
    return evaluate_checkpoints({model_name: (model_name, weights)}, **kwargs)[model_name]


def _as_models(
    models: dict[str, tuple[str, str] | ModelToEvaluate], input_size: int, alignment: str
) -> dict[str, ModelToEvaluate]:
    """Labels → :class:`ModelToEvaluate`; a ``(name, weights)`` pair gets the call's input size and alignment."""
    out = {}
    for label, m in models.items():
        if not isinstance(m, ModelToEvaluate):
            name, weights = m
            m = ModelToEvaluate(name, storage.absolute(str(weights)), input_size, alignment)
        out[label] = m
    return out


def evaluate_checkpoints(
    models: dict[str, tuple[str, str] | ModelToEvaluate],
    *,
    data: str,
    split: str | None = "test",
    protocol: str = "nyu",
    alignment: str = "disparity",
    input_size: int = 518,
    batch_size: int = 4,
    max_samples: int = 0,
    use_gpu: bool = False,
    actors: int = 0,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Metrics of several checkpoints on ``data`` (a shard root with ``split``, or a split directory with split
    None), in one pass: each image is read and decoded once and every model predicts it.

    ``models`` = {label: :class:`ModelToEvaluate`, or (registry name, weights path), evaluated at ``input_size``
    in ``alignment`` space}. Returns {label: {metric: mean over images with a valid pixel, "n_images",
    "n_invalid", "invalid_keys" (list), "protocol", "alignment", "input_size", "model", "weights", "split"}}.
    Starts a local Ray when none is connected (or joins ``RAY_ADDRESS``). ``max_samples`` > 0 evaluates the first
    rows only; ``actors`` 0 = one per GPU, or CPUs − 1 (:func:`~dad_ray.inference.actors.plan_actors`).
    """
    import ray.data

    from dad_ray.data.manifest import has_depth
    from dad_ray.data.shards import shard_files

    specs = _as_models(models, input_size, alignment)
    _check_inputs(specs, protocol, batch_size)
    init_ray()
    manifest, _files, _fs = shard_files(data, split)
    where = storage.join(data, split) if split else data
    if not has_depth(manifest):
        raise DataError(f"{where}: these shards carry no depth (unlabeled images): nothing to evaluate against")
    total = manifest["num_samples"] if max_samples <= 0 else min(max_samples, manifest["num_samples"])
    plan = plan_for_cluster(use_gpu=use_gpu, actors=actors, fill_cpus=True)  # CPU: one actor per CPU but one
    rows = _decoded_rows(data, split, max_samples, batch_size).map_batches(
        EvalActor,
        fn_constructor_args=(specs, plan.device, batch_size, protocol, plan.threads),
        compute=ray.data.ActorPoolStrategy(size=plan.count),
        batch_size=batch_size,
        batch_format="numpy",
        **plan.resources,
    )
    logger.info(
        "evaluating on %d images of %s (protocol %s), %d actor(s) on %s: %s",
        total, where, protocol, plan.count, plan.device,
        "; ".join(f"{label}: {m.describe()}, {m.weights}" for label, m in specs.items()),
    )  # fmt: skip
    accs, invalid_keys = _accumulate(rows, list(specs), total, progress)
    return {
        label: _result(label, m, accs[label], invalid_keys[label], total, protocol, where) for label, m in specs.items()
    }


def _result(
    label: str, m: ModelToEvaluate, acc: MetricAccumulator, keys: list[str], total: int, protocol: str, where: str
) -> dict[str, Any]:
    result: dict[str, Any] = acc.compute()
    if result["n_images"] != total:
        raise RuntimeError(f"{label}: evaluated {result['n_images']} images but the split holds {total}")
    if keys:
        logger.warning(
            "%s: %d image(s) have no valid pixel under protocol %s and are excluded from the means: %s",
            label, len(keys), protocol, ", ".join(keys[:10]) + (" ..." if len(keys) > 10 else ""),
        )  # fmt: skip
    result.update(
        invalid_keys=keys,
        protocol=protocol,
        alignment=m.alignment,
        input_size=m.input_size,
        settings_from=dict(m.sources),
        model=m.name,
        weights=str(m.weights),
        split=where,
    )
    return result


def _check_inputs(models: dict[str, ModelToEvaluate], protocol: str, batch_size: int) -> None:
    """Refuse a bad alignment, protocol, input size, batch size or missing checkpoint before Ray starts."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; available: {', '.join(PROTOCOLS)}")
    if not models:
        raise ValueError("no model to evaluate")
    for label, m in models.items():
        if m.alignment not in ALIGNMENTS:
            raise ValueError(f"{label}: alignment must be one of {ALIGNMENTS}, got {m.alignment!r}")
        eval_size(m.input_size, m.input_size, m.input_size)  # ValueError unless a positive multiple of 14
        if is_storage_uri(m.weights):  # s3://, gs://, file://: fetched by each actor, only checked here
            fs, inner = storage.resolve(m.weights)
            if fs.get_file_info(inner).type != pafs.FileType.File:
                raise FileNotFoundError(f"checkpoint {m.weights} does not exist")
        else:  # local file or directory, or hf:// in the cache
            resolve_weights_file(m.weights)  # FileNotFoundError naming the path (or the repo and file)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _decoded_rows(data: str, split: str | None, max_samples: int, batch_size: int) -> Any:
    """= ``read_shards(data, split)``, with the encoded rows re-blocked (streaming) into batch-sized blocks before
    decoding, so that the actor pool gets work in parallel even from a single shard. A ``ray.data.Dataset``."""
    from dad_ray.data.shards import decode_rows, read_raw

    ds = read_raw(data, split)
    if max_samples > 0:
        ds = ds.limit(max_samples)
    return ds.repartition(target_num_rows_per_block=batch_size).map_batches(
        decode_rows, batch_size=batch_size, num_cpus=1, batch_format="numpy"
    )


def _accumulate(
    rows: Any, labels: list[str], total: int, progress: bool
) -> tuple[dict[str, MetricAccumulator], dict[str, list[str]]]:
    """Stream the per-(model, image) metric rows of ``rows`` (a ``ray.data.Dataset``) back to the driver and sum
    them per model label: ({label: accumulator}, {label: keys of the images with no valid pixel})."""
    accs = {label: MetricAccumulator() for label in labels}
    invalid_keys: dict[str, list[str]] = {label: [] for label in labels}
    with tqdm(total=total * len(labels), desc=f"evaluate {', '.join(labels)}", unit="img", disable=not progress) as bar:
        for batch in rows.iter_batches(batch_size=64, batch_format="numpy"):
            batch_labels = np.asarray(batch["model"])
            for label in labels:
                sel = batch_labels == label
                if not sel.any():
                    continue
                valid = torch.tensor(np.asarray(batch["valid"], dtype=bool)[sel])
                accs[label].add(
                    {k: torch.tensor(np.asarray(batch[k], dtype=np.float64)[sel]) for k in METRIC_KEYS}, valid
                )
                invalid_keys[label] += [str(k) for k, v in zip(batch["key"][sel], valid.tolist()) if not v]
            bar.update(len(batch_labels))
    return accs, invalid_keys


def format_table(result: dict[str, Any]) -> str:
    """A markdown table of one evaluation, stating the protocol and the alignment space."""
    head = "| " + " | ".join(METRIC_KEYS) + " | images | no valid pixel |"
    values = " | ".join("nan" if math.isnan(result[k]) else f"{result[k]:.4f}" for k in METRIC_KEYS)
    return "\n".join(
        [
            f"{result['model']} on {result['split']} — protocol {result['protocol']}, least-squares alignment in "
            f"{result['alignment']} space (silog = 100·sqrt(mean e² − (mean e)²))",
            head,
            "|" + "---|" * (len(METRIC_KEYS) + 2),
            f"| {values} | {result['n_images']} | {result['n_invalid']} |",
        ]
    )


def write_tensorboard(result: dict[str, Any], log_dir: str, tag: str = "eval") -> None:
    """The metrics as TensorBoard scalars ``<tag>/<metric>`` (step 0) in ``log_dir``."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir) as writer:
        for k in (*METRIC_KEYS, "n_images", "n_invalid"):
            writer.add_scalar(f"{tag}/{k}", result[k], 0)
        writer.add_text(f"{tag}/protocol", f"{result['protocol']}, alignment in {result['alignment']} space", 0)


def checkpoint_labels(checkpoints: list[str], labels: list[str] | None = None) -> list[str]:
    """Row labels of checkpoints: ``labels`` when given (one per checkpoint), else each file's stem, made unique by
    its parent directory's name where two stems agree (``run_a/student``, ``run_b/student``)."""
    if labels:
        if len(labels) != len(checkpoints) or len(set(labels)) != len(labels):
            raise ValueError(f"--label: give one distinct label per --checkpoint ({len(checkpoints)}), got {labels}")
        return list(labels)
    stems = [storage.basename(c).rsplit(".", 1)[0] for c in checkpoints]
    out = [
        f"{storage.basename(storage.parent(c))}/{stem}" if stems.count(stem) > 1 else stem
        for c, stem in zip(checkpoints, stems)
    ]
    if len(set(out)) != len(out):
        raise ValueError(f"checkpoints {checkpoints} give the same row labels {out}: name the rows with --label")
    return out


def data_protocol(
    data: str, split: str | None, explicit: str | None, models: dict[str, ModelToEvaluate], default: str = "nyu"
) -> tuple[str, str]:
    """The protocol for one shard set and where it came from: ``explicit`` (--protocol), else the manifest's
    ``dataset`` (a benchmark), else what the first checkpoint recording one was evaluated with, else ``default``."""
    from dad_ray.data.manifest import read_manifest

    if explicit:
        return explicit, "explicit"
    dataset = read_manifest(storage.join(data, split) if split else data).get("dataset")
    if dataset in PROTOCOLS:
        return dataset, "manifest"
    for m in models.values():
        recorded = read_eval_settings(m.weights).protocol
        if recorded in PROTOCOLS:
            return recorded, "checkpoint"
    return default, "default"
