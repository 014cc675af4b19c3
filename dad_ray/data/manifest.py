"""The manifest of one split's shards: the only thing readers trust.

``<root>/<split>/manifest.json`` is written last, atomically, after every shard it lists is in place; a shard
that no manifest lists (left by a crash) is never read. Fields:

- ``format`` ("dad_ray-shards") and ``schema_version`` (:data:`SCHEMA_VERSION`, bumped on any layout change);
- ``split``, ``source`` (what was converted), ``fingerprint`` (source + options: a re-run with the same fingerprint
  is a no-op, a different one needs ``overwrite``);
- ``image_format`` ("jpeg" or "png"), ``depth_format`` ("float32-le" metres, 0 = invalid), ``columns``;
- ``num_samples``; ``row_group_size`` (rows per Parquet row group, the pipelines' unit of work);
- ``shards``: ``[{"file", "num_rows", "bytes", "sha256"}]`` (file names relative to the split dir);
- ``skipped``: ``[{"key", "reason"}]`` for every input left out under ``skip_bad`` (empty otherwise);
- ``has_depth``: false for unlabeled (depth-less) shards, whose ``depth`` column is null (absent = true: shards made
  before it existed all carry depth);
- ``dataset``: the data set's name when known — the benchmark of a ``--format`` source (``nyu``, ``kitti``,
  ``diode``, ``eth3d``, ``scannet``; also ``nyu`` for the labeled .mat) — else null; evaluation picks its protocol
  from it;
- ``rows_without_depth`` (benchmark lists: rows left out because their depth is ``None``, KITTI), ``crop`` (KITTI:
  the benchmark crop, applied before storing), ``max_side`` (images stored scaled down to it; 0 = as they came).
"""

from __future__ import annotations

import json
from typing import Any

from dad_ray.data import storage
from dad_ray.data.errors import DataError

SCHEMA_VERSION = 1
FORMAT = "dad_ray-shards"
MANIFEST = "manifest.json"
COLUMNS = ("index", "key", "image", "depth", "height", "width")
_REQUIRED = (
    "format",
    "schema_version",
    "split",
    "source",
    "num_samples",
    "shards",
    "skipped",
    "image_format",
    "row_group_size",
)


def has_depth(manifest: dict[str, Any]) -> bool:
    """Whether the shards of ``manifest`` carry depth (manifests without the field predate unlabeled shards)."""
    return bool(manifest.get("has_depth", True))


def manifest_path(split_dir: str) -> str:
    return storage.join(split_dir, MANIFEST)


def write_manifest(split_dir: str, manifest: dict[str, Any]) -> None:
    fs, inner = storage.resolve(split_dir)
    storage.write_atomic(fs, f"{inner}/{MANIFEST}", json.dumps(manifest, indent=1).encode())


def read_manifest(split_dir: str, *, required: bool = True) -> dict[str, Any] | None:
    """The validated manifest of ``split_dir``; ``None`` if missing and not ``required``."""
    fs, inner = storage.resolve(split_dir)
    path = f"{inner}/{MANIFEST}"
    if not storage.exists(fs, path):
        if required:
            raise DataError(
                f"{manifest_path(split_dir)}: no manifest (not a shard directory, or its conversion never finished; "
                f"make shards with jobs/prepare_data.py)"
            )
        return None
    try:
        manifest = json.loads(storage.read_bytes(fs, path))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{manifest_path(split_dir)}: not valid JSON ({err})") from err
    validate_manifest(manifest, manifest_path(split_dir))
    return manifest


def validate_manifest(manifest: Any, name: str) -> None:
    if not isinstance(manifest, dict):
        raise DataError(f"{name}: manifest must be a JSON object")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise DataError(f"{name}: manifest lacks {', '.join(missing)}")
    if manifest["format"] != FORMAT:
        raise DataError(f"{name}: format {manifest['format']!r} is not {FORMAT!r}")
    if manifest["schema_version"] != SCHEMA_VERSION:
        raise DataError(
            f"{name}: schema version {manifest['schema_version']} is not supported by this dad_ray "
            f"(expects {SCHEMA_VERSION}); re-create the shards with jobs/prepare_data.py --overwrite"
        )
    total = 0
    for i, shard in enumerate(manifest["shards"]):
        if not isinstance(shard, dict) or not {"file", "num_rows", "sha256"} <= set(shard):
            raise DataError(f"{name}: shards[{i}] must have file, num_rows and sha256")
        total += int(shard["num_rows"])
    if total != manifest["num_samples"]:
        raise DataError(f"{name}: num_samples {manifest['num_samples']} != sum of shard rows {total}")
