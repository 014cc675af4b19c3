"""Batch prediction behind ``jobs/predict.py``: images or a shard directory → ``.npy`` disparity + colour PNG each.

Two engines, same outputs:

- **local** (few images): images are decoded in the driver, grouped by size (a batch only ever holds images of one
  size: that is what lets mixed sizes run batched), predicted ``batch_size`` at a time on one device;
- **Ray Data** (many images, or a shard directory): ``ray.data.read_binary_files`` (or the shards' row groups) →
  a decoding ``map_batches`` task step →
  ``map_batches(RowPredictor, compute=ActorPoolStrategy(size=actors), num_gpus=1 per actor on GPU)`` (actors
  planned by :func:`~dad_ray.inference.actors.plan_actors`) — the model is loaded once per actor; inside an actor
  each batch is again split by image size. Results stream back to the driver in input order, which writes the
  files, so ``--out`` may be a local directory even on a multi-node cluster.

Output names mirror the input paths relative to their common directory (``a/b.jpg`` → ``<out>/a/b.npy`` and
``<out>/a/b.png``); shard rows are named by their ``key``. The ``.npy`` holds the raw
relative disparity (float32, input image size); the PNG is its colour map (:func:`dad_ray.viz.colorize`).

Unreadable inputs (a corrupt or truncated image file, a shard row whose stored image does not decode) never reach
the model: both engines decode each input themselves (the Ray Data engine reads bytes with
``ray.data.read_binary_files`` and decodes them in a ``map_batches`` step that turns a failure into an ``error``
column) and the driver acts on it in input order. By default the first unreadable input stops the job with a
:class:`~dad_ray.data.DataError` naming it (``<path>: cannot read image (<reason>)``, or ``<shard> row <key>: ...``);
the good inputs before it (in input order) are written, none after it. With ``skip_bad`` every good input is
written and each unreadable one is logged as a warning and listed with its reason in ``<out>/skipped.json``.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import posixpath
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from dad_ray.data import storage
from dad_ray.data.codec import decode_image
from dad_ray.data.errors import DataError
from dad_ray.inference.actors import plan_for_cluster
from dad_ray.models.hub import is_hub_path
from dad_ray.models.inference import DepthPredictor, resolve_device
from dad_ray.runtime import init_ray
from dad_ray.viz import colorize

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SHARD_MARKERS = ("manifest.json",)  # a shard split directory (dad_ray.data.manifest)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
SKIPPED_FILE = "skipped.json"  # <out>/skipped.json: the inputs --skip-bad left out, each with its reason
_PLACEHOLDER = np.zeros((1, 1, 3), np.uint8)  # the image of an unreadable row in the Ray stream (never predicted)


@dataclass(frozen=True)
class PredictOptions:
    model: str
    checkpoint: str
    out: str
    input_size: int = 518
    batch_size: int = 4
    device: str = "auto"
    cmap: str = "Spectral_r"
    actors: int = 0  # Ray actors; 0 = one per GPU, or 1 on CPU
    cpus_per_actor: float = 1.0
    bf16: bool = False  # bf16 autocast (GPU); fp32 otherwise
    skip_bad: bool = False  # skip unreadable inputs (listed in <out>/skipped.json) instead of stopping

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.bf16 else None


def is_shard_dir(path: str | Path) -> bool:
    """A shard split directory (it holds the shard ``manifest.json``) rather than a folder of images; local or URI."""
    if storage.is_uri(str(path)):
        return any(storage.is_file(storage.join(str(path), marker)) for marker in SHARD_MARKERS)
    path = Path(path)
    return path.is_dir() and any(any(path.glob(marker)) for marker in SHARD_MARKERS)


def collect_images(inputs: Sequence[str]) -> tuple[list[Path], Path]:
    """Files, folders (searched recursively) and glob patterns → (sorted unique image files, their common root)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
        if not found:
            raise FileNotFoundError(f"no image files found for input {item!r}")
        files.extend(found)
    files = sorted({p.resolve() for p in files})
    root = Path(os.path.commonpath([p.parent for p in files]))
    seen: dict[Path, Path] = {}
    for p in files:
        stem = output_stem(p, root)
        if stem in seen:
            raise ValueError(f"{seen[stem]} and {p} would both be written as {stem}.npy/.png: rename one")
        seen[stem] = p
    return files, root


