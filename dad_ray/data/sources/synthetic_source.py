"""``synthetic:N``: N procedural scenes (:mod:`dad_ray.data.synthetic`), seeds derived from (seed, split, index)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from dad_ray.data.synthetic import generate_scene


def scene_seed(seed: int, split: str, index: int) -> int:
    """The generator seed of sample ``index`` of ``split``: splits never share a scene."""
    return int(np.random.SeedSequence([seed, zlib.crc32(split.encode()), index]).generate_state(1)[0])


@dataclass(frozen=True)
class SyntheticSource:
    count: int
    split: str = "train"
    height: int = 480
    width: int = 640
    seed: int = 0
    has_depth = True
    dataset = None

    @property
    def description(self) -> dict:
        return {"kind": "synthetic", "count": self.count, "height": self.height, "width": self.width, "seed": self.seed}

    def refs(self) -> list[str]:
        return [str(i) for i in range(self.count)]

    def load(self, ref: str) -> tuple[str, np.ndarray, np.ndarray]:
        index = int(ref)
        image, depth = generate_scene(scene_seed(self.seed, self.split, index), self.height, self.width)
        return f"synthetic_{self.split}_{index:06d}", image, depth

    def error_name(self, ref: str) -> str:
        return f"synthetic:{self.count}[{self.split} {ref}]"
