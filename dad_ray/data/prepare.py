"""Source -> shards, as a parallel, resumable Ray Data job: ``prepare_shards`` (the job behind
``jobs/prepare_data.py``) and ``ensure_synthetic`` (the embedded default's data, generated once).

Sized for the paper's 200 000 SA-1B images:

- **deterministic sample -> shard assignment**: the driver lists the source's references (a few bytes each) and
  cuts them into shards of ``rows_per_shard`` consecutive references (sample i goes to shard i // rows_per_shard).
  ``rows_per_shard`` comes from ``shard_bytes`` and the encoded size of the first few samples; it is fixed in a plan
  (``<split>/_progress/plan.json``: fingerprint, number and digest of the references, rows per shard) written before
  any shard, so a re-run cuts the same shards;
- **one Ray Data task per shard** (``map_batches`` with explicit ``num_cpus``) loads, checks and encodes its samples
  and writes ``part-XXXXX.parquet`` itself, atomically, then a small record of it (``_progress/part-XXXXX.json``:
  rows, bytes, checksum, skipped inputs); the driver only counts;
- **resumable**: a re-run of an interrupted conversion (same source and options) finds the plan and the finished
  shards' records and converts only the missing shards; the **manifest is written last**, from the records, so a
  reader never sees a half-made split; then ``_progress/`` is removed.

A bad sample stops the job with a :class:`DataError` naming its file or .mat index (its shard is not written; the
shards already finished are kept for the re-run) unless ``skip_bad``, which records each skipped sample and the
reason in the manifest. Encoded image files are stored as their original bytes (see :mod:`dad_ray.data.codec`);
``max_side`` stores copies scaled down to that longer side instead, which re-encodes them (``image_format``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.fs as pafs
from tqdm import tqdm

from dad_ray.data import storage
from dad_ray.data.codec import (
    IMAGE_FORMATS,
    ImageFile,
    checked_size,
    encode_depth,
    encode_image,
    resized_copy,
    validate_depth,
)
from dad_ray.data.errors import DataError, StaleShardsError
from dad_ray.data.manifest import COLUMNS, FORMAT, MANIFEST, SCHEMA_VERSION, read_manifest, write_manifest
from dad_ray.data.shards import DEFAULT_SHARD_BYTES, ROW_GROUP, SCHEMA, shard_name, write_shard
from dad_ray.data.sources import Source, open_source

logger = logging.getLogger(__name__)

PROGRESS_DIR = "_progress"
PLAN_FILE = "plan.json"
PROBE_SAMPLES = 4  # samples encoded on the driver to size the shards
MAX_ROWS_PER_SHARD = 4096


@dataclass(frozen=True)
class EncodeOptions:
    """How samples are stored (picklable; handed to every shard task)."""

    image_format: str = "jpeg"  # encoding of arrays and of resized copies
    max_side: int = 0  # > 0: store images scaled down so that their longer side is at most this
    depth: bool = True  # False: drop the source's depth (depth-less shards)
    skip_bad: bool = False


def encode_sample(source: Source, ref: str, opts: EncodeOptions) -> tuple[str, bytes, bytes | None, int, int]:
    """``(key, image bytes, depth bytes or None, height, width)`` of one reference, checked: the image decodes
    completely, RGB and depth sizes agree, the depth has a valid pixel (non-finite / negative -> 0). Raises
    :class:`DataError` naming the sample."""
    name = source.error_name(ref)
    key, image, depth = source.load(ref)
    if not opts.depth:
        depth = None
    if opts.max_side > 0 and depth is not None:
        raise DataError(f"{name}: --max-side resizes images only; a labeled source keeps its size (or pass --no-depth)")
    if isinstance(image, ImageFile):
        if opts.max_side > 0:
            data, height, width = resized_copy(image, opts.max_side, opts.image_format)
        else:
            data, (height, width) = image.data, checked_size(image)
    else:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DataError(f"{name}: image must be (H, W, 3) uint8, got shape {image.shape} dtype {image.dtype}")
        if opts.max_side > 0 and max(image.shape[:2]) > opts.max_side:
            return _resized_array(name, key, image, opts)
        data, (height, width) = encode_image(image, opts.image_format), image.shape[:2]
    if depth is None:
        return key, data, None, height, width
    return key, data, encode_depth(validate_depth(name, depth, (height, width))), height, width


def _resized_array(name: str, key: str, image: np.ndarray, opts: EncodeOptions) -> tuple[str, bytes, None, int, int]:
    data, height, width = resized_copy(ImageFile(encode_image(image, "png"), name), opts.max_side, opts.image_format)
    return key, data, None, height, width


def convert_shard(task: dict[str, Any], source: Source, opts: EncodeOptions, directory: str) -> dict[str, Any]:
    """One shard: encode its references (``task``: ``shard``, ``start``, ``refs``), write ``part-XXXXX.parquet`` and
    its record into ``directory`` (local path or URI). Returns ``{"shard", "record" (JSON) or "", "error"}``: a bad
    sample without ``skip_bad`` returns its error and writes nothing."""
    rows: dict[str, list] = {name: [] for name in SCHEMA.names}
    skipped: list[dict[str, str]] = []
    for offset, ref in enumerate(task["refs"]):
        ref = str(ref)
        try:
            key, image, depth, height, width = encode_sample(source, ref, opts)
        except DataError as err:
            if not opts.skip_bad:
                return {"shard": task["shard"], "record": "", "error": str(err)}
            skipped.append({"key": source.error_name(ref), "reason": str(err)})
            continue
        for column, value in zip(SCHEMA.names, (task["start"] + offset, key, image, depth, height, width)):
            rows[column].append(value)
    fs, inner = storage.resolve(directory)
    entry = write_shard(fs, inner, task["shard"], rows) if rows["key"] else None
    record = {"shard": task["shard"], "entry": entry, "skipped": skipped, "refs": len(task["refs"])}
    storage.write_atomic(fs, f"{inner}/{PROGRESS_DIR}/{_record_name(task['shard'])}", json.dumps(record).encode())
    return {"shard": task["shard"], "record": json.dumps(record), "error": ""}


def _record_name(shard: int) -> str:
    return shard_name(shard).replace(".parquet", ".json")


def _convert_batch(batch: dict[str, np.ndarray], source: Source, opts: EncodeOptions, directory: str) -> dict:
    out = [
        convert_shard({"shard": int(s), "start": int(b), "refs": list(r)}, source, opts, directory)
        for s, b, r in zip(batch["shard"], batch["start"], batch["refs"])
    ]
    return {k: np.array([o[k] for o in out], dtype=object if k != "shard" else np.int64) for k in out[0]}


def fingerprint_of(src: Source, split: str, opts: EncodeOptions) -> dict[str, Any]:
    """What a finished split was made from: a re-run with the same fingerprint is a no-op (new options appear only
    when set, so shards made before they existed keep their fingerprint)."""
    fingerprint = {
        "source": src.description,
        "split": split,
        "image_format": opts.image_format,
        "skip_bad": opts.skip_bad,
    }
    if opts.max_side:
        fingerprint["max_side"] = opts.max_side
    if not opts.depth and src.has_depth:  # a labeled source converted without its depth
        fingerprint["depth"] = False
    return fingerprint


def prepare_shards(
    source: str,
    out: str,
    split: str = "train",
    *,
    skip_bad: bool = False,
    filenames: str | None = None,
    fmt: str | None = None,
    height: int = 480,
    width: int = 640,
    seed: int = 0,
    image_format: str = "jpeg",
    max_side: int = 0,
    depth: bool = True,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
    num_cpus: float = 1.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert ``source`` into ``<out>/<split>/part-*.parquet`` + ``manifest.json``; returns the manifest.

    ``source``: ``synthetic:N``, ``nyu_depth_v2_labeled.mat`` (split train / test = official, or all), a folder or
    sync layout root, a benchmark directory or ``.tar`` with ``fmt`` (nyu, kitti, diode, eth3d, scannet) and its
    ``filenames`` list, or unlabeled images (a directory, a ``.tar``, or a URI; see :mod:`dad_ray.data.sources`).
    Idempotent: a split whose manifest was made from the same source and options is returned untouched; another one
    is an error unless ``overwrite``. An interrupted conversion is resumed (only missing shards are converted).
    ``depth=False`` drops the source's depth; ``height``/``width``/``seed`` only apply to ``synthetic:N``.
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    if max_side < 0:
        raise ValueError(f"max_side must be >= 0, got {max_side}")
    src = open_source(source, split, filenames=filenames, height=height, width=width, seed=seed, fmt=fmt)
    opts = EncodeOptions(image_format, max_side, depth and src.has_depth, skip_bad)
    fingerprint = fingerprint_of(src, split, opts)
    directory = storage.join(out, split)
    existing = _finished(directory, fingerprint, src, overwrite)
    if existing is not None:
        return existing
    fs, inner = storage.resolve(directory)
    if overwrite:
        _clear_shards(directory)
    storage.delete(fs, f"{inner}/manifest.json")  # readers stop trusting the old shards before any is replaced

    refs = src.refs()
    if not refs:
        raise DataError(f"{source}: no samples found for split {split!r}")
    plan = _plan(directory, src, refs, fingerprint, opts, shard_bytes)
    records = _records(directory)
    todo = [s for s in range(plan["num_shards"]) if s not in records]
    logger.info(
        "%s -> %s: %d samples (%s), %d shards of %d, %d to convert",
        source, directory, len(refs), src.description["kind"], plan["num_shards"], plan["rows_per_shard"], len(todo),
    )  # fmt: skip
    if todo:
        records.update(_run_conversion(src, refs, plan, todo, opts, directory, num_cpus, progress))
    manifest = _manifest(src, source, split, fingerprint, opts, [records[s] for s in range(plan["num_shards"])])
    write_manifest(directory, manifest)
    if storage.exists(fs, f"{inner}/{PROGRESS_DIR}"):
        fs.delete_dir(f"{inner}/{PROGRESS_DIR}")  # the records are in the manifest now
    logger.info(
        "%s: %d samples in %d shards, %d skipped", directory, manifest["num_samples"], len(manifest["shards"]),
        len(manifest["skipped"]),
    )  # fmt: skip
    return manifest


def _manifest(src, source, split, fingerprint, opts: EncodeOptions, records: list[dict]) -> dict[str, Any]:
    shards = [r["entry"] for r in records if r["entry"] is not None]
    skipped = [s for r in records for s in r["skipped"]]
    written = sum(s["num_rows"] for s in shards)
    if written == 0:
        raise DataError(f"{source}: every sample of split {split!r} was bad ({len(skipped)} skipped), no shard made")
    manifest = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "split": split,
        "source": source,
        "fingerprint": fingerprint,
        "dataset": src.dataset,
        "has_depth": opts.depth,
        "image_format": opts.image_format,
        "max_side": opts.max_side,
        "depth_format": "float32-le" if opts.depth else None,
        "columns": list(COLUMNS),
        "num_samples": written,
        "row_group_size": ROW_GROUP,
        "shards": shards,
        "skipped": skipped,
    }
    manifest.update(getattr(src, "manifest_extra", {}))
    return manifest


def _plan(directory: str, src: Source, refs: list[str], fingerprint: dict, opts: EncodeOptions, shard_bytes: int):
    """The conversion plan of ``directory``: the one an interrupted run left (same fingerprint and references), or a
    new one (rows per shard from the encoded size of the first samples), written before any shard."""
    fs, inner = storage.resolve(directory)
    path = f"{inner}/{PROGRESS_DIR}/{PLAN_FILE}"
    digest = hashlib.sha256("\n".join(refs).encode()).hexdigest()
    if storage.exists(fs, path):
        plan = json.loads(storage.read_bytes(fs, path))
        if plan["fingerprint"] == fingerprint and plan["refs_sha256"] == digest:
            logger.info("%s: resuming an interrupted conversion", directory)
            return plan
        raise StaleShardsError(
            f"{directory}: holds an unfinished conversion of {plan['fingerprint'].get('source')} (or of another "
            f"listing of it: {plan['num_refs']} samples then, {len(refs)} now); pass overwrite (--overwrite) to "
            "start over, or choose another --out"
        )
    _clear_shards(directory)  # no plan: shards here (a crash's leftovers, an old conversion) are not this one's
    sizes = []
    for ref in refs[:PROBE_SAMPLES]:
        with contextlib.suppress(DataError):  # a bad sample is reported by its shard task, with its name
            _key, image, depth, _h, _w = encode_sample(src, ref, opts)
            sizes.append(len(image) + (len(depth) if depth else 0))
    per_sample = float(np.mean(sizes)) if sizes else 1.0
    # the first count whose bytes reach shard_bytes (what rolling shards by size gave for uniform samples)
    rows = int(min(MAX_ROWS_PER_SHARD, max(1, math.ceil(shard_bytes / max(per_sample, 1.0)))))
    plan = {
        "fingerprint": fingerprint,
        "num_refs": len(refs),
        "refs_sha256": digest,
        "rows_per_shard": rows,
        "num_shards": -(-len(refs) // rows),
    }
    storage.write_atomic(fs, path, json.dumps(plan, indent=1).encode())
    return plan


def _clear_shards(directory: str) -> None:
    """Delete what a conversion writes in ``directory`` — shards, temporaries, manifest, progress records — and
    nothing else (``--out`` may hold other files; a split directory is never emptied wholesale)."""
    fs, inner = storage.resolve(directory)
    for info in fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True)):
        name = info.base_name
        if name == PROGRESS_DIR and info.type == pafs.FileType.Directory:
            fs.delete_dir(info.path)
        elif name == MANIFEST or name.startswith(".tmp-") or (name.startswith("part-") and name.endswith(".parquet")):
            fs.delete_file(info.path)


def _records(directory: str) -> dict[int, dict]:
    """The records of the shards an earlier run finished (``_progress/part-XXXXX.json``), by shard number."""
    fs, inner = storage.resolve(directory)
    selector = pafs.FileSelector(f"{inner}/{PROGRESS_DIR}", allow_not_found=True)
    records = {}
    for info in fs.get_file_info(selector):
        if info.base_name.startswith("part-") and info.base_name.endswith(".json"):
            record = json.loads(storage.read_bytes(fs, info.path))
            records[int(record["shard"])] = record
    return records


def _run_conversion(src, refs, plan, todo, opts, directory, num_cpus, progress) -> dict[int, dict]:
    """Convert the shards ``todo`` as a Ray Data job; returns their records. The first bad sample (without
    ``skip_bad``) raises its :class:`DataError`; shards finished by then stay for a re-run."""
    import ray.data

    rows = plan["rows_per_shard"]
    tasks = [{"shard": s, "start": s * rows, "refs": refs[s * rows : (s + 1) * rows]} for s in todo]
    ds = ray.data.from_items(tasks, override_num_blocks=len(tasks)).map_batches(
        _convert_batch,
        fn_kwargs={"source": src, "opts": opts, "directory": directory},
        batch_size=1,
        num_cpus=num_cpus,
        batch_format="numpy",
    )
    ds.context.enable_progress_bars = False  # ours counts samples
    done: dict[int, dict] = {}
    with tqdm(total=sum(len(t["refs"]) for t in tasks), desc="shards", unit="sample", disable=not progress) as bar:
        for row in ds.iter_rows():
            if row["error"]:
                raise DataError(row["error"])
            record = json.loads(row["record"])
            done[int(row["shard"])] = record
            bar.update(record["refs"])
    return done


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
    See :func:`ensure_synthetic_splits`. ``kwargs`` go to :func:`prepare_shards` (e.g. ``progress=False``).
    """
    counts = [(split, cfg.train_samples if i == 0 else cfg.val_samples, True) for i, split in enumerate(splits)]
    ensure_synthetic_splits(root, cfg, counts, **kwargs)