def output_stem(path: str | Path, root: Path | str) -> Path:
    """Input image path → its output path without suffix, relative to the output directory. A ``str`` root is a
    directory inside a storage filesystem (URI inputs): its paths are compared as they are (POSIX, not resolved)."""
    if isinstance(root, str):
        return Path(PurePosixPath(str(path)).relative_to(root).with_suffix(""))
    return Path(path).resolve().relative_to(root).with_suffix("")


def collect_uri_images(inputs: Sequence[str]) -> tuple[Any, list[str], str]:
    """Storage URIs of image files or directories (searched recursively) → (their filesystem, the sorted image
    paths inside it, their common directory). Every input must be on the same filesystem (e.g. one bucket's
    endpoint); glob patterns are not expanded on URIs."""
    import pyarrow.fs as pafs

    fs, files = None, []
    for item in inputs:
        item_fs, inner = storage.resolve(item)
        if fs is not None and not item_fs.equals(fs):
            raise ValueError(f"{item}: URI inputs must share one filesystem (first: {inputs[0]})")
        fs, info = item_fs, item_fs.get_file_info(inner)
        if info.type == pafs.FileType.File:
            found = [inner]
        elif info.type == pafs.FileType.Directory:
            listing = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
            found = sorted(
                i.path for i in listing if i.is_file and PurePosixPath(i.path).suffix.lower() in IMAGE_SUFFIXES
            )
        else:
            found = []
        if not found:
            raise FileNotFoundError(f"no image files found for input {item!r}")
        files.extend(found)
    files = sorted(set(files))
    root = posixpath.commonpath([posixpath.dirname(f) for f in files])
    seen: dict[Path, str] = {}
    for f in files:
        stem = output_stem(f, root)
        if stem in seen:
            raise ValueError(f"{seen[stem]} and {f} would both be written as {stem}.npy/.png: rename one")
        seen[stem] = f
    return fs, files, root


def write_prediction(disparity: np.ndarray, out: str, stem: Path, cmap: str) -> None:
    """Write ``<out>/<stem>.npy`` (float32 (H, W)) and ``<out>/<stem>.png`` (colour-mapped); ``out`` is a local
    directory or a storage URI (on a cluster the driver's disk is not where anybody looks)."""
    npy, png = io.BytesIO(), io.BytesIO()
    np.save(npy, disparity.astype(np.float32, copy=False))
    Image.fromarray(colorize(disparity, cmap=cmap)).save(png, format="PNG")
    storage.write_path(storage.join(out, f"{stem.as_posix()}.npy"), npy.getvalue())
    storage.write_path(storage.join(out, f"{stem.as_posix()}.png"), png.getvalue())


@dataclass
class PredictSummary:
    """What a prediction run did: ``written`` images (.npy + .png each) and the ``skipped`` unreadable inputs
    (``{"path", "reason"}``, plus ``"key"`` for a shard row), in input order."""

    written: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)

    def bad(self, entry: dict[str, str], skip_bad: bool) -> None:
        """An unreadable input: raise its :class:`DataError` (message naming it) unless ``skip_bad``, which logs a
        warning and records it."""
        where = entry["path"] if "key" not in entry else f"{entry['path']} row {entry['key']}"
        message = f"{where}: cannot read image ({entry['reason']})"
        if not skip_bad:
            raise DataError(message)
        logger.warning("skipped: %s", message)
        self.skipped.append(entry)


