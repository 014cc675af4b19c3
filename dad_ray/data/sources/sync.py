"""The "sync" layout (BTS / Eigen NYU training set): ``<scene>/rgb_XXXXX.jpg`` + ``<scene>/sync_depth_XXXXX.png``
(uint16, depth x 1000), listed in a filenames text file whose lines are ``rgb_path depth_path [focal]`` relative to
the root (BTS style, a leading '/' allowed). Without a list, every ``rgb_*.jpg`` under the root is taken with the
``sync_depth_*.png`` beside it. RGB files are stored as their original bytes. A list that looks like KITTI's (a
``None`` depth, or ``proj_depth`` paths: depth x 256, not x 1000) is refused: read it with ``--format kitti``."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from dad_ray.data.codec import ImageFile, read_depth_png, read_image_bytes
from dad_ray.data.errors import DataError


def has_sync_layout(root: str) -> bool:
    for _dirpath, _dirs, files in os.walk(root):
        if any(f.startswith("rgb_") and f.endswith(".jpg") for f in files):
            return True
    return False


def _read_list(path: str) -> list[str]:
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as err:
        raise DataError(f"{path}: cannot read the filenames list ({err})") from err
    refs = []
    for number, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) >= 2 and (parts[1] == "None" or "proj_depth" in parts[1]):
            raise DataError(
                f"{path}:{number}: looks like a KITTI list (depth {parts[1]!r}; KITTI PNGs store metres x 256, not the "
                "sync layout's millimetres): use --format kitti"
            )
        if len(parts) < 2:
            raise DataError(f"{path}:{number}: expected 'rgb_path depth_path [focal]', got {line!r}")
        refs.append(f"{parts[0].lstrip('/')}|{parts[1].lstrip('/')}")
    if not refs:
        raise DataError(f"{path}: the filenames list is empty")
    return refs


@dataclass(frozen=True)
class SyncSource:
    root: str
    filenames: str | None = None
    has_depth = True
    dataset = None

    @property
    def description(self) -> dict:
        return {
            "kind": "sync",
            "root": os.path.abspath(self.root),
            "filenames": os.path.abspath(self.filenames) if self.filenames else None,
        }

    def refs(self) -> list[str]:
        if self.filenames is not None:
            return _read_list(self.filenames)
        refs = []
        for dirpath, _dirs, files in sorted(os.walk(self.root)):
            rel = os.path.relpath(dirpath, self.root)
            for name in sorted(files):
                if name.startswith("rgb_") and name.endswith(".jpg"):
                    depth = "sync_depth_" + name[len("rgb_") : -len(".jpg")] + ".png"
                    refs.append(
                        f"{os.path.normpath(os.path.join(rel, name))}|{os.path.normpath(os.path.join(rel, depth))}"
                    )
        return refs

    def load(self, ref: str) -> tuple[str, ImageFile, np.ndarray]:
        rgb_rel, depth_rel = ref.split("|")
        rgb_path, depth_path = os.path.join(self.root, rgb_rel), os.path.join(self.root, depth_rel)
        if not os.path.isfile(rgb_path):
            raise DataError(f"{rgb_path}: missing RGB file (listed with {depth_rel})")
        if not os.path.isfile(depth_path):
            raise DataError(f"{depth_path}: missing partner depth file of {rgb_rel}")
        image = read_image_bytes(rgb_path)
        depth = read_depth_png(depth_path, 1000.0)
        return os.path.splitext(rgb_rel)[0], image, depth

    def error_name(self, ref: str) -> str:
        return os.path.join(self.root, ref.split("|")[0])
