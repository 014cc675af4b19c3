"""Source -> shards, as a Ray Data job: ``prepare_shards`` (the job behind ``jobs/prepare_data.py``) and
``ensure_synthetic`` (the embedded default's data, generated once).

Ray Data lists nothing but the sources' references; tasks load, validate and encode samples in parallel
(``map_batches`` with explicit ``num_cpus``), in order; the driver streams the encoded rows into shards with a tqdm
progress bar and writes the manifest last. A bad sample stops the job with a :class:`DataError` naming its file or
.mat index, unless ``skip_bad``, which records each skipped sample and the reason in the manifest.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from typing import Any

import numpy as np
from tqdm import tqdm

from dad_ray.data import storage
from dad_ray.data.codec import IMAGE_FORMATS, encode_depth, encode_image, validate_sample
from dad_ray.data.errors import DataError, StaleShardsError
from dad_ray.data.manifest import COLUMNS, FORMAT, SCHEMA_VERSION, read_manifest, write_manifest
from dad_ray.data.shards import DEFAULT_SHARD_BYTES, ROW_GROUP, ShardWriter
from dad_ray.data.sources import Source, open_source

logger = logging.getLogger(__name__)

BLOCK_SAMPLES = 8  # samples per Ray Data task batch


def _encode_batch(batch: dict[str, np.ndarray], source: Source, image_format: str) -> dict[str, Any]:
    """Load + validate + encode each referenced sample; a bad one becomes a row with ``error`` set (no data)."""
    out: dict[str, list] = {"key": [], "image": [], "depth": [], "height": [], "width": [], "error": []}
    for ref in batch["ref"]:
        ref = str(ref)
        try:
            key, image, depth = source.load(ref)
            depth = validate_sample(source.error_name(ref), image, depth)
        except DataError as err:
            row = (source.error_name(ref), b"", b"", 0, 0, str(err))
        else:
            row = (key, encode_image(image, image_format), encode_depth(depth), depth.shape[0], depth.shape[1], "")
        for name, value in zip(out, row):
            out[name].append(value)
    return {
        "key": np.array(out["key"], dtype=object),
        "image": np.array(out["image"], dtype=object),
        "depth": np.array(out["depth"], dtype=object),
        "height": np.array(out["height"], dtype=np.int32),
        "width": np.array(out["width"], dtype=np.int32),
        "error": np.array(out["error"], dtype=object),
    }


def prepare_shards(
    source: str,
    out: str,
    split: str = "train",
    *,
    skip_bad: bool = False,
    filenames: str | None = None,
    height: int = 480,
    width: int = 640,
    seed: int = 0,
    image_format: str = "jpeg",
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
    num_cpus: float = 1.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert ``source`` into ``<out>/<split>/part-*.parquet`` + ``manifest.json``; returns the manifest.

    ``source``: ``synthetic:N``, ``nyu_depth_v2_labeled.mat`` (split train / test = official, or all), a folder
    layout root, or a sync layout root (with ``filenames``). Idempotent: if ``<out>/<split>`` already has a manifest
    made from the same source and options, it is returned untouched; a different one is an error unless
    ``overwrite``. ``height``/``width``/``seed`` only apply to ``synthetic:N``.
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    src = open_source(source, split, filenames=filenames, height=height, width=width, seed=seed)
    fingerprint = {"source": src.description, "split": split, "image_format": image_format, "skip_bad": skip_bad}
    directory = storage.join(out, split)
    existing = _finished(directory, fingerprint, src, overwrite)
    if existing is not None:
        return existing
    fs, inner = storage.resolve(directory)
    storage.delete(fs, f"{inner}/manifest.json")  # readers stop trusting the old shards before any is replaced

    refs = src.refs()
    if not refs:
        raise DataError(f"{source}: no samples found for split {split!r}")
    logger.info("%s -> %s: %d samples (%s)", source, directory, len(refs), src.description["kind"])
    rows = _encoded_rows(src, refs, image_format, num_cpus)
    writer = ShardWriter(directory, shard_bytes)
    with tqdm(total=len(refs), desc=f"shards {split}", unit="sample", disable=not progress) as bar:
        written, skipped = _write_rows(rows, writer, skip_bad, bar)
    shards = writer.close()
    if written == 0:
        raise DataError(f"{source}: every sample of split {split!r} was bad ({len(skipped)} skipped), no shard made")
    manifest = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "split": split,
        "source": source,
        "fingerprint": fingerprint,
        "image_format": image_format,
        "depth_format": "float32-le",
        "columns": list(COLUMNS),
        "num_samples": written,
        "row_group_size": ROW_GROUP,
        "shards": shards,
        "skipped": skipped,
    }
    write_manifest(directory, manifest)
    logger.info("%s: %d samples in %d shards, %d skipped", directory, written, len(shards), len(skipped))
    return manifest


def _finished(directory: str, fingerprint: dict[str, Any], src: Source, overwrite: bool) -> dict[str, Any] | None:
    """The manifest of shards already made in ``directory`` from the same source and options (None: make them);
    :class:`StaleShardsError` when they were made from another source, unless ``overwrite``."""
    existing = read_manifest(directory, required=False)
    if existing is None or overwrite:
        return None
    if existing.get("fingerprint") == fingerprint:
        logger.info(
            "%s: shards already made from this source (%d samples), nothing to do", directory, existing["num_samples"]
        )
        return existing
    raise StaleShardsError(
        f"{directory}: holds shards made from {existing.get('fingerprint', {}).get('source')}, not "
        f"{src.description}; pass overwrite (--overwrite) or choose another --out"
    )


def _encoded_rows(src: Source, refs: list[str], image_format: str, num_cpus: float):
    """The ``ray.data.Dataset`` of encoded rows (:func:`_encode_batch`), in the order of ``refs``."""
    import ray.data

    ds = ray.data.from_items([{"ref": r} for r in refs], override_num_blocks=max(1, len(refs) // BLOCK_SAMPLES))
    ds = ds.map_batches(
        _encode_batch,
        fn_kwargs={"source": src, "image_format": image_format},
        batch_size=BLOCK_SAMPLES,
        num_cpus=num_cpus,
        batch_format="numpy",
    )
    ds.context.execution_options.preserve_order = True  # the same shards on every run
    ds.context.enable_progress_bars = False  # ours counts samples
    return ds


def _write_rows(rows, writer: ShardWriter, skip_bad: bool, bar: tqdm) -> tuple[int, list[dict[str, str]]]:
    """Stream the encoded rows into ``writer``; returns (rows written, skipped inputs with their reasons). A bad
    row raises its :class:`DataError` unless ``skip_bad``."""
    skipped: list[dict[str, str]] = []
    written = 0
    for batch in rows.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
        for key, image, depth, h, w, error in zip(
            batch["key"], batch["image"], batch["depth"], batch["height"], batch["width"], batch["error"]
        ):
            if error:
                if not skip_bad:
                    raise DataError(error)
                logger.warning("skipped: %s", error)
                skipped.append({"key": str(key), "reason": str(error)})
            else:
                writer.add(str(key), bytes(image), bytes(depth), int(h), int(w))
                written += 1
            bar.update(1)
    return written, skipped


@contextlib.contextmanager
def _lock(root: str, split: str):
    """An exclusive lock beside a local split directory (two processes racing to generate wait for each other);
    for URIs nothing (the writes are idempotent: same seeds, same bytes)."""
    if storage.is_uri(root):
        yield
        return
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f".{split}.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


SYNTHETIC_SHARD_BYTES = 16 * 2**20  # small data sets: several shards, so the per-epoch file order shuffles


def ensure_synthetic(root: str, cfg, splits: tuple[str, ...] = ("train", "test"), **kwargs: Any) -> None:
    """Generate ``<root>/<split>`` from :class:`~dad_ray.config.schema.SyntheticConfig` where its manifest is missing.

    The first split gets ``cfg.train_samples`` scenes, the others ``cfg.val_samples``; seeds differ per split.
    Idempotent (a split made from the same settings is left alone), safe when two processes race (a lock file per
    split; the second finds the manifest), and strict: shards made with OTHER settings (count, size, seed) are an
    error, never silently reused. ``kwargs`` go to :func:`prepare_shards` (e.g. ``progress=False``).
    """
    kwargs.setdefault("shard_bytes", SYNTHETIC_SHARD_BYTES)
    for i, split in enumerate(splits):
        count = cfg.train_samples if i == 0 else cfg.val_samples
        if count <= 0:
            raise DataError(f"data.synthetic: split {split!r} would get {count} samples (set train/val_samples >= 1)")
        with _lock(root, split):
            try:
                prepare_shards(
                    f"synthetic:{count}", root, split, height=cfg.height, width=cfg.width, seed=cfg.seed, **kwargs
                )
            except StaleShardsError as err:
                raise StaleShardsError(
                    f"data.root {root}: split {split!r} holds shards made with other settings than data.synthetic "
                    f"{cfg} (delete {storage.join(root, split)} or point data.root elsewhere)"
                ) from err
