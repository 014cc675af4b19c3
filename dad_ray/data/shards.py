"""Parquet shards: the writer (one shard per call, atomic, checksummed) and the reader (a Ray Data dataset).

Layout: ``<root>/<split>/part-XXXXX.parquet`` + ``<root>/<split>/manifest.json`` (see :mod:`dad_ray.data.manifest`).
Columns: ``index`` (int64, the sample's position in the source's listing: unique, in shard order, with gaps where
inputs were skipped), ``key`` (string), ``image`` (binary: the source file's own JPEG/PNG/WebP bytes, or JPEG/PNG
encoded here), ``depth`` (binary, float32 little-endian metres; null in depth-less shards), ``height``, ``width``
(int32). Parquet compression zstd; row groups of :data:`ROW_GROUP` rows (recorded in the manifest).
"""

from __future__ import annotations

import hashlib
import io
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dad_ray.data import storage
from dad_ray.data.codec import decode_depth, decode_image
from dad_ray.data.errors import DataError
from dad_ray.data.manifest import has_depth, read_manifest

logger = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("key", pa.string()),
        ("image", pa.binary()),
        ("depth", pa.binary()),
        ("height", pa.int32()),
        ("width", pa.int32()),
    ]
)
ROW_GROUP = 16  # rows per Parquet row group: the unit a pipeline task reads (small = fine-grained shuffle)
DEFAULT_SHARD_BYTES = 64 * 2**20


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def write_shard(fs, split_dir: str, index: int, rows: dict[str, list]) -> dict[str, Any]:
    """Write ``rows`` (one list per :data:`SCHEMA` column; ``depth`` None for depth-less rows) as shard ``index`` of
    the split directory ``split_dir`` (a path inside ``fs``), atomically; returns its manifest entry."""
    table = pa.Table.from_pydict(rows, schema=SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=ROW_GROUP)
    data = buf.getvalue()
    name = shard_name(index)
    storage.write_atomic(fs, f"{split_dir}/{name}", data)
    logger.debug("wrote %s (%d rows, %.1f MB)", name, table.num_rows, len(data) / 2**20)
    return {"file": name, "num_rows": table.num_rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def split_dir(path: str, split: str | None) -> str:
    return path if split is None else storage.join(path, split)


def shard_files(path: str, split: str | None = None, *, verify: bool = False) -> tuple[dict, list[str], Any]:
    """``(manifest, shard paths inside the filesystem, filesystem)``; every listed shard must exist (and match its
    checksum when ``verify``)."""
    directory = split_dir(path, split)
    manifest = read_manifest(directory)
    fs, inner = storage.resolve(directory)
    files = []
    for shard in manifest["shards"]:
        full = f"{inner}/{shard['file']}"
        if not storage.exists(fs, full):
            raise DataError(f"{storage.join(directory, shard['file'])}: listed in the manifest but missing")
        if verify and hashlib.sha256(storage.read_bytes(fs, full)).hexdigest() != shard["sha256"]:
            raise DataError(f"{storage.join(directory, shard['file'])}: checksum does not match the manifest")
        files.append(full)
    if not files:
        raise DataError(f"{directory}: the manifest lists no shard (0 samples)")
    return manifest, files, fs


def row_groups(manifest: dict, files: list[str]) -> list[dict[str, Any]]:
    """``[{"path", "row_group", "rows"}]`` for every row group of every shard, in shard order (from the manifest: no
    footer is read)."""
    size = int(manifest["row_group_size"])
    units = []
    for path, shard in zip(files, manifest["shards"]):
        n = int(shard["num_rows"])
        for g in range(-(-n // size)):
            units.append({"path": path, "row_group": g, "rows": min(size, n - g * size)})
    return units


def read_row_group(fs, path: str, row_group: int, extra: tuple[str, ...] = ()) -> dict[str, list]:
    """One row group of a shard: ``index``, ``key``, ``height``, ``width`` as Python lists, ``image`` and ``depth``
    (and the ``extra`` binary columns, e.g. precomputed teachers') as zero-copy ``pyarrow.Buffer`` views
    (``bytes(b)`` / ``np.frombuffer(b)`` read them); errors name the file (and a missing extra column)."""
    try:
        with fs.open_input_file(path) as handle:
            table = pq.ParquetFile(handle).read_row_group(row_group, use_threads=False)
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"{path}: cannot read row group {row_group} ({err})") from err
    missing = [name for name in extra if name not in table.column_names]
    if missing:
        raise DataError(f"{path}: no column {', '.join(missing)} (attach it with jobs/attach_teacher.py)")
    out: dict[str, list] = {}
    for name in (*SCHEMA.names, *extra):
        column = table.column(name)
        if pa.types.is_binary(column.type):
            out[name] = [value.as_buffer() for chunk in column.chunks for value in chunk]
        else:
            out[name] = column.to_pylist()
    return out


def decode_rows(batch: dict[str, np.ndarray], has_depth: bool = True) -> dict[str, Any]:
    """A batch of stored rows -> ``index``, ``key``, ``image`` (H, W, 3) uint8 and, when ``has_depth``, ``depth``
    (H, W) float32 metres (a depth-less row there is an error naming it)."""
    images, depths = [], []
    for key, img, dep, h, w in zip(batch["key"], batch["image"], batch["depth"], batch["height"], batch["width"]):
        image = decode_image(img, f"row {key}")
        if image.shape[:2] != (h, w):
            raise DataError(f"row {key}: image is {image.shape[:2]}, the row says {(int(h), int(w))}")
        images.append(image)
        if has_depth:
            if dep is None:
                raise DataError(f"row {key}: no depth stored (depth-less shards have manifest has_depth: false)")
            depths.append(decode_depth(dep, int(h), int(w), f"row {key}").copy())
    out = {"index": batch["index"], "key": batch["key"], "image": _stack_or_list(images)}
    if has_depth:
        out["depth"] = _stack_or_list(depths)
    return out


def _stack_or_list(arrays: list[np.ndarray]) -> Any:
    if all(a.shape == arrays[0].shape for a in arrays):
        return np.stack(arrays)
    return arrays  # ragged: Ray stores a variable-shaped tensor column


def read_raw(path: str, split: str | None = None, *, num_cpus: float = 1.0, verify: bool = False):
    """The stored rows (encoded) as a ``ray.data.Dataset``, after validating the manifest."""
    import ray.data

    _manifest, files, fs = shard_files(path, split, verify=verify)
    return ray.data.read_parquet(files, filesystem=fs, num_cpus=num_cpus, file_extensions=None)


def read_shards(path: str, split: str | None = None, *, num_cpus: float = 1.0, verify: bool = False):
    """Shards -> ``ray.data.Dataset`` with ``index``, ``key``, ``image`` (H, W, 3 uint8) and ``depth`` (H, W
    float32, 0 invalid) — no ``depth`` column for depth-less shards (manifest ``has_depth: false``).

    ``path`` is a split directory (holding ``manifest.json``) or, with ``split``, the root above it. The manifest and
    its schema version are validated first (:class:`DataError` otherwise); ``verify`` also checks shard checksums.
    """
    manifest = read_manifest(split_dir(path, split))
    return read_raw(path, split, num_cpus=num_cpus, verify=verify).map_batches(
        decode_rows,
        fn_kwargs={"has_depth": has_depth(manifest)},
        batch_size=16,
        num_cpus=num_cpus,
        batch_format="numpy",
    )
