"""Precomputed teachers: pseudo-labels stored as an extra column of the training shards.

A precomputed teacher (``model.teachers[i].column: NAME``) is any model whose outputs were made before training —
a diffusion model such as the paper's GenPercept assistant, Marigold, Depth Pro, or one of ours through
``jobs/predict.py --write-column``. Its map for each row is stored in the Parquet column ``teacher_<NAME>`` of the
row's shard, at the stored image's resolution, and the training augmentation crops, flips and resizes it exactly as
it does the image (:func:`dad_ray.data.augment.augment_sample`).

Stored values: **disparity** (what the student predicts), float16 little-endian, H * W values, divided by the row's
largest valid value (so in [0, 1]: float16's relative precision ~5e-4 over the whole range, never overflowing);
invalid pixels are NaN. Dividing by a per-row constant loses nothing the losses see: every term of L_Dis normalises
its maps (global / local / hybrid, or per image for "none" via the median-MAD in L_grad's residual) and the
local-global term divides the crop and the patches of one row by the same constant. Half the bytes of float32, and
no 16-bit PNG quantisation step to choose.

Kinds an attached map may declare (``--kind``), converted to disparity when attached:

- ``disparity``: as is (any non-negative scale; negative or non-finite = invalid);
- ``depth``: depth up to scale (no shift): disparity = 1 / depth, invalid where depth <= 0 or non-finite;
- ``affine_depth``: affine-invariant depth (unknown scale AND shift, e.g. Marigold's [0, 1] output): normalised per
  row to [0, 1] over its valid pixels (d' = (d - min) / (max - min)), then disparity = 1 / (d' + shift), with
  ``shift`` (default 0.1, recorded in the manifest) the assumed distance of the nearest pixel as a fraction of the
  scene's depth range. An affine depth map fixes no disparity: some shift must be assumed, and 1 / (d' + shift) is
  the disparity of a scene whose nearest point is ``shift`` range-units from the camera. Say which shift you used.

The manifest lists attached columns under ``teacher_columns: {NAME: {"kind", "shift", "source"}}``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from dad_ray.data import storage
from dad_ray.data.errors import DataError
from dad_ray.data.manifest import read_manifest, write_manifest

logger = logging.getLogger(__name__)

KINDS = ("disparity", "depth", "affine_depth")
PREFIX = "teacher_"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


def column_name(name: str) -> str:
    """The Parquet column of precomputed teacher ``name`` (lower-case letters, digits, underscores)."""
    if not _NAME.match(name):
        raise DataError(f"teacher column name {name!r}: use lower-case letters, digits and underscores")
    return PREFIX + name


def teacher_columns(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The precomputed teacher columns a shard set carries (``{}`` for shards without any)."""
    return dict(manifest.get("teacher_columns", {}))


def to_disparity(values: np.ndarray, kind: str, shift: float = 0.1) -> np.ndarray:
    """(H, W) map of ``kind`` (see the module docstring) → float32 disparity, NaN where invalid."""
    v = np.asarray(values, dtype=np.float64)
    valid = np.isfinite(v)
    if kind == "disparity":
        valid &= v >= 0
        out = np.where(valid, v, np.nan)
    elif kind == "depth":
        valid &= v > 0
        out = np.where(valid, 1.0 / np.where(valid, v, 1.0), np.nan)
    elif kind == "affine_depth":
        if shift <= 0:
            raise ValueError(f"affine_depth needs a shift > 0, got {shift}")
        lo, hi = (float(v[valid].min()), float(v[valid].max())) if valid.any() else (0.0, 1.0)
        d = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
        out = np.where(valid, 1.0 / (np.where(valid, d, 0.0) + shift), np.nan)
    else:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    return out.astype(np.float32)


def encode_map(disparity: np.ndarray) -> bytes:
    """(H, W) float disparity, NaN invalid → stored bytes (float16 LE, divided by the largest valid value)."""
    d = np.asarray(disparity, dtype=np.float32)
    valid = np.isfinite(d)
    top = float(d[valid].max()) if valid.any() else 0.0
    scaled = d / top if top > 0 else np.where(valid, 0.0, np.nan)
    return np.ascontiguousarray(scaled, dtype="<f2").tobytes()


def decode_map(data: Any, height: int, width: int, where: str) -> np.ndarray:
    """Stored bytes → (H, W) float32 disparity in [0, 1], NaN invalid; a wrong size is an error naming ``where``."""
    values = np.frombuffer(memoryview(data), dtype="<f2")
    if values.size != height * width:
        raise DataError(f"{where}: teacher map holds {values.size} values, the row is {height}x{width}")
    return values.reshape(height, width).astype(np.float32)


def load_external(path: str) -> np.ndarray:
    """An external model's map: ``.npy`` (any float/int 2-D array) or 16-bit PNG (read as its integer values)."""
    data = storage.read_path(path)
    if path.endswith(".npy"):
        array = np.load(io.BytesIO(data), allow_pickle=False)
    else:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            if img.mode not in ("I;16", "I;16B", "I", "L"):
                raise DataError(f"{path}: a teacher PNG must be 16-bit grayscale, got mode {img.mode}")
            array = np.asarray(img).astype(np.float32)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise DataError(f"{path}: a teacher map must be 2-D, got shape {array.shape}")
    return array


def external_file(directory: str, key: str) -> str:
    """The file holding row ``key``'s map in an external outputs folder: ``<directory>/<key>.npy`` or
    ``<key>.png`` (keys are the source files' relative paths without extension); an error naming both if neither."""
    candidates = [storage.join(directory, *key.split("/")) + ext for ext in (".npy", ".png")]
    for path in candidates:
        if storage.is_file(path):
            return path
    raise DataError(f"row {key}: no teacher map found (looked for {' and '.join(candidates)})")


