"""The DINOv2 encoder of Depth Anything V2, built on timm's ``VisionTransformer``.

timm provides the blocks (pre-norm attention + MLP with LayerScale ``ls1.gamma``/``ls2.gamma``), the patch embedding
and activation checkpointing; this module adds what the official DINOv2 (as vendored by Depth Anything V2) does
differently, so that its ``state_dict`` is the official ``pretrained.*`` layout and its outputs match:

- the position embedding is stored for 37 x 37 patches (518 px) and resized at run time exactly like DINOv2's
  ``interpolate_pos_encoding``: bicubic, no antialias, with ``scale_factor = (n + 0.1) / 37`` per side (not a plain
  size-based resize, which is what timm's ``resample_abs_pos_embed`` does);
- the unused ``mask_token`` parameter (1, C) that the official checkpoints carry (frozen: it never gets a gradient);
- ViT-g's SwiGLU FFN with DINOv2's parameter names (``mlp.w12``, ``mlp.w3``) and hidden width.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Mlp, VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from dad_ray.models.spec import PATCH_SIZE, PRETRAIN_SIZE, ModelSpec

INTERPOLATE_OFFSET = 0.1  # DINOv2's work-around offset (facebookresearch/dino issue 8)


def interpolate_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """DINOv2's position-embedding resize: (1, 1 + N, C) stored for a sqrt(N) x sqrt(N) grid → (1, 1 + h * w, C).

    Mirrors ``DinoVisionTransformer.interpolate_pos_encoding``: returned unchanged when the grid is the stored square
    one; otherwise the patch part is resized in float32 with ``F.interpolate(scale_factor=((h + 0.1) / sqrt(N),
    (w + 0.1) / sqrt(N)), mode="bicubic", antialias=False)`` — the scale factor, not the output size, sets the
    sampling positions — and the result is cast back to the input dtype. The class-token entry is kept as is.
    """
    if torch.compiler.is_exporting() or torch.jit.is_tracing():
        return traceable_interpolate_pos_embed(pos_embed, grid_h, grid_w)
    n = pos_embed.shape[1] - 1
    if grid_h * grid_w == n and grid_h == grid_w:
        return pos_embed
    side = math.sqrt(n)
    if int(side) ** 2 != n:
        raise ValueError(f"position embedding of {n} patches is not a square grid")
    dim = pos_embed.shape[-1]
    float_pe = pos_embed.float()
    patch_pe = float_pe[:, 1:].reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)  # (1, C, S, S)
    scale = ((grid_h + INTERPOLATE_OFFSET) / side, (grid_w + INTERPOLATE_OFFSET) / side)
    patch_pe = F.interpolate(patch_pe, scale_factor=scale, mode="bicubic", antialias=False)  # (1, C, h, w)
    if tuple(patch_pe.shape[-2:]) != (grid_h, grid_w):
        raise RuntimeError(f"position embedding resized to {tuple(patch_pe.shape[-2:])}, expected {(grid_h, grid_w)}")
    patch_pe = patch_pe.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
    return torch.cat((float_pe[:, :1], patch_pe), dim=1).to(pos_embed.dtype)


CUBIC_A = -0.75  # PyTorch's (and OpenCV's) bicubic convolution coefficient


def _bicubic_matrix(grid: int, side: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DINOv2's 1-D resize ``side`` → ``grid`` (scale ``(grid + 0.1) / side``) as a (grid, side) matrix, traceable.

    Row i holds the bicubic weights (A = -0.75, edge indices clamped, half-pixel centres) that PyTorch's
    ``upsample_bicubic2d`` gives output i when called with that scale factor. ``grid`` enters only as the length of an
    ``arange`` and its last value, so an exported graph keeps it symbolic. Returns (resize matrix, the (grid, side)
    0/1 matrix that is the identity when grid == side, grid size as a (1,) tensor).
    """
    dst = torch.arange(grid, dtype=dtype)  # (grid,)
    n = dst[-1:] + 1  # (1,) the grid size as a tensor
    src = (dst + 0.5) * (side / (n + INTERPOLATE_OFFSET)) - 0.5
    base = torch.floor(src)
    offsets = torch.arange(-1, 3, dtype=dtype)  # the 4 taps around each sample
    t = ((src - base)[:, None] - offsets).abs()  # (grid, 4) distances to the taps
    a = CUBIC_A
    near = ((a + 2) * t - (a + 3)) * t * t + 1  # |t| <= 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a  # 1 < |t| < 2
    weights = torch.where(t <= 1, near, far)  # (grid, 4)
    taps = (base[:, None] + offsets).clamp(0, side - 1)  # (grid, 4) column indices, edges clamped
    columns = torch.arange(side, dtype=dtype)
    cubic = ((taps[:, :, None] == columns).to(dtype) * weights[:, :, None]).sum(1)  # (grid, side)
    return cubic, (dst[:, None] == columns).to(dtype), n


