"""Parquet shards: the writer (rolls files by size, atomic, checksummed) and the reader (a Ray Data dataset).

Layout: ``<root>/<split>/part-XXXXX.parquet`` + ``<root>/<split>/manifest.json`` (see :mod:`dad_ray.data.manifest`).
Columns: ``index`` (int64, position in the split), ``key`` (string), ``image`` (binary, JPEG or PNG), ``depth``
(binary, float32 little-endian metres), ``height``, ``width`` (int32). Parquet compression zstd; row groups of
:data:`ROW_GROUP` rows (recorded in the manifest).
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
from dad_ray.data.manifest import read_manifest

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


class ShardWriter:
    """Appends encoded rows and writes ``part-XXXXX.parquet`` files of about ``shard_bytes`` each (atomically).

    ``close()`` returns the shard list for the manifest; the caller writes the manifest after it.
    """

    def __init__(self, split_dir: str, shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:
        self.fs, self.dir = storage.resolve(split_dir)
        self.fs.create_dir(self.dir, recursive=True)
        self.shard_bytes = shard_bytes
        self.rows: dict[str, list] = {name: [] for name in SCHEMA.names}
        self.pending = 0
        self.shards: list[dict[str, Any]] = []

    def add(self, key: str, image: bytes, depth: bytes, height: int, width: int) -> None:
        index = sum(s["num_rows"] for s in self.shards) + len(self.rows["key"])
        for name, value in zip(SCHEMA.names, (index, key, image, depth, height, width)):
            self.rows[name].append(value)
        self.pending += len(image) + len(depth)
        if self.pending >= self.shard_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self.rows["key"]:
            return
        table = pa.Table.from_pydict(self.rows, schema=SCHEMA)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", row_group_size=ROW_GROUP)
        data = buf.getvalue()
        name = shard_name(len(self.shards))
        storage.write_atomic(self.fs, f"{self.dir}/{name}", data)
        self.shards.append(
            {"file": name, "num_rows": table.num_rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )
        logger.debug("wrote %s (%d rows, %.1f MB)", name, table.num_rows, len(data) / 2**20)
        self.rows = {name: [] for name in SCHEMA.names}
        self.pending = 0

    def close(self) -> list[dict[str, Any]]:
        self._flush()
        return self.shards


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


def read_row_group(fs, path: str, row_group: int) -> dict[str, list]:
    """One row group of a shard: ``index``, ``key``, ``height``, ``width`` as Python lists, ``image`` and ``depth``
    as zero-copy ``pyarrow.Buffer`` views (``bytes(b)`` / ``np.frombuffer(b)`` read them); errors name the file."""
    try:
        with fs.open_input_file(path) as handle:
            table = pq.ParquetFile(handle).read_row_group(row_group, use_threads=False)
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"{path}: cannot read row group {row_group} ({err})") from err
    out: dict[str, list] = {}
    for name in SCHEMA.names:
        column = table.column(name)
        if pa.types.is_binary(column.type):
            out[name] = [value.as_buffer() for chunk in column.chunks for value in chunk]
        else:
            out[name] = column.to_pylist()
    return out


def decode_rows(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """A batch of stored rows -> ``index``, ``key``, ``image`` (H, W, 3) uint8, ``depth`` (H, W) float32 metres."""
    images, depths = [], []
    for key, img, dep, h, w in zip(batch["key"], batch["image"], batch["depth"], batch["height"], batch["width"]):
        image = decode_image(img, f"row {key}")
        if image.shape[:2] != (h, w):
            raise DataError(f"row {key}: image is {image.shape[:2]}, the row says {(int(h), int(w))}")
        images.append(image)
        depths.append(decode_depth(dep, int(h), int(w), f"row {key}").copy())
    return {
        "index": batch["index"],
        "key": batch["key"],
        "image": _stack_or_list(images),
        "depth": _stack_or_list(depths),
    }


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
    """Shards -> ``ray.data.Dataset`` with ``key``, ``image`` (H, W, 3 uint8), ``depth`` (H, W float32, 0 invalid).

    ``path`` is a split directory (holding ``manifest.json``) or, with ``split``, the root above it. The manifest and
    its schema version are validated first (:class:`DataError` otherwise); ``verify`` also checks shard checksums.
    """
    return read_raw(path, split, num_cpus=num_cpus, verify=verify).map_batches(
        decode_rows, batch_size=16, num_cpus=num_cpus, batch_format="numpy"
    )
