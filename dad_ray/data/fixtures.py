"""Tiny data sets in the real on-disk layouts (the official .mat, folders, sync + list), for tests and benchmarks.

Images are synthetic scenes (:func:`~dad_ray.data.synthetic.generate_scene`), so every file holds a plausible sample
whose exact content the caller can regenerate: ``scene(i, h, w)``.
"""

from __future__ import annotations

import os

import h5py
import numpy as np
from PIL import Image

from dad_ray.data.synthetic import generate_scene


def scene(index: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``index``-th fixture sample: (image uint8 (H, W, 3), depth float32 metres, 0 = invalid)."""
    return generate_scene(1000 + index, height, width)


def write_mat(path: str, count: int, height: int = 24, width: int = 32) -> None:
    """An HDF5 file shaped like ``nyu_depth_v2_labeled.mat``: ``images`` (N, 3, W, H) uint8 and ``depths``
    (N, W, H) float64 metres (MATLAB's column-major order, as h5py reads the official file)."""
    with h5py.File(path, "w") as f:
        images = f.create_dataset("images", (count, 3, width, height), dtype=np.uint8)
        depths = f.create_dataset("depths", (count, width, height), dtype=np.float64)
        for i in range(count):
            image, depth = scene(i, height, width)
            images[i] = image.transpose(2, 1, 0)
            depths[i] = depth.T


def write_depth_png(path: str, depth: np.ndarray) -> None:
    """Depth in metres -> 16-bit PNG in millimetres (0 = missing)."""
    Image.fromarray(np.round(depth * 1000.0).astype(np.uint16)).save(path)


def write_folders(root: str, counts: dict[str, int], height: int = 24, width: int = 32, npy_every: int = 2) -> None:
    """``root/{split}/{rgb,depth}/`` with ``counts[split]`` samples: RGB PNG; depth 16-bit PNG (mm), every
    ``npy_every``-th sample as ``.npy`` (metres) instead."""
    index = 0
    for split, count in counts.items():
        os.makedirs(os.path.join(root, split, "rgb"), exist_ok=True)
        os.makedirs(os.path.join(root, split, "depth"), exist_ok=True)
        for i in range(count):
            image, depth = scene(index, height, width)
            index += 1
            name = f"{i:05d}"
            Image.fromarray(image).save(os.path.join(root, split, "rgb", f"{name}.png"))
            if npy_every and i % npy_every == 1:
                np.save(os.path.join(root, split, "depth", f"{name}.npy"), depth)
            else:
                write_depth_png(os.path.join(root, split, "depth", f"{name}.png"), depth)


def write_sync(root: str, count: int, height: int = 24, width: int = 32, scenes: int = 2) -> str:
    """The BTS "sync" layout: ``<scene>/rgb_XXXXX.jpg`` + ``<scene>/sync_depth_XXXXX.png`` and a filenames list
    ``root/files.txt`` (``/scene/rgb_... /scene/sync_depth_... 518.8579``); returns the list's path."""
    lines = []
    for i in range(count):
        directory = f"scene_{i % scenes:02d}"
        os.makedirs(os.path.join(root, directory), exist_ok=True)
        image, depth = scene(i, height, width)
        Image.fromarray(image).save(os.path.join(root, directory, f"rgb_{i:05d}.jpg"), quality=95)
        write_depth_png(os.path.join(root, directory, f"sync_depth_{i:05d}.png"), depth)
        lines.append(f"/{directory}/rgb_{i:05d}.jpg /{directory}/sync_depth_{i:05d}.png 518.8579")
    path = os.path.join(root, "files.txt")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
