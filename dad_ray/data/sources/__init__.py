"""Input formats, each a small picklable object with the same methods and two attributes:

- ``refs() -> list[str]``: one short reference per sample (a .mat index, a file name, a list line, a seed), listed on
  the driver, in a deterministic order; a file without its partner is still listed, so that it fails (or is skipped
  and recorded) like any other bad sample;
- ``load(ref) -> (key, image, depth)``: runs in Ray Data tasks. ``image`` is an
  :class:`~dad_ray.data.codec.ImageFile` (an encoded file's original bytes, stored as they are) or an (H, W, 3)
  uint8 array (arrays without a file: the .mat, synthetic scenes); ``depth`` (H, W) float32 metres, or None for
  unlabeled sources. Raises :class:`~dad_ray.data.errors.DataError` naming the file or .mat index for bad input;
- ``error_name(ref)``: how messages name the sample;
- ``has_depth`` (False: unlabeled images) and ``dataset`` (the benchmark's name, e.g. "kitti", or None), both
  recorded in the shards' manifest.

``open_source(spec, split, ...)`` picks the format: ``fmt`` one of the benchmarks (:mod:`.benchmarks`, with a
``--filenames`` list) or "images"; otherwise from ``spec``: ``synthetic:N``, a ``.mat`` file, a ``.tar`` or a URI
(unlabeled images), a directory with a ``--filenames`` list or ``rgb_*.jpg``/``sync_depth_*.png`` files (the "sync"
layout), a directory with ``{train,test}/{rgb,depth}/`` (the folder layout), or any other directory (unlabeled
images, searched recursively).
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

from dad_ray.config.paths import is_uri
from dad_ray.data.errors import DataError


class Source(Protocol):
    description: dict
    has_depth: bool
    dataset: str | None

    def refs(self) -> list[str]: ...

    def load(self, ref: str) -> tuple[str, Any, np.ndarray | None]: ...

    def error_name(self, ref: str) -> str: ...


def open_source(
    spec: str,
    split: str = "train",
    *,
    filenames: str | None = None,
    height: int = 480,
    width: int = 640,
    seed: int = 0,
    fmt: str | None = None,
) -> Source:
    """The :class:`Source` that ``spec`` (and ``fmt``) name (see the module docstring); errors name ``spec``."""
    if fmt is not None and fmt != "images":
        from dad_ray.data.sources.benchmarks import BenchmarkSource

        if filenames is None:
            raise DataError(f"--format {fmt}: needs --filenames LIST (the 'rgb depth [mask]' rows to read)")
        return BenchmarkSource.open(fmt, spec, filenames)
    from dad_ray.data.sources.images import ImageSource

    if fmt == "images" or is_uri(spec) or (os.path.isfile(spec) and spec.lower().endswith(".tar")):
        return ImageSource(spec)
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
        raise DataError(
            f"{spec}: a file source must be the NYU labeled .mat (nyu_depth_v2_labeled.mat) or a .tar of images"
        )
    from dad_ray.data.sources.folders import FolderSource, has_folder_layout
    from dad_ray.data.sources.sync import SyncSource, has_sync_layout

    if filenames is not None or has_sync_layout(spec):
        return SyncSource(spec, filenames)
    if has_folder_layout(spec):
        return FolderSource(spec, split)
    return ImageSource(spec)  # no depth anywhere: unlabeled images (an error if it holds none)