def traceable_interpolate_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """:func:`interpolate_pos_embed` as two matrix products, for ``torch.export`` / ONNX / TorchScript tracing.

    ``F.interpolate(scale_factor=...)`` exports with the scale frozen at the example size (the float is specialised),
    so an exported graph would only run at that size. Here the resize is ``M_h @ pe @ M_w^T`` with the matrices of
    :func:`_bicubic_matrix`, built from the grid size inside the graph: dynamic height and width, the same sampling
    positions and weights (equal to ``F.interpolate`` in float64; float32 rounding ~1e-5), identity at 37 x 37.
    """
    side = math.isqrt(pos_embed.shape[1] - 1)
    dim = pos_embed.shape[-1]
    float_pe = pos_embed.float()
    patch_pe = float_pe[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)  # (1, C, S, S)
    rows, rows_id, n_h = _bicubic_matrix(grid_h, side, torch.float32)
    cols, cols_id, n_w = _bicubic_matrix(grid_w, side, torch.float32)
    keep = (n_h == side) & (n_w == side)  # the stored square grid: unchanged, as in DINOv2 (no Python branch)
    rows, cols = torch.where(keep, rows_id, rows), torch.where(keep, cols_id, cols)
    patch_pe = rows @ patch_pe @ cols.T  # (1, C, h, w)
    patch_pe = patch_pe.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((float_pe[:, :1], patch_pe), dim=1).to(pos_embed.dtype)


class SwiGLUFFN(nn.Module):
    """DINOv2's SwiGLU FFN (ViT-g): ``w3(silu(x1) * x2)`` with ``x1, x2 = w12(x).chunk(2)``; (..., C) → (..., C).

    Takes timm's ``mlp_layer`` arguments; the hidden width follows DINOv2: ``(int(hidden * 2 / 3) + 7) // 8 * 8``.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        act_layer: type[nn.Module] | None = None,
        norm_layer: type[nn.Module] | None = None,
        bias: bool = True,
        drop: float = 0.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if norm_layer is not None or drop:
            raise ValueError("SwiGLUFFN supports neither an inner norm nor dropout (DINOv2 has neither)")
        hidden = (int(hidden_features * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(in_features, 2 * hidden, bias=bias, device=device, dtype=dtype)
        self.w3 = nn.Linear(hidden, in_features, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class DinoV2Encoder(VisionTransformer):
    """DINOv2 ViT (patch 14, 518 px, LayerScale 1.0, LayerNorm eps 1e-6, exact GELU) as Depth Anything V2 uses it."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(
            img_size=PRETRAIN_SIZE,
            patch_size=PATCH_SIZE,
            num_classes=0,
            global_pool="token",
            embed_dim=spec.embed_dim,
            depth=spec.depth,
            num_heads=spec.num_heads,
            mlp_ratio=4.0,
            qkv_bias=True,
            init_values=1.0,
            dynamic_img_size=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            act_layer=nn.GELU,
            mlp_layer=SwiGLUFFN if spec.ffn == "swiglu" else Mlp,
        )
        self.mask_token = nn.Parameter(torch.zeros(1, spec.embed_dim), requires_grad=False)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, h, w, C) patch embeddings → (B, 1 + h * w, C) tokens: class token prepended, DINOv2 positions added."""
        b, h, w, c = x.shape
        x = torch.cat((self.cls_token.expand(b, -1, -1), x.reshape(b, h * w, c)), dim=1)
        return self.pos_drop(x + interpolate_pos_embed(self.pos_embed, h, w))

    def forward_patch_tokens(self, x: torch.Tensor, indices: Iterable[int]) -> dict[int, torch.Tensor]:
        """Normed patch tokens of the given blocks, like DINOv2's ``get_intermediate_layers(norm=True)``.

        x: (B, 3, H, W) with H, W multiples of 14 → {block index: (B, H/14 * W/14, C)}, final LayerNorm applied and
        the class token dropped. Blocks after the last requested index are not run. With grad checkpointing enabled
        (``set_grad_checkpointing``) each block is recomputed in the backward pass.
        """
        wanted = sorted(set(indices))
        if not wanted or wanted[0] < 0 or wanted[-1] >= len(self.blocks):
            raise ValueError(f"block indices {wanted} out of range for {len(self.blocks)} blocks")
        tokens = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))  # (B, 1 + N, C)
        out: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks[: wanted[-1] + 1]):
            if self.grad_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
            if i in wanted:
                out[i] = self.norm(tokens)[:, self.num_prefix_tokens :]
        return out
