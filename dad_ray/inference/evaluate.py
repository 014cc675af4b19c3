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
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch
from tqdm import tqdm

from dad_ray.data import storage
from dad_ray.inference.actors import plan_for_cluster
from dad_ray.metrics import ALIGNMENTS, METRIC_KEYS, PROTOCOLS, MetricAccumulator, evaluate_disparity, get_protocol
from dad_ray.models.hub import is_hub_path
from dad_ray.models.weights import resolve_weights_file
from dad_ray.runtime import init_ray

logger = logging.getLogger(__name__)


def _actor_weights(weights: str, cache: str) -> str:
    """What an evaluation actor loads: ``hf://`` paths as they are (each node reads its own Hugging Face cache),
    storage URIs (``s3://``…) downloaded into ``cache`` once, local paths as they are."""
    from dad_ray.data.storage import local_copy

    return weights if is_hub_path(weights) else local_copy(weights, cache)


class EvalActor:
    """Ray Data actor evaluating one or several models on the same decoded images.

    A batch {"key", "image" (B, H, W, 3) uint8 or ragged, "depth" (B, H, W) or ragged} → one row per (model, image):
    "model" (its label), "key", "valid" (bool), "n_pixels" (valid pixels under the protocol) and one float64 column
    per metric (0 where not valid). ``models`` = [(label, registry name, weights path), ...], each loaded once.
    """

    def __init__(
        self,
        models: list[tuple[str, str, str]],
        input_size: int,
        device: str,
        batch_size: int,
        protocol: str,
        alignment: str,
        threads: int = 1,
    ) -> None:
        import tempfile

        from dad_ray.models import DepthPredictor

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        cache = tempfile.mkdtemp(prefix="dad_ray_eval_weights_")  # weights given as URIs are fetched once per actor
        self.predictors = {
            label: DepthPredictor(
                name, _actor_weights(weights, cache), input_size=input_size, device=device, batch_size=batch_size
            )
            for label, name, weights in models
        }
        self.protocol = get_protocol(protocol)
        self.alignment = alignment

    def _metric_rows(self, disparities: list[np.ndarray], depths: list[np.ndarray], keys) -> list[dict[str, Any]]:
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, depth in enumerate(depths):
            if disparities[i].shape != depth.shape:
                raise ValueError(f"row {keys[i]}: prediction {disparities[i].shape} and depth {depth.shape} differ")
            groups.setdefault(depth.shape, []).append(i)
        out: list[dict[str, Any]] = [{} for _ in depths]
        for indices in groups.values():  # one vectorised call per image size (usually a single group)
            pred = torch.from_numpy(np.stack([disparities[i] for i in indices]))
            gt = torch.from_numpy(np.stack([depths[i] for i in indices]))
            per_image, valid = evaluate_disparity(pred, gt, self.protocol, self.alignment)
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
            for key, row in zip(keys, self._metric_rows(predictor.predict(batch["image"]), depths, keys)):
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


def evaluate_checkpoints(
    models: dict[str, tuple[str, str]],
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

    ``models`` = {label: (registry name, weights path)}. Returns {label: {metric: mean over images with a valid
    pixel, "n_images", "n_invalid", "invalid_keys" (list), "protocol", "alignment", "model", "weights", "split"}}.
    Starts a local Ray when none is connected (or joins ``RAY_ADDRESS``). ``max_samples`` > 0 evaluates the first
    rows only; ``actors`` 0 = one per GPU, or CPUs − 1 (:func:`~dad_ray.inference.actors.plan_actors`).
    """
    import ray.data

    from dad_ray.data.shards import shard_files

    _check_inputs(models, protocol, alignment, batch_size)
    init_ray()
    manifest, _files, _fs = shard_files(data, split)
    total = manifest["num_samples"] if max_samples <= 0 else min(max_samples, manifest["num_samples"])
    ds = _decoded_rows(data, split, max_samples, batch_size)
    plan = plan_for_cluster(use_gpu=use_gpu, actors=actors, fill_cpus=True)  # CPU: one actor per CPU but one
    rows = ds.map_batches(
        EvalActor,
        fn_constructor_kwargs={
            "models": [
                (label, name, w if storage.is_uri(w) else str(Path(w).resolve())) for label, (name, w) in models.items()
            ],
            "input_size": input_size,
            "device": plan.device,
            "batch_size": batch_size,
            "protocol": protocol,
            "alignment": alignment,
            "threads": plan.threads,
        },
        compute=ray.data.ActorPoolStrategy(size=plan.count),
        batch_size=batch_size,
        batch_format="numpy",
        **plan.resources,
    )
    logger.info(
        "evaluating %s on %d images of %s/%s: protocol %s, alignment in %s space, %d actor(s) on %s",
        ", ".join(f"{label} ({name}, {w})" for label, (name, w) in models.items()),
        total, data, split or "", protocol, alignment, plan.count, plan.device,
    )  # fmt: skip
    accs, invalid_keys = _accumulate(rows, list(models), total, progress)
    results: dict[str, dict[str, Any]] = {}
    for label, (name, weights) in models.items():
        result: dict[str, Any] = accs[label].compute()
        if result["n_images"] != total:
            raise RuntimeError(f"{label}: evaluated {result['n_images']} images but the split holds {total}")
        keys = invalid_keys[label]
        if keys:
            logger.warning(
                "%s: %d image(s) have no valid pixel under protocol %s and are excluded from the means: %s",
                label, len(keys), protocol, ", ".join(keys[:10]) + (" ..." if len(keys) > 10 else ""),
            )  # fmt: skip
        result.update(
            invalid_keys=keys,
            protocol=protocol,
            alignment=alignment,
            model=name,
            weights=str(weights),
            split=f"{data}/{split}" if split else str(data),
        )
        results[label] = result
    return results


def _check_inputs(models: dict[str, tuple[str, str]], protocol: str, alignment: str, batch_size: int) -> None:
    """Refuse a bad alignment, protocol, batch size or missing checkpoint before Ray starts."""
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; available: {', '.join(PROTOCOLS)}")
    if not models:
        raise ValueError("no model to evaluate")
    for _name, weights in models.values():
        if is_hub_path(weights) or not storage.is_uri(weights):  # local file or directory, or hf:// in the cache
            resolve_weights_file(weights)  # FileNotFoundError naming the path (or the repo and file)
            continue
        fs, inner = storage.resolve(weights)  # s3://, gs://, file://: read by each actor (local_copy)
        if fs.get_file_info(inner).type != pafs.FileType.File:
            raise FileNotFoundError(f"checkpoint {weights} does not exist")
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
