"""The per-encoder table of Depth Anything V2 configurations (the one place these numbers live).

The official rows (``vits``/``vitb``/``vitl``/``vitg``) are Depth Anything V2's ``model_configs`` and
``intermediate_layer_idx`` with DINOv2's ViT sizes; ``tiny`` and ``micro`` are small CPU configurations with the same
architecture (teacher and student of the embedded default run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PATCH_SIZE = 14  # DINOv2 patch size
PRETRAIN_SIZE = 518  # image size the position embedding is stored for (37 x 37 patches)


@dataclass(frozen=True)
class ModelSpec:
    """One Depth Anything V2 configuration (DINOv2 encoder + DPT head)."""

    encoder: str  # short encoder name, e.g. "vitl"
    embed_dim: int
    depth: int  # number of transformer blocks
    num_heads: int
    features: int  # DPT fusion width
    out_channels: tuple[int, int, int, int]  # DPT projection widths per intermediate layer
    layers: tuple[int, int, int, int]  # encoder blocks whose (normed) outputs feed the DPT head
    ffn: Literal["mlp", "swiglu"] = "mlp"  # DINOv2 ViT-g uses a SwiGLU FFN

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"{self.encoder}: embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        if not all(0 <= i < self.depth for i in self.layers) or list(self.layers) != sorted(set(self.layers)):
            raise ValueError(
                f"{self.encoder}: layers {self.layers} must be increasing block indices < depth {self.depth}"
            )
        if self.ffn not in ("mlp", "swiglu"):
            raise ValueError(f"{self.encoder}: ffn must be 'mlp' or 'swiglu', got {self.ffn!r}")


# The per-encoder table (Depth Anything V2 dpt.py model_configs + intermediate_layer_idx; DINOv2 ViT sizes).
ENCODERS: dict[str, ModelSpec] = {
    "vits": ModelSpec("vits", 384, 12, 6, 64, (48, 96, 192, 384), (2, 5, 8, 11)),
    "vitb": ModelSpec("vitb", 768, 12, 12, 128, (96, 192, 384, 768), (2, 5, 8, 11)),
    "vitl": ModelSpec("vitl", 1024, 24, 16, 256, (256, 512, 1024, 1024), (4, 11, 17, 23)),
    "vitg": ModelSpec("vitg", 1536, 40, 24, 384, (1536, 1536, 1536, 1536), (9, 19, 29, 39), ffn="swiglu"),
    "tiny": ModelSpec("tiny", 192, 4, 3, 32, (24, 48, 96, 192), (0, 1, 2, 3)),
    "micro": ModelSpec("micro", 96, 4, 3, 24, (12, 24, 48, 96), (0, 1, 2, 3)),
}
