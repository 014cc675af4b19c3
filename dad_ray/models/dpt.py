"""The DPT head of Depth Anything V2, with the official attribute names (``depth_head.*`` keys).

Reassemble (1x1 projection + resize per intermediate layer) → 3x3 ``layer*_rn`` convs to ``features`` → four fusion
blocks (bilinear, ``align_corners=True``) → ``output_conv1`` → upsample to 14 x the patch grid → ``output_conv2``
(3x3 → 32, ReLU, 1x1 → 1, ReLU). No batch norm and no class-token readout (``use_bn=False``,
``use_clstoken=False`` in every released model).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dad_ray.models.spec import PATCH_SIZE


class ResidualConvUnit(nn.Module):
    """x + conv2(relu(conv1(relu(x)))); (B, F, h, w) → (B, F, h, w)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FeatureFusionBlock(nn.Module):
    """Fuse a coarser path with a skip feature, upsample (bilinear, align_corners) and project with a 1x1 conv.

    (B, F, h, w) [+ skip (B, F, h, w)] → (B, F, *size) where ``size`` defaults to (2h, 2w).
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1, bias=True)
        self.resConfUnit1 = ResidualConvUnit(features)  # noqa: N815 - official key name
        self.resConfUnit2 = ResidualConvUnit(features)  # noqa: N815 - official key name

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, size: Sequence[int] | None = None
    ) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


OUTPUT_BIAS_INIT = 1.0  # see DPTHead.init_output_bias


class DPTHead(nn.Module):
    """Four lists of patch tokens (B, h * w, C) → disparity before the final ReLU of the model, (B, 1, 14h, 14w)."""

    def __init__(self, in_channels: int, features: int, out_channels: Sequence[int]) -> None:
        super().__init__()
        c0, c1, c2, c3 = out_channels
        self.projects = nn.ModuleList([nn.Conv2d(in_channels, c, kernel_size=1) for c in out_channels])
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(c0, c0, kernel_size=4, stride=4),  # 4x up
                nn.ConvTranspose2d(c1, c1, kernel_size=2, stride=2),  # 2x up
                nn.Identity(),
                nn.Conv2d(c3, c3, kernel_size=3, stride=2, padding=1),  # 2x down
            ]
        )
        self.scratch = nn.Module()
        for i, c in enumerate(out_channels, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(c, features, kernel_size=3, padding=1, bias=False))
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}", FeatureFusionBlock(features))
        # The deepest fusion block has no skip input: its resConfUnit1 exists only in the key layout. Frozen, so it
        # is not an "unused parameter" under DDP.
        self.scratch.refinenet4.resConfUnit1.requires_grad_(False)
        self.scratch.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
        self.scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, kernel_size=1),
            nn.ReLU(),
        )
        self.init_output_bias()

    def init_output_bias(self, value: float = OUTPUT_BIAS_INIT) -> None:
        """Start a randomly initialised head inside its final ReLU's active range.

        With PyTorch's default init the activations shrink through the ~20 convolutions of the head, so the last
        1×1 convolution's output is its bias plus ~1e-4 of signal: a negative bias (half of all seeds) makes the
        final ReLU output 0 everywhere, no gradient flows, and the model never learns (seen as a scale-invariant loss
        stuck at exactly 1.0). A positive bias keeps every pixel active. Loaded weights overwrite it.
        """
        nn.init.constant_(self.scratch.output_conv2[2].bias, value)

    def forward(self, tokens: Sequence[torch.Tensor], grid_h: int, grid_w: int) -> torch.Tensor:
        """tokens: 4 x (B, h * w, C), h = grid_h, w = grid_w → (B, 1, 14h, 14w)."""
        layers = []
        for i, t in enumerate(tokens):
            x = t.permute(0, 2, 1).reshape(t.shape[0], t.shape[-1], grid_h, grid_w)  # (B, C, h, w)
            layers.append(self.resize_layers[i](self.projects[i](x)))  # (B, c_i, 4h | 2h | h | h/2, ...)
        s = self.scratch
        l1, l2, l3, l4 = (getattr(s, f"layer{i + 1}_rn")(x) for i, x in enumerate(layers))  # (B, F, ...)
        path = s.refinenet4(l4, size=l3.shape[2:])
        path = s.refinenet3(path, l3, size=l2.shape[2:])
        path = s.refinenet2(path, l2, size=l1.shape[2:])
        path = s.refinenet1(path, l1)  # (B, F, 8h, 8w)
        out = s.output_conv1(path)  # (B, F/2, 8h, 8w)
        out = F.interpolate(out, (grid_h * PATCH_SIZE, grid_w * PATCH_SIZE), mode="bilinear", align_corners=True)
        return s.output_conv2(out)  # (B, 1, 14h, 14w)
