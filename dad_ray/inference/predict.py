"""Batch prediction behind ``jobs/predict.py``: images or a shard directory → ``.npy`` disparity + colour PNG each.

Two engines, same outputs:

- **local** (few images): images are decoded in the driver, grouped by size (a batch only ever holds images of one
  size: that is what lets mixed sizes run batched), predicted ``batch_size`` at a time on one device;
- **Ray Data** (many images, or a shard directory): ``ray.data.read_images`` (or ``dad_ray.data.read_shards``) →
  ``map_batches(DepthPredictor, compute=ActorPoolStrategy(size=actors), num_gpus=1 per actor on GPU)`` (actors
  planned by :func:`~dad_ray.inference.actors.plan_actors`) — the model is loaded once per actor; inside an actor
  each batch is again split by image size. Results stream back to the driver in input order, which writes the
  files, so ``--out`` may be a local directory even on a multi-node cluster.

Output names mirror the input paths relative to their common directory (``a/b.jpg`` → ``<out>/a/b.npy`` and
``<out>/a/b.png``); shard rows are named by their ``key``. The ``.npy`` holds the raw
relative disparity (float32, input image size); the PNG is its colour map (:func:`dad_ray.viz.colorize`).
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from dad_ray.inference.actors import plan_for_cluster
from dad_ray.models.hub import is_hub_path
from dad_ray.models.inference import DepthPredictor, resolve_device
from dad_ray.runtime import init_ray
from dad_ray.viz import colorize

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SHARD_MARKERS = ("manifest.json",)  # a shard split directory (dad_ray.data.manifest)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


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

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.bf16 else None


def is_shard_dir(path: str | Path) -> bool:
    """A shard split directory (it holds the shard ``manifest.json``) rather than a folder of images."""
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


def output_stem(path: str | Path, root: Path) -> Path:
    """Input image path → its output path without suffix, relative to the output directory."""
    return Path(path).resolve().relative_to(root).with_suffix("")


def write_prediction(disparity: np.ndarray, out_dir: Path, stem: Path, cmap: str) -> None:
    """Write ``<out>/<stem>.npy`` (float32 (H, W)) and ``<out>/<stem>.png`` (colour-mapped)."""
    target = out_dir / stem
    target.parent.mkdir(parents=True, exist_ok=True)
    np.save(target.with_suffix(".npy"), disparity.astype(np.float32, copy=False))
    Image.fromarray(colorize(disparity, cmap=cmap)).save(target.with_suffix(".png"))


def load_rgb(path: Path) -> np.ndarray:
    """An image file → uint8 (H, W, 3) RGB."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _batches_by_size(files: Sequence[Path], batch_size: int) -> Iterator[tuple[list[Path], list[np.ndarray]]]:
    """Decode files in order; yield full same-size batches as they fill up, then the remainders."""
    pending: dict[tuple[int, ...], tuple[list[Path], list[np.ndarray]]] = {}
    for path in files:
        image = load_rgb(path)
        paths, images = pending.setdefault(image.shape, ([], []))
        paths.append(path)
        images.append(image)
        if len(images) == batch_size:
            yield pending.pop(image.shape)
    yield from pending.values()


def predict_local(files: Sequence[Path], root: Path, opts: PredictOptions) -> int:
    """Predict ``files`` in this process; returns the number of images written."""
    predictor = DepthPredictor(
        opts.model, opts.checkpoint, opts.input_size, opts.device, opts.batch_size, amp_dtype=opts.amp_dtype
    )
    out_dir = Path(opts.out)
    done = 0
    with tqdm(total=len(files), desc="predict", unit="img") as bar:
        for paths, images in _batches_by_size(files, opts.batch_size):
            for path, disparity in zip(paths, predictor.predict(images)):
                write_prediction(disparity, out_dir, output_stem(path, root), opts.cmap)
            done += len(paths)
            bar.update(len(paths))
    return done