def decode_rgb(data) -> tuple[np.ndarray | None, str]:
    """Encoded image bytes → ``(uint8 (H, W, 3) RGB, "")``, or ``(None, reason)`` when they do not decode."""
    try:
        return decode_image(data), ""
    except DataError as err:  # decode_image names "<bytes>"; the caller names the input
        cause = err.__cause__ or err
        if isinstance(cause, UnidentifiedImageError):  # its message shows a BytesIO repr, not a reason
            return None, "unknown image format or not an image"
        return None, str(cause)


def _read_rgb(path: str | Path) -> tuple[np.ndarray | None, str]:
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        return None, str(err)
    return decode_rgb(data)


def load_rgb(path: Path) -> np.ndarray:
    """An image file → uint8 (H, W, 3) RGB; an unreadable file raises :class:`DataError` naming it."""
    image, reason = _read_rgb(path)
    if image is None:
        raise DataError(f"{path}: cannot read image ({reason})")
    return image


def _batches_by_size(
    files: Sequence[Path], batch_size: int, summary: PredictSummary, skip_bad: bool
) -> Iterator[tuple[list[Path], list[np.ndarray]]]:
    """Decode files in order; yield full same-size batches as they fill up, then the remainders. An unreadable file
    goes to ``summary.bad`` — without ``skip_bad`` after the images before it were yielded, so they get written."""
    pending: dict[tuple[int, ...], tuple[list[Path], list[np.ndarray]]] = {}
    for path in files:
        image, reason = _read_rgb(path)
        if image is None:
            if not skip_bad:
                yield from pending.values()
                pending.clear()
            summary.bad({"path": str(path), "reason": reason}, skip_bad)
            continue
        paths, images = pending.setdefault(image.shape, ([], []))
        paths.append(path)
        images.append(image)
        if len(images) == batch_size:
            yield pending.pop(image.shape)
    yield from pending.values()


def predict_local(files: Sequence[Path], root: Path, opts: PredictOptions) -> PredictSummary:
    """Predict ``files`` in this process."""
    predictor = DepthPredictor(
        opts.model, opts.checkpoint, opts.input_size, opts.device, opts.batch_size, amp_dtype=opts.amp_dtype
    )
    summary = PredictSummary()
    with tqdm(total=len(files), desc="predict", unit="img") as bar:
        for paths, images in _batches_by_size(files, opts.batch_size, summary, opts.skip_bad):
            for path, disparity in zip(paths, predictor.predict(images)):
                write_prediction(disparity, opts.out, output_stem(path, root), opts.cmap)
            summary.written += len(paths)
            bar.update(len(paths))
    return summary


def _stack_or_ragged(arrays: list[np.ndarray]) -> np.ndarray:
    """(B, ...) when all shapes match, else an object array of the per-row arrays (Ray's variable-shaped tensors)."""
    if arrays and all(a.shape == arrays[0].shape for a in arrays):
        return np.stack(arrays)
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


