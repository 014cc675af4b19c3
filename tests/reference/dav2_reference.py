"""An independent, functional re-statement of the official Depth Anything V2 forward, for exactness tests.

Plain torch ops on an official-layout state dict (``pretrained.*`` / ``depth_head.*``), following the official
algorithm step by step: DINOv2 ``prepare_tokens_with_masks`` (class token, ``interpolate_pos_encoding`` with the
+0.1 offset and ``scale_factor``, bicubic, no antialias), each block written out (LayerNorm eps 1e-6, explicit
softmax attention, LayerScale, exact GELU MLP), ``get_intermediate_layers(norm=True)`` with the class token dropped,
then the DPT head with ``align_corners=True`` bilinear upsampling and the final ``F.relu(...).squeeze(1)``.
It shares no code with ``dad_ray.models`` (no timm, no nn.Module).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _ln(x: Tensor, sd: dict[str, Tensor], key: str) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), sd[key + ".weight"], sd[key + ".bias"], eps=1e-6)


def _pos_encoding(sd: dict[str, Tensor], n_tokens: int, img_h: int, img_w: int) -> Tensor:
    pos = sd["pretrained.pos_embed"]
    n_stored = pos.shape[1] - 1
    if n_tokens - 1 == n_stored and img_h == img_w:
        return pos
    pos = pos.float()
    dim = pos.shape[-1]
    root = math.sqrt(n_stored)
    rows, cols = img_h // 14 + 0.1, img_w // 14 + 0.1
    grid = pos[:, 1:].reshape(1, int(root), int(root), dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=(rows / root, cols / root), mode="bicubic", antialias=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([pos[:, :1], grid], dim=1)


def _block(x: Tensor, sd: dict[str, Tensor], p: str, heads: int) -> Tensor:
    b, n, c = x.shape
    h = _ln(x, sd, p + "norm1")
    qkv = h @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]
    qkv = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (c // heads) ** -0.5, qkv[1], qkv[2]
    attn = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
    h = (attn @ v).transpose(1, 2).reshape(b, n, c)
    h = h @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
    x = x + sd[p + "ls1.gamma"] * h
    h = _ln(x, sd, p + "norm2")
    if p + "mlp.w12.weight" in sd:  # SwiGLU (ViT-g)
        a, g = (h @ sd[p + "mlp.w12.weight"].T + sd[p + "mlp.w12.bias"]).chunk(2, dim=-1)
        h = (F.silu(a) * g) @ sd[p + "mlp.w3.weight"].T + sd[p + "mlp.w3.bias"]
    else:
        h = F.gelu(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        h = h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    return x + sd[p + "ls2.gamma"] * h


def _conv(x: Tensor, sd: dict[str, Tensor], key: str, stride: int = 1, padding: int = 0) -> Tensor:
    return F.conv2d(x, sd[key + ".weight"], sd.get(key + ".bias"), stride=stride, padding=padding)


def _rcu(x: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    out = _conv(torch.relu(x), sd, p + ".conv1", padding=1)
    out = _conv(torch.relu(out), sd, p + ".conv2", padding=1)
    return out + x


def _fusion(sd: dict[str, Tensor], p: str, x0: Tensor, x1: Tensor | None, size=None) -> Tensor:
    out = x0
    if x1 is not None:
        out = out + _rcu(x1, sd, p + ".resConfUnit1")
    out = _rcu(out, sd, p + ".resConfUnit2")
    if size is None:
        out = F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=True)
    else:
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=True)
    return _conv(out, sd, p + ".out_conv")


def reference_forward(sd: dict[str, Tensor], x: Tensor, layers: list[int], heads: int) -> Tensor:
    """Official DepthAnythingV2.forward: x (B, 3, H, W) → (B, H, W)."""
    b, _, img_h, img_w = x.shape
    ph, pw = img_h // 14, img_w // 14
    # DINOv2 prepare_tokens_with_masks (no masks)
    t = F.conv2d(x, sd["pretrained.patch_embed.proj.weight"], sd["pretrained.patch_embed.proj.bias"], stride=14)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([sd["pretrained.cls_token"].expand(b, -1, -1), t], dim=1)
    t = t + _pos_encoding(sd, t.shape[1], img_h, img_w).to(t.dtype)
    # get_intermediate_layers(n=layers, return_class_token=True, norm=True): all blocks run
    n_blocks = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("pretrained.blocks."))
    feats = []
    for i in range(n_blocks):
        t = _block(t, sd, f"pretrained.blocks.{i}.", heads)
        if i in layers:
            feats.append(_ln(t, sd, "pretrained.norm")[:, 1:])
    # DPT head
    resized = []
    for i, f in enumerate(feats):
        f = f.permute(0, 2, 1).reshape(b, f.shape[-1], ph, pw)
        f = _conv(f, sd, f"depth_head.projects.{i}")
        if i == 0:
            f = F.conv_transpose2d(
                f, sd["depth_head.resize_layers.0.weight"], sd["depth_head.resize_layers.0.bias"], stride=4
            )
        elif i == 1:
            f = F.conv_transpose2d(
                f, sd["depth_head.resize_layers.1.weight"], sd["depth_head.resize_layers.1.bias"], stride=2
            )
        elif i == 3:
            f = _conv(f, sd, "depth_head.resize_layers.3", stride=2, padding=1)
        resized.append(f)
    rn = [_conv(f, sd, f"depth_head.scratch.layer{i + 1}_rn", padding=1) for i, f in enumerate(resized)]
    s = "depth_head.scratch."
    path4 = _fusion(sd, s + "refinenet4", rn[3], None, size=rn[2].shape[2:])
    path3 = _fusion(sd, s + "refinenet3", path4, rn[2], size=rn[1].shape[2:])
    path2 = _fusion(sd, s + "refinenet2", path3, rn[1], size=rn[0].shape[2:])
    path1 = _fusion(sd, s + "refinenet1", path2, rn[0])
    out = _conv(path1, sd, s + "output_conv1", padding=1)
    out = F.interpolate(out, (ph * 14, pw * 14), mode="bilinear", align_corners=True)
    out = torch.relu(_conv(out, sd, s + "output_conv2.0", padding=1))
    out = torch.relu(_conv(out, sd, s + "output_conv2.2"))
    return torch.relu(out).squeeze(1)
