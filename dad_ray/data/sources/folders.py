"""The folder layout ``ROOT/{train,test}/{rgb,depth}/``: RGB as PNG/JPEG (stored as the original bytes), depth with
the same stem as a 16-bit PNG in millimetres (NYU's convention; 0 = missing) or a ``.npy`` in metres. ``split``
"all" takes train and test. Depth PNGs in another unit (KITTI's metres x 256) belong to ``--format kitti``."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from dad_ray.data.codec import ImageFile, read_depth_npy, read_depth_png, read_image_bytes
from dad_ray.data.errors import DataError

RGB_EXTENSIONS = (".png", ".jpg", ".jpeg")
DEPTH_EXTENSIONS = (".png", ".npy")
SPLITS = ("train", "test")


def has_folder_layout(root: str) -> bool:
    return any(os.path.isdir(os.path.join(root, s, "rgb")) for s in SPLITS)


def _stems(directory: str, extensions: tuple[str, ...]) -> dict[str, str]:
    """stem -> file name; two files with one stem (x.png and x.jpg) are ambiguous and an error."""
    out: dict[str, str] = {}
    for name in sorted(os.listdir(directory)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in extensions:
            continue
        if stem in out:
            raise DataError(f"{os.path.join(directory, name)}: ambiguous, {out[stem]} has the same name")
        out[stem] = name
    return out


@dataclass(frozen=True)
class FolderSource:
    root: str
    split: str = "train"
    has_depth = True
    dataset = None

    @property
    def description(self) -> dict:
        return {"kind": "folders", "root": os.path.abspath(self.root), "split": self.split}

    def refs(self) -> list[str]:
        """``split/rgb_name|depth_name``; a missing partner is an empty side (fails in :meth:`load`)."""
        splits = SPLITS if self.split == "all" else (self.split,)
        refs = []
        for split in splits:
            rgb_dir = os.path.join(self.root, split, "rgb")
            depth_dir = os.path.join(self.root, split, "depth")
            for directory in (rgb_dir, depth_dir):
                if not os.path.isdir(directory):
                    raise DataError(f"{directory}: missing directory (folder layout is ROOT/{split}/{{rgb,depth}}/)")
            rgb, depth = _stems(rgb_dir, RGB_EXTENSIONS), _stems(depth_dir, DEPTH_EXTENSIONS)
            for stem in sorted(set(rgb) | set(depth)):
                refs.append(f"{split}/{rgb.get(stem, '')}|{depth.get(stem, '')}")
        return refs

    def load(self, ref: str) -> tuple[str, ImageFile, np.ndarray]:
        split, pair = ref.split("/", 1)
        rgb_name, depth_name = pair.split("|")
        rgb_path = os.path.join(self.root, split, "rgb", rgb_name)
        depth_path = os.path.join(self.root, split, "depth", depth_name)
        if not depth_name:
            raise DataError(f"{rgb_path}: missing partner depth file (no {split}/depth/<same name>.png or .npy)")
        if not rgb_name:
            raise DataError(f"{depth_path}: missing partner RGB file (no {split}/rgb/<same name>.png or .jpg)")
        image = read_image_bytes(rgb_path)
        depth = read_depth_npy(depth_path) if depth_name.endswith(".npy") else read_depth_png(depth_path, 1000.0)
        return f"{split}/{os.path.splitext(rgb_name)[0]}", image, depth

    def error_name(self, ref: str) -> str:
        split, pair = ref.split("/", 1)
        rgb_name, depth_name = pair.split("|")
        return os.path.join(self.root, split, "rgb" if rgb_name else "depth", rgb_name or depth_name)