class RowPredictor(DepthPredictor):
    """:class:`DepthPredictor` for rows that may carry an ``error`` (a decode failure): only the rows without one
    are predicted; the others keep their columns and get a 1x1 NaN ``disparity`` (the driver never writes it)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "error" not in batch:
            return super().__call__(batch)
        images = batch[self.image_column]
        good = [i for i, error in enumerate(batch["error"]) if not error]
        disparity = [np.full((1, 1), np.nan, np.float32)] * len(batch["error"])
        for i, d in zip(good, self.predict([images[i] for i in good])):
            disparity[i] = d
        out = {k: v for k, v in batch.items() if k != self.image_column or self.keep_image}
        out[self.output_column] = _stack_or_ragged(disparity)
        return out


def _bad_entry(batch: dict[str, np.ndarray], i: int) -> dict[str, str]:
    """The ``skipped.json`` entry of row ``i``: its image file, or its shard file and key."""
    if "shard" in batch:
        return {"path": str(batch["shard"][i]), "key": str(batch["key"][i]), "reason": str(batch["error"][i])}
    return {"path": str(batch["path"][i]), "reason": str(batch["error"][i])}


def predict_dataset(
    ds, name_column: str | None, root: Path | None, total: int | None, opts: PredictOptions
) -> PredictSummary:
    """Ray Data batch inference over a dataset with an ``image`` column; the driver writes the files in order.

    ``name_column`` names each output: a path relative to ``root`` (``"path"`` of an image file), or with
    ``root=None`` a key used as a file name (characters other than ``A-Za-z0-9._-`` → ``_``); without a name column,
    rows are numbered in dataset order. An optional ``error`` column (non-empty: the reason the row's image could
    not be decoded) marks unreadable rows: they are not predicted and go to :meth:`PredictSummary.bad`, named by
    ``path`` or by ``shard`` + ``key``.
    """
    import ray.data

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    # device "auto": GPU actors when the cluster lists a GPU (the driver may have none); CPU: one actor
    use_gpu = None if opts.device == "auto" else resolve_device(opts.device).type == "cuda"
    plan = plan_for_cluster(use_gpu=use_gpu, actors=opts.actors, cpus_per_actor=opts.cpus_per_actor)
    predicted = ds.map_batches(
        RowPredictor,
        fn_constructor_kwargs={
            "model_name": opts.model,
            "weights": storage.absolute(opts.checkpoint),  # a URI as it is: each actor fetches it
            "input_size": opts.input_size,
            "device": plan.device,
            "batch_size": opts.batch_size,
            "amp_dtype": opts.amp_dtype,
        },
        compute=ray.data.ActorPoolStrategy(size=plan.count),
        batch_size=opts.batch_size,
        **plan.resources,
    )
    logger.info("Ray Data inference: %d actor(s) with %s, batch %d", plan.count, plan.resources, opts.batch_size)
    summary = PredictSummary()
    with tqdm(total=total, desc="predict (ray)", unit="img") as bar:
        for batch in predicted.iter_batches(batch_size=opts.batch_size, batch_format="numpy"):
            disparities = batch["disparity"]
            for i in range(len(disparities)):
                if "error" in batch and batch["error"][i]:
                    summary.bad(_bad_entry(batch, i), opts.skip_bad)
                    continue
                if name_column is None:
                    stem = Path(f"{summary.written:06d}")
                elif root is None:
                    stem = Path(_SAFE_NAME.sub("_", str(batch[name_column][i])))
                else:
                    stem = output_stem(str(batch[name_column][i]), root)
                write_prediction(np.asarray(disparities[i]), opts.out, stem, opts.cmap)
                summary.written += 1
            bar.update(len(disparities))
    return summary


def _decode_files(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``read_binary_files`` rows (``bytes``, ``path``) → ``path``, ``image`` (uint8 RGB at its own size), ``error``
    ("" or why the file does not decode; its image is then a 1x1 placeholder)."""
    images, errors = [], []
    for data in batch["bytes"]:
        image, reason = decode_rgb(data)
        images.append(_PLACEHOLDER if image is None else image)
        errors.append(reason)
    return {"path": batch["path"], "image": _stack_or_ragged(images), "error": np.array(errors, dtype=object)}


def predict_images_ray(
    files: Sequence[Path | str], root: Path | str, opts: PredictOptions, filesystem: Any = None
) -> PredictSummary:
    """Images through Ray Data: bytes (``read_binary_files``, from ``filesystem`` when the files are paths inside
    one: URI inputs, read by the Ray tasks where they are) → decoded in tasks (:func:`_decode_files`, each image
    keeps its size; mixed sizes are fine) → the actor pool."""
    import ray.data

    ds = ray.data.read_binary_files([str(p) for p in files], include_paths=True, num_cpus=1, filesystem=filesystem)
    ds = ds.map_batches(_decode_files, batch_size=None, num_cpus=1, batch_format="numpy")
    return predict_dataset(ds, "path", root, len(files), opts)


