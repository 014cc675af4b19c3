"""The official labeled set ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5), read with h5py.

MATLAB stores arrays column-major, so h5py sees ``images`` as (N, 3, 640, 480) uint8 and ``depths`` as
(N, 640, 480) float metres: the last two axes are transposed to get 480 x 640. ``split`` "train"/"test" takes the
official 795/654 split (1-based indices shipped in ``dad_ray/data/nyu_splits.txt``), "all" every image. Keys are
``nyu_XXXX`` with the 1-based index, as in the split file and the NYU toolbox.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources

import h5py
import numpy as np

from dad_ray.data.errors import DataError

NYU_LABELED_COUNT = 1449
_HANDLES: dict[str, h5py.File] = {}  # one open file per worker process


def official_split(split: str) -> np.ndarray:
    """1-based indices of the official NYU Depth V2 ``split`` ("train": 795, "test": 654)."""
    text = resources.files("dad_ray.data").joinpath("nyu_splits.txt").read_text()
    splits = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, values = line.split(":", 1)
            splits[name.strip()] = np.array(values.split(), dtype=np.int64)
    if split not in splits:
        raise DataError(f"nyu_splits.txt: no split {split!r} (has {', '.join(splits)}; or use 'all')")
    return splits[split]


def _open(path: str) -> h5py.File:
    handle = _HANDLES.get(path)
    if handle is None:
        try:
            handle = h5py.File(path, "r")
        except OSError as err:
            raise DataError(
                f"{path}: cannot open as HDF5 / MATLAB v7.3 ({err}); the official nyu_depth_v2_labeled.mat is v7.3"
            ) from err
        _HANDLES[path] = handle
    return handle


@dataclass(frozen=True)
class NyuMatSource:
    path: str
    split: str = "train"
    has_depth = True
    dataset = "nyu"

    def __post_init__(self) -> None:
        f = _open(self.path)
        for name in ("images", "depths"):
            if name not in f:
                raise DataError(f"{self.path}: no dataset {name!r} (has {', '.join(f.keys())})")
        images, depths = f["images"], f["depths"]
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
            raise DataError(f"{self.path}: 'images' must be (N, 3, W, H) uint8, got {images.shape} {images.dtype}")
        if depths.shape != (images.shape[0], images.shape[2], images.shape[3]):
            raise DataError(f"{self.path}: 'depths' {depths.shape} does not match 'images' {images.shape}")
        if self.split != "all" and images.shape[0] != NYU_LABELED_COUNT:
            raise DataError(
                f"{self.path}: the official {self.split!r} split needs the {NYU_LABELED_COUNT}-image labeled set, "
                f"this file has {images.shape[0]} images (use --split all)"
            )

    @property
    def description(self) -> dict:
        return {"kind": "nyu_mat", "path": os.path.abspath(self.path), "split": self.split}

    def refs(self) -> list[str]:
        if self.split == "all":
            return [str(i) for i in range(_open(self.path)["images"].shape[0])]
        return [str(i - 1) for i in official_split(self.split)]

    def load(self, ref: str) -> tuple[str, np.ndarray, np.ndarray]:
        index = int(ref)
        name = f"{self.path}[index {index + 1} (1-based)]"
        f = _open(self.path)
        try:
            image = np.ascontiguousarray(f["images"][index].transpose(2, 1, 0))  # (3, W, H) -> (H, W, 3)
            depth = np.ascontiguousarray(f["depths"][index].T, dtype=np.float32)  # (W, H) -> (H, W)
        except (OSError, ValueError, IndexError) as err:
            raise DataError(f"{name}: unreadable ({err})") from err
        return f"nyu_{index + 1:04d}", image, depth

    def error_name(self, ref: str) -> str:
        return f"{self.path}[index {int(ref) + 1} (1-based)]"
