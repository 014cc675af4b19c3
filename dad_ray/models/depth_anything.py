"""``DepthAnythingV2``: DINOv2 encoder (``pretrained``) + DPT head (``depth_head``), the official module layout."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dad_ray.models.dinov2 import DinoV2Encoder
from dad_ray.models.dpt import DPTHead
from dad_ray.models.spec import PATCH_SIZE, ModelSpec


class DepthAnythingV2(nn.Module):
    """Relative-disparity model; ``state_dict()`` keys are exactly those of the official checkpoints.

    Attributes: ``pretrained`` (the encoder; parameters named ``pretrained.*``), ``depth_head``, ``spec``,
    ``model_name`` (registry name), ``encoder_name``, ``embed_dim``, ``patch_size`` (14).
    """

    def __init__(self, spec: ModelSpec, name: str) -> None:
        super().__init__()
        self.spec = spec
        self.model_name = name
        self.encoder_name = spec.encoder
        self.embed_dim = spec.embed_dim
        self.patch_size = PATCH_SIZE
        self.pretrained = DinoV2Encoder(spec)
        self.depth_head = DPTHead(spec.embed_dim, spec.features, spec.out_channels)

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) ImageNet-normalised, H and W multiples of 14 → disparity (B, H, W), ReLU'd.

        With ``return_features=True`` also returns the last block's normed patch tokens (B, H/14 * W/14, C) from
        the same pass (the feature-alignment loss's input).
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.model_name}: expected input (B, 3, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % PATCH_SIZE or w % PATCH_SIZE:
            raise ValueError(
                f"{self.model_name}: input size {h}x{w} is not a multiple of the patch size {PATCH_SIZE}; "
                "resize it first (dad_ray.models.inference.network_input_size gives the official sizes)"
            )
        last = self.spec.depth - 1
        indices = set(self.spec.layers) | ({last} if return_features else set())
        tokens = self.pretrained.forward_patch_tokens(x, indices)
        head = self.depth_head([tokens[i] for i in self.spec.layers], h // PATCH_SIZE, w // PATCH_SIZE)
        disparity = F.relu(head).squeeze(1)  # (B, H, W)
        if return_features:
            return disparity, tokens[last]
        return disparity

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each encoder block in the backward pass (saves activation memory)."""
        self.pretrained.set_grad_checkpointing(enable)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters whose names start with ``pretrained.`` (DAv2 trains them with a 10x smaller lr)."""
        return list(self.pretrained.parameters())