def _decode_shard_units(batch: dict[str, np.ndarray], fs: Any) -> Iterator[dict[str, np.ndarray]]:
    """Row groups (``path`` inside ``fs``, ``row_group``, ``shard`` = the shard's name for messages) → ``key``,
    ``image`` (decoded), ``error`` ("" or why the stored image does not decode), ``shard``; depth is not read."""
    from dad_ray.data.shards import read_row_group

    for path, group, shard in zip(batch["path"], batch["row_group"], batch["shard"]):
        rows = read_row_group(fs, str(path), int(group))
        images, errors = [], []
        for data in rows["image"]:
            image, reason = decode_rgb(data)
            images.append(_PLACEHOLDER if image is None else image)
            errors.append(reason)
        yield {
            "key": np.array(rows["key"], dtype=object),
            "image": _stack_or_ragged(images),
            "error": np.array(errors, dtype=object),
            "shard": np.array([shard] * len(errors), dtype=object),
        }


def predict_shards(path: str | Path, opts: PredictOptions) -> PredictSummary:
    """Every row of a shard split directory (manifest + shards validated first), named by its ``key`` column; a row
    whose image does not decode is named by its shard file and key."""
    import ray.data

    from dad_ray.data.shards import row_groups, shard_files

    manifest, files, fs = shard_files(str(path))
    units = [{**u, "shard": storage.join(str(path), os.path.basename(u["path"]))} for u in row_groups(manifest, files)]
    ds = ray.data.from_items(units, override_num_blocks=len(units)).map_batches(
        _decode_shard_units, fn_kwargs={"fs": fs}, batch_size=1, num_cpus=1, batch_format="numpy"
    )
    return predict_dataset(ds, "key", None, int(manifest["num_samples"]), opts)


def _write_skipped(summary: PredictSummary, out: str) -> None:
    storage.write_path(storage.join(out, SKIPPED_FILE), json.dumps(summary.skipped, indent=2) + "\n")


def predict_inputs(
    inputs: Sequence[str], opts: PredictOptions, ray_mode: str = "auto", ray_threshold: int = 256
) -> PredictSummary:
    """Route to the engine: a shard directory (local or URI) → Ray; image files or directories given as storage URIs
    (``s3://…``, ``file://…``) → Ray (its tasks read them where they are, never the driver); local images → Ray when
    ``ray_mode == "on"`` or, with ``"auto"``, when there are more than ``ray_threshold`` of them; otherwise local.
    With ``opts.skip_bad`` the skipped inputs are written to ``<out>/skipped.json`` (an empty list when there were
    none); if every input was unreadable that is still a :class:`DataError`."""
    if ray_mode not in ("auto", "on", "off"):
        raise ValueError(f"ray_mode must be 'auto', 'on' or 'off', got {ray_mode!r}")
    shards = [i for i in inputs if is_shard_dir(i)]
    if shards:
        if len(inputs) != 1:
            raise ValueError(f"a shard directory must be the only input, got {list(inputs)}")
        if ray_mode == "off":
            raise ValueError(f"{shards[0]} is a shard directory: it is read with Ray Data (drop --ray off)")
        init_ray()
        summary = predict_shards(shards[0], opts)
    elif any(storage.is_uri(i) and not is_hub_path(i) for i in inputs):  # read where they are, by Ray tasks
        if ray_mode == "off":
            raise ValueError(f"{list(inputs)}: storage URIs are read by Ray Data tasks (drop --ray off)")
        fs, uri_files, uri_root = collect_uri_images(inputs)
        logger.info("%d image(s) under %s → %s (Ray Data)", len(uri_files), uri_root, opts.out)
        init_ray()
        summary = predict_images_ray(uri_files, uri_root, opts, filesystem=fs)
    else:
        files, root = collect_images(inputs)
        use_ray = ray_mode == "on" or (ray_mode == "auto" and len(files) > ray_threshold)
        logger.info("%d image(s) under %s → %s (%s)", len(files), root, opts.out, "Ray Data" if use_ray else "local")
        if use_ray:
            init_ray()
            summary = predict_images_ray(files, root, opts)
        else:
            summary = predict_local(files, root, opts)
    if opts.skip_bad:
        _write_skipped(summary, opts.out)
        if summary.written == 0:
            raise DataError(f"every input was unreadable ({len(summary.skipped)} listed in {opts.out}/{SKIPPED_FILE})")
    return summary