def ensure_synthetic_splits(root: str, cfg, splits: list[tuple[str, int, bool]], **kwargs: Any) -> None:
    """Generate each ``(split, count, with depth)`` of ``splits`` under ``root`` where its manifest is missing (a
    split's scenes are seeded by (cfg.seed, split name, index): splits never share a scene; ``with depth`` False
    writes depth-less shards — unlabeled scenes).

    Idempotent (a split made from the same settings is left alone), safe when two processes race (a lock file per
    split; the second finds the manifest), and strict: synthetic shards made with OTHER settings (count, size, seed)
    are an error, never silently reused. A split holding shards of a real source (NYU, folders, ...) is used as it
    is: pointing data.root at real data is never refused because the base preset describes synthetic scenes.
    ``kwargs`` go to :func:`prepare_shards` (e.g. ``progress=False``).
    """
    kwargs.setdefault("shard_bytes", SYNTHETIC_SHARD_BYTES)
    for split, count, depth in splits:
        if count <= 0:
            raise DataError(f"data.synthetic: split {split!r} would get {count} samples (set its count >= 1)")
        if _real_shards(storage.join(root, split)):
            continue
        with _lock(root, split):
            try:
                prepare_shards(
                    f"synthetic:{count}",
                    root,
                    split,
                    height=cfg.height,
                    width=cfg.width,
                    seed=cfg.seed,
                    depth=depth,
                    **kwargs,
                )
            except StaleShardsError as err:
                raise StaleShardsError(
                    f"data.root {root}: split {split!r} holds synthetic shards made with other settings than "
                    f"data.synthetic {cfg}: set data.synthetic to the settings they were made with (their "
                    "manifest.json says which), or point data.root at another directory"
                ) from err


def _real_shards(directory: str) -> bool:
    """Whether ``directory`` holds finished shards of a source other than the synthetic generator (logged)."""
    existing = read_manifest(directory, required=False)
    source = ((existing or {}).get("fingerprint") or {}).get("source") or {}
    if existing is None or source.get("kind") == "synthetic":
        return False
    logger.info(
        "%s: shards of %s (%d samples) are used as they are; data.synthetic does not apply to them",
        directory,
        existing.get("source"),
        existing["num_samples"],
    )
    return True