def rewrite_shard(fs, path: str, column: str, produce: Callable[[list[dict[str, Any]]], list[np.ndarray]]) -> dict:
    """Shard ``path`` rewritten with ``column`` (replaced if present) from ``produce(rows)`` → maps, atomically;
    returns its new manifest entry (bytes, sha256). Row groups are kept."""
    with fs.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        group_rows = parquet.metadata.row_group(0).num_rows if parquet.metadata.num_row_groups else 1
        table = parquet.read()
    rows = [
        {"key": k, "height": h, "width": w, "image": img}
        for k, h, w, img in zip(
            table.column("key").to_pylist(),
            table.column("height").to_pylist(),
            table.column("width").to_pylist(),
            table.column("image").to_pylist(),
        )
    ]
    maps = produce(rows)
    values = []
    for row, disparity in zip(rows, maps):
        if disparity.shape != (row["height"], row["width"]):
            raise DataError(
                f"{path} row {row['key']}: teacher map is {disparity.shape}, the stored image is "
                f"{(row['height'], row['width'])}"
            )
        values.append(encode_map(disparity))
    if column in table.column_names:
        table = table.drop_columns([column])
    table = table.append_column(pa.field(column, pa.binary()), pa.array(values, type=pa.binary()))
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=group_rows)
    data = buf.getvalue()
    storage.write_atomic(fs, path, data)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


Producer = Callable[[list[dict[str, Any]]], list[np.ndarray]]
"""Rows (``key``, ``height``, ``width``, ``image`` bytes) of one shard → their (H, W) float32 disparity maps, NaN
where invalid."""


@dataclass(frozen=True)
class ShardJob:
    """Adding one column to the shards of ``split_dir`` (picklable: Ray actors run :meth:`run`)."""

    split_dir: str
    column: str
    redo_all: bool  # the column exists from another attach under the same name: replace it everywhere

    def run(self, file: str, produce: Producer) -> dict[str, Any]:
        """Shard ``file`` with the column (not redone when an interrupted run of this attach already wrote it) →
        ``{"file", "bytes", "sha256", "redone"}``."""
        fs, inner = storage.resolve(self.split_dir)
        path = f"{inner}/{file}"
        with fs.open_input_file(path) as handle:
            present = self.column in pq.ParquetFile(handle).schema_arrow.names
        if present and not self.redo_all:
            data = storage.read_bytes(fs, path)
            return {"file": file, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "redone": False}
        return {"file": file, **rewrite_shard(fs, path, self.column, produce), "redone": True}


Runner = Callable[[ShardJob, list[str]], list[dict[str, Any]]]


def attach_column(
    split_dir: str,
    name: str,
    make_producer: Callable[[], Producer],
    *,
    kind: str = "disparity",
    shift: float = 0.1,
    source: str = "",
    runner: Runner | None = None,
) -> dict[str, Any]:
    """Add precomputed teacher ``name`` to every shard of ``split_dir`` and record it in the manifest (written
    last, so readers never see a half-attached set). Resumable: a shard an interrupted run of the same attach
    already rewrote is not redone. ``runner(job, files)`` runs ``job.run`` over the shard files (default: here,
    one producer from ``make_producer()``; ``jobs/predict.py --write-column`` passes a Ray Data actor pool, each
    actor building its own producer). Returns the new manifest."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    manifest = read_manifest(split_dir)
    previous = teacher_columns(manifest).get(name)
    wanted = {"kind": kind, "shift": shift, "source": source}
    job = ShardJob(split_dir, column_name(name), redo_all=previous is not None and previous != wanted)
    files = [s["file"] for s in manifest["shards"]]
    if runner is None:
        produce = make_producer()
        results = [job.run(f, produce) for f in tqdm(files, desc=f"attach {name}", unit="shard")]
    else:
        results = runner(job, files)
    by_file = {r["file"]: r for r in results}
    shards = [
        {**s, "bytes": by_file[s["file"]]["bytes"], "sha256": by_file[s["file"]]["sha256"]} for s in manifest["shards"]
    ]
    manifest = {**manifest, "shards": shards, "teacher_columns": {**teacher_columns(manifest), name: wanted}}
    write_manifest(split_dir, manifest)
    done = sum(1 for r in results if r["redone"])
    logger.info("%s: teacher column %r (%s) in %d shards (%d written now)", split_dir, name, kind, len(files), done)
    return manifest


@dataclass(frozen=True)
class ExternalMaps:
    """``make_producer`` of :func:`attach_column` for a folder of ``<key>.npy`` / ``<key>.png`` maps."""

    directory: str
    kind: str
    shift: float = 0.1

    def __call__(self) -> Producer:
        return external_producer(self.directory, self.kind, self.shift)


def external_producer(directory: str, kind: str, shift: float) -> Producer:
    """The producer reading each row's map from ``directory`` and converting ``kind`` to disparity."""

    def produce(rows: list[dict[str, Any]]) -> list[np.ndarray]:
        out = []
        for row in rows:
            path = external_file(directory, row["key"])
            array = load_external(path)
            if array.shape != (row["height"], row["width"]):
                raise DataError(
                    f"{path} (row {row['key']}): map is {array.shape}, the stored image is "
                    f"{(row['height'], row['width'])}"
                )
            out.append(to_disparity(array, kind, shift))
        return out

    return produce
