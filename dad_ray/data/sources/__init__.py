"""Input formats, each a small picklable object with the same two methods:

- ``refs() -> list[str]``: one short reference per sample (a .mat index, a file name, a list line, a seed), listed on
  the driver; a file without its partner is still listed, so that it fails (or is skipped and recorded) like any
  other bad sample;
- ``load(ref) -> (key, image (H, W, 3) uint8, depth (H, W) float32 metres)``: runs in Ray Data tasks; raises
  :class:`~dad_ray.data.errors.DataError` naming the file or .mat index for bad input.

``open_source(spec, split, ...)`` picks the format from ``spec``: ``synthetic:N``, a ``.mat`` file, a directory with
a ``--filenames`` list or ``rgb_*.jpg``/``sync_depth_*.png`` files (the "sync" layout), or a directory with
``{train,test}/{rgb,depth}/`` (the folder layout).
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np

from dad_ray.data.errors import DataError


class Source(Protocol):
    description: dict

    def refs(self) -> list[str]: ...

    def load(self, ref: str) -> tuple[str, np.ndarray, np.ndarray]: ...

    def error_name(self, ref: str) -> str: ...


def open_source(
    spec: str,
    split: str = "train",
    *,
    filenames: str | None = None,
    height: int = 480,
    width: int = 640,
    seed: int = 0,
) -> Source:
    """The :class:`Source` that ``spec`` names (see the module docstring); errors name ``spec``."""
    if spec.startswith("synthetic:"):
        from dad_ray.data.sources.synthetic_source import SyntheticSource

        count = spec.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise DataError(f"{spec}: synthetic source must be 'synthetic:N' with N >= 1")
        return SyntheticSource(int(count), split=split, height=height, width=width, seed=seed)
    if not os.path.exists(spec):
        raise DataError(f"{spec}: source does not exist")
    if os.path.isfile(spec):
        if spec.endswith(".mat"):
            from dad_ray.data.sources.nyu_mat import NyuMatSource

            return NyuMatSource(spec, split)
        raise DataError(f"{spec}: a file source must be the NYU labeled .mat (nyu_depth_v2_labeled.mat)")
    from dad_ray.data.sources.folders import FolderSource, has_folder_layout
    from dad_ray.data.sources.sync import SyncSource, has_sync_layout

    if filenames is not None or has_sync_layout(spec):
        return SyncSource(spec, filenames)
    if has_folder_layout(spec):
        return FolderSource(spec, split)
    raise DataError(
        f"{spec}: not a known layout (expected {{train,test}}/{{rgb,depth}}/ folders, rgb_*.jpg + sync_depth_*.png "
        f"files or a --filenames list, a .mat file, or synthetic:N)"
    )