def predict_dataset(ds, name_column: str | None, root: Path | None, total: int | None, opts: PredictOptions) -> int:
    """Ray Data batch inference over a dataset with an ``image`` column; the driver writes the files in order.

    ``name_column`` names each output: a path relative to ``root`` (``"path"`` from ``read_images``), or with
    ``root=None`` a key used as a file name (characters other than ``A-Za-z0-9._-`` → ``_``); without a name column,
    rows are numbered in dataset order.
    """
    import ray.data

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    # device "auto": GPU actors when the cluster lists a GPU (the driver may have none); CPU: one actor
    use_gpu = None if opts.device == "auto" else resolve_device(opts.device).type == "cuda"
    plan = plan_for_cluster(use_gpu=use_gpu, actors=opts.actors, cpus_per_actor=opts.cpus_per_actor)
    predicted = ds.map_batches(
        DepthPredictor,
        fn_constructor_kwargs={
            "model_name": opts.model,
            "weights": opts.checkpoint if is_hub_path(opts.checkpoint) else str(Path(opts.checkpoint).resolve()),
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
    out_dir = Path(opts.out)
    done = 0
    with tqdm(total=total, desc="predict (ray)", unit="img") as bar:
        for batch in predicted.iter_batches(batch_size=opts.batch_size, batch_format="numpy"):
            disparities = batch["disparity"]
            for i in range(len(disparities)):
                if name_column is None:
                    stem = Path(f"{done:06d}")
                elif root is None:
                    stem = Path(_SAFE_NAME.sub("_", str(batch[name_column][i])))
                else:
                    stem = output_stem(str(batch[name_column][i]), root)
                write_prediction(np.asarray(disparities[i]), out_dir, stem, opts.cmap)
                done += 1
            bar.update(len(disparities))
    return done


def predict_images_ray(files: Sequence[Path], root: Path, opts: PredictOptions) -> int:
    """Images through Ray Data (``read_images`` keeps each image's size; mixed sizes are fine)."""
    import ray.data

    ds = ray.data.read_images([str(p) for p in files], mode="RGB", include_paths=True, num_cpus=1)
    return predict_dataset(ds, "path", root, len(files), opts)


def predict_shards(path: str | Path, opts: PredictOptions) -> int:
    """Every row of a shard split directory (``dad_ray.data.read_shards``), named by its ``key`` column."""
    from dad_ray.data import read_shards
    from dad_ray.data.manifest import read_manifest

    total = int(read_manifest(str(path))["num_samples"])
    ds = read_shards(str(path)).select_columns(["key", "image"])
    return predict_dataset(ds, "key", None, total, opts)


def run_predict(inputs: Sequence[str], opts: PredictOptions, ray_mode: str = "auto", ray_threshold: int = 256) -> int:
    """Route to the engine: a shard directory → Ray; images → Ray when ``ray_mode == "on"`` or, with ``"auto"``,
    when there are more than ``ray_threshold`` of them; otherwise local. Returns the number of images written."""
    if ray_mode not in ("auto", "on", "off"):
        raise ValueError(f"ray_mode must be 'auto', 'on' or 'off', got {ray_mode!r}")
    shards = [i for i in inputs if is_shard_dir(i)]
    if shards:
        if len(inputs) != 1:
            raise ValueError(f"a shard directory must be the only input, got {list(inputs)}")
        if ray_mode == "off":
            raise ValueError(f"{shards[0]} is a shard directory: it is read with Ray Data (drop --ray off)")
        init_ray()
        return predict_shards(shards[0], opts)
    files, root = collect_images(inputs)
    use_ray = ray_mode == "on" or (ray_mode == "auto" and len(files) > ray_threshold)
    logger.info("%d image(s) under %s → %s (%s)", len(files), root, opts.out, "Ray Data" if use_ray else "local")
    if use_ray:
        init_ray()
        return predict_images_ray(files, root, opts)
    return predict_local(files, root, opts)