def run_predict(inputs: Sequence[str], opts: PredictOptions, ray_mode: str = "auto", ray_threshold: int = 256) -> int:
    """:func:`predict_inputs`, returning the number of images written."""
    return predict_inputs(inputs, opts, ray_mode, ray_threshold).written


@dataclass(frozen=True)
class ModelMaps:
    """``make_producer`` of :func:`~dad_ray.data.teacher_columns.attach_column` for one of our models: each row's
    disparity (the model's output resized to the stored image, as :meth:`DepthPredictor.predict` returns it)."""

    model: str
    checkpoint: str
    input_size: int
    device: str = "auto"
    batch_size: int = 4
    bf16: bool = False

    def __call__(self):
        predictor = DepthPredictor(  # a URI checkpoint is fetched by whoever builds the predictor (each actor)
            self.model,
            self.checkpoint,
            self.input_size,
            self.device,
            self.batch_size,
            amp_dtype=torch.bfloat16 if self.bf16 else None,
        )

        def produce(rows: list[dict[str, Any]]) -> list[np.ndarray]:
            images = [decode_image(row["image"], f"row {row['key']}") for row in rows]
            return [np.asarray(d, dtype=np.float32) for d in predictor.predict(images)]

        return produce


class _ShardActor:
    """A Ray Data actor that adds a teacher column to whole shards with its own model (built once)."""

    def __init__(self, job, make_producer) -> None:
        self.job = job
        self.produce = make_producer()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [json.dumps(self.job.run(str(f), self.produce)) for f in batch["file"]]
        return {"result": np.asarray(results, dtype=object)}


def write_teacher_column(shard_dir: str, name: str, opts: PredictOptions) -> dict[str, Any]:
    """``jobs/predict.py --write-column NAME``: the model's disparity for every row of the shard split
    ``shard_dir``, stored as precomputed teacher column ``NAME`` (:mod:`dad_ray.data.teacher_columns`), one shard
    per Ray Data actor task (an actor pool as for prediction: one per GPU, or one on CPU). Returns the manifest."""
    import ray.data

    from dad_ray.data.teacher_columns import attach_column

    init_ray()
    use_gpu = None if opts.device == "auto" else resolve_device(opts.device).type == "cuda"
    plan = plan_for_cluster(use_gpu=use_gpu, actors=opts.actors, cpus_per_actor=opts.cpus_per_actor)
    make = ModelMaps(
        opts.model, storage.absolute(opts.checkpoint), opts.input_size, plan.device, opts.batch_size, opts.bf16
    )

    def runner(job, files: list[str]) -> list[dict[str, Any]]:
        ds = ray.data.from_items([{"file": f} for f in files], override_num_blocks=len(files)).map_batches(
            _ShardActor,
            fn_constructor_args=(job, make),
            compute=ray.data.ActorPoolStrategy(size=plan.count),
            batch_size=1,
            **plan.resources,
        )
        with tqdm(total=len(files), desc=f"write column {name}", unit="shard") as bar:
            results = []
            for batch in ds.iter_batches(batch_size=1, batch_format="numpy"):
                results += [json.loads(r) for r in batch["result"]]
                bar.update(len(batch["result"]))
        return results

    return attach_column(
        shard_dir, name, make, kind="disparity", source=f"{opts.model}:{opts.checkpoint}", runner=runner
    )
