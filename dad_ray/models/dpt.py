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

    def __init__(self, features: int, skip: bool = True) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1, bias=True)
        if skip:  # without a skip input (the deepest block of a head outside the official layout) it is not built
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


def make_scratch(
    in_channels: Sequence[int], features: int, hidden: int = 32, official_layout: bool = True
) -> nn.Module:
    """The DPT decoder after reassembly (``scratch.*``): a 3x3 ``layer{i}_rn`` conv per level to ``features``, four
    fusion blocks, ``output_conv1`` (features → features/2) and ``output_conv2`` (3x3 → ``hidden``, ReLU, 1x1 → 1,
    ReLU). ``official_layout`` keeps the deepest block's unused ``resConfUnit1`` (frozen) for the official keys."""
    scratch = nn.Module()
    for i, c in enumerate(in_channels, start=1):
        setattr(scratch, f"layer{i}_rn", nn.Conv2d(c, features, kernel_size=3, padding=1, bias=False))
    for i in range(1, 5):
        setattr(scratch, f"refinenet{i}", FeatureFusionBlock(features, skip=i < 4 or official_layout))
    if official_layout:
        # The deepest fusion block has no skip input: its resConfUnit1 exists only in the key layout. Frozen, so it
        # is not an "unused parameter" under DDP.
        scratch.refinenet4.resConfUnit1.requires_grad_(False)
    scratch.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
    scratch.output_conv2 = nn.Sequential(
        nn.Conv2d(features // 2, hidden, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(hidden, 1, kernel_size=1),
        nn.ReLU(),
    )
    return scratch


def fuse_levels(scratch: nn.Module, levels: Sequence[torch.Tensor], out_size: Sequence[int]) -> torch.Tensor:
    """Four maps, finest first (B, c_i, h_i, w_i), each about twice the next's size → (B, 1, *out_size).

    ``layer{i}_rn`` to the fusion width, fusion from the deepest level up (each block resized to the next level's
    size, the finest one 2x up), ``output_conv1``, bilinear resize (``align_corners=True``) to ``out_size``,
    ``output_conv2``.
    """
    s = scratch
    l1, l2, l3, l4 = (getattr(s, f"layer{i + 1}_rn")(x) for i, x in enumerate(levels))  # (B, F, ...)
    path = s.refinenet4(l4, size=l3.shape[2:])
    path = s.refinenet3(path, l3, size=l2.shape[2:])
    path = s.refinenet2(path, l2, size=l1.shape[2:])
    path = s.refinenet1(path, l1)  # (B, F, 2 h_1, 2 w_1)
    out = s.output_conv1(path)  # (B, F/2, 2 h_1, 2 w_1)
    out = F.interpolate(out, tuple(out_size), mode="bilinear", align_corners=True)
    return s.output_conv2(out)  # (B, 1, *out_size)


def init_output_bias(scratch: nn.Module, value: float = OUTPUT_BIAS_INIT) -> None:
    """Start a randomly initialised head inside its final ReLU's active range.

    With PyTorch's default init the activations shrink through the ~20 convolutions of the head, so the last
    1×1 convolution's output is its bias plus ~1e-4 of signal: a negative bias (half of all seeds) makes the
    final ReLU output 0 everywhere, no gradient flows, and the model never learns (seen as a scale-invariant loss
    stuck at exactly 1.0). A positive bias keeps every pixel active. Loaded weights overwrite it.
    """
    nn.init.constant_(scratch.output_conv2[2].bias, value)


class DPTHead(nn.Module):
    """Four lists of patch tokens (B, h * w, C) → disparity before the final ReLU of the model, (B, 1, p h, p w) for
    the patch size p (14, Depth Anything's)."""

    def __init__(
        self, in_channels: int, features: int, out_channels: Sequence[int], patch_size: int = PATCH_SIZE
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
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
        self.scratch = make_scratch(out_channels, features)
        self.init_output_bias()

    def init_output_bias(self, value: float = OUTPUT_BIAS_INIT) -> None:
        """See :func:`init_output_bias`."""
        init_output_bias(self.scratch, value)

    def forward(self, tokens: Sequence[torch.Tensor], grid_h: int, grid_w: int) -> torch.Tensor:
        """tokens: 4 x (B, h * w, C), h = grid_h, w = grid_w → (B, 1, p h, p w)."""
        layers = []
        for i, t in enumerate(tokens):
            x = t.permute(0, 2, 1).reshape(t.shape[0], t.shape[-1], grid_h, grid_w)  # (B, C, h, w)
            layers.append(self.resize_layers[i](self.projects[i](x)))  # (B, c_i, 4h | 2h | h | h/2, ...)
        return fuse_levels(self.scratch, layers, (grid_h * self.patch_size, grid_w * self.patch_size))
