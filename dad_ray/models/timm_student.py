"""Depth students on any timm backbone: ``create_model("timm:<name>")`` (the student zoo).

The backbone (``pretrained.*``, timm's own module and key names) is a timm model with ``forward_intermediates``
(every timm >= 1.0 model that has ``feature_info``), its classifier pruned; the head (``depth_head.*``) is built from
the DPT pieces of :mod:`dad_ray.models.dpt`:

- **token backbones** (ViT family: every feature at one stride, the patch size p): four evenly spaced blocks, normed
  with the final LayerNorm like DINOv2's ``get_intermediate_layers``, go through Depth Anything's own
  :class:`~dad_ray.models.dpt.DPTHead` (reassemble to 4x, 2x, 1x, 1/2x the patch grid, fuse) with widths sized from
  the embedding width C as DAv2's rows are (projections C/8, C/4, C/2, C; fusion width C/6). Input sides must be
  multiples of p (``size_multiple``), else a ``ValueError`` naming it.
- **multi-scale backbones** (CNNs and hybrids): the four deepest feature maps (usually strides 4, 8, 16, 32) are fused
  directly (no reassembly) by a DPT decoder whose fusion width F is a quarter of the mean width of the two middle
  levels (multiple of 8, 32..256; the head runs at strides 4 to 1, so it dominates a small backbone's FLOPs) and
  whose last hidden width is min(32, F/2). The input is padded (edge replicate, bottom/right) to a multiple of the
  total stride and the output cropped back, so every size works (in particular dad_ray's multiples of 14) and
  the feature maps line up exactly with the input. ``pad_input=False`` instead rejects sides that are not
  multiples of the total stride (``size_multiple``), for graphs without pad/slice ops (a dynamic-size
  ``torch.export`` / ONNX export of a padding student fails in torch.export's shape solver; static sizes work).

Output: disparity (B, H, W) at input resolution, ReLU'd, as :class:`~dad_ray.models.DepthAnythingV2`; with
``return_features=True`` also the tokens (B, gh * gw, C) of the deepest used level (ViTs: the last block's normed
patch tokens) on the grid :meth:`TimmDepthModel.token_grid`, which covers the (padded) input with cells of
``feature_stride`` pixels — the feature-alignment loss resamples them to the teacher's grid.

Weights: random by default (nothing is downloaded, ever); ``pretrained_backbone=True`` loads timm's pretrained weights
from the local Hugging Face cache only (:func:`cached_pretrained_file`), or fails naming what it looked for.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dad_ray.models.dpt import DPTHead, fuse_levels, init_output_bias, make_scratch

logger = logging.getLogger(__name__)

TIMM_PREFIX = "timm:"
# Recommended students, smallest first (any timm model with forward_intermediates works, e.g. "timm:resnet18").
ZOO = (
    "timm:efficientvit_b0",
    "timm:mobilenetv4_conv_small",
    "timm:regnetx_002",
    "timm:convnext_atto",
    "timm:vit_small_patch14_dinov2",
)
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm looks for in a hub repo, in its order


class PretrainedNotCachedError(FileNotFoundError):
    """timm's pretrained weights are not in the local Hugging Face cache (nothing is downloaded)."""


def cached_pretrained_file(timm_name: str) -> Path:
    """The file of timm's default pretrained weights for ``timm_name`` in the local Hugging Face cache (its
    ``hf_hub_id`` repo at the revision ``refs/main`` names; ``model.safetensors`` first, then ``pytorch_model.bin``,
    or the config's ``hf_hub_filename``). Never touches the network; raises :class:`PretrainedNotCachedError`
    naming the model, the repo, the files and the cache directory when none is there."""
    import timm

    from dad_ray.models.hub import HubFile, HubFileNotCachedError, cached_hub_file, hub_cache_dir

    if not timm.is_model(timm_name):
        raise ValueError(f"unknown timm model {timm_name!r}")
    cfg = timm.models.get_pretrained_cfg(timm_name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    cache = hub_cache_dir()
    if not repo:
        raise PretrainedNotCachedError(
            f"timm model {timm_name!r} has no Hugging Face Hub weights in timm's config (url: "
            f"{getattr(cfg, 'url', None)!r}); pretrained weights are only read from the hub cache {cache}"
        )
    files = (cfg.hf_hub_filename,) if getattr(cfg, "hf_hub_filename", None) else HUB_FILES
    for filename in files:
        try:
            return cached_hub_file(HubFile(repo, filename))
        except HubFileNotCachedError:
            continue  # the next candidate file name
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    raise PretrainedNotCachedError(
        f"pretrained weights of timm model {timm_name!r} are not in the local Hugging Face cache: looked for "
        f"{' or '.join(files)} of repo {repo!r} (revision main) under {repo_dir} (cache dir {cache}; set "
        f"HF_HUB_CACHE / HF_HOME to point elsewhere). Nothing is downloaded: fetch them once with "
        f"`huggingface-cli download {repo}` on a machine with network access, or set model.student_pretrained=false"
    )


def _build_backbone(timm_name: str, pretrained: bool) -> nn.Module:
    """The timm model (classifier removed), with a dynamic input size where the family supports it (ViTs)."""
    import timm

    if not timm.is_model(timm_name):
        raise ValueError(f"unknown timm model {timm_name!r} (see timm.list_models())")
    kwargs: dict = {"num_classes": 0}
    if pretrained:
        path = cached_pretrained_file(timm_name)
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        logger.info("timm:%s: backbone weights from the local cache %s", timm_name, path)
    try:
        model = timm.create_model(timm_name, dynamic_img_size=True, **kwargs)
    except TypeError as err:
        if "dynamic_img_size" not in str(err):
            raise
        model = timm.create_model(timm_name, **kwargs)
    if not hasattr(model, "forward_intermediates") or not getattr(model, "feature_info", None):
        raise ValueError(f"timm model {timm_name!r} exposes no multi-scale features (forward_intermediates)")
    return model


def _round8(x: float, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, 8 * math.floor(x / 8 + 0.5))))


class TimmDepthModel(nn.Module):
    """A timm backbone (``pretrained``) + a DPT-style head (``depth_head``) → relative disparity (B, H, W).

    Attributes used by the trainer and the tools: ``model_name`` (``"timm:<name>"``), ``timm_name``, ``embed_dim``
    (width of the returned tokens), ``size_multiple`` (input sides must be multiples of it), ``feature_stride``
    (pixels per token cell), ``tokens`` (True for ViT-like backbones), ``pad_input``.
    """

    def __init__(
        self,
        timm_name: str,
        *,
        features: int | None = None,
        pad_input: bool = True,
        pretrained_backbone: bool = False,
    ) -> None:
        super().__init__()
        self.timm_name = timm_name
        self.model_name = TIMM_PREFIX + timm_name
        self.pretrained = _build_backbone(timm_name, pretrained_backbone)
        info = self.pretrained.feature_info
        reductions = [int(f["reduction"]) for f in info]
        self.tokens = len(set(reductions)) == 1
        n = len(info)
        if self.tokens:
            self.indices = [n // 4 - 1, n // 2 - 1, 3 * n // 4 - 1, n - 1] if n >= 4 else [n - 1] * 4
        else:
            if n < 4:
                raise ValueError(f"timm model {timm_name!r} has {n} feature levels; the head needs 4")
            self.indices = list(range(n - 4, n))
        self.pretrained.prune_intermediate_layers(self.indices, prune_norm=not self.tokens, prune_head=True)
        channels = [int(info[i]["num_chs"]) for i in self.indices]
        self.feature_stride = reductions[self.indices[-1]]
        self.embed_dim = channels[-1]
        self.pad_input = pad_input and not self.tokens
        self.size_multiple = 1 if self.pad_input else self.feature_stride
        if self.tokens:
            c = self.embed_dim
            width = features or _round8(c / 6, 24, 256)
            self.depth_head = DPTHead(c, width, (c // 8, c // 4, c // 2, c), patch_size=self.feature_stride)
        else:
            width = features or _round8((channels[1] + channels[2]) / 8, 32, 256)
            hidden = min(32, width // 2)
            self.depth_head = nn.Module()
            self.depth_head.scratch = make_scratch(channels, width, hidden=hidden, official_layout=False)
            init_output_bias(self.depth_head.scratch)
        self.features = width

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """(gh, gw) of the tokens ``forward(return_features=True)`` returns for an H x W input."""
        return math.ceil(height / self.feature_stride), math.ceil(width / self.feature_stride)

    def _check_size(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.model_name}: expected input (B, 3, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            what = "patch size" if self.tokens else "total stride (built with pad_input=False)"
            raise ValueError(
                f"{self.model_name}: input size {h}x{w} is not a multiple of the {what} {self.size_multiple}; "
                "resize it first"
            )

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) ImageNet-normalised → disparity (B, H, W), ReLU'd; with ``return_features=True`` also
        tokens (B, gh * gw, C) of the deepest used level (see :meth:`token_grid`)."""
        self._check_size(x)
        h, w = x.shape[-2:]
        if self.pad_input:
            stride = self.feature_stride
            x = F.pad(x, (0, (-w) % stride, 0, (-h) % stride), mode="replicate")  # (B, 3, Hp, Wp)
        kwargs = {"norm": True} if self.tokens else {}
        levels = self.pretrained.forward_intermediates(x, indices=self.indices, intermediates_only=True, **kwargs)
        if self.tokens:  # 4 x (B, C, h, w) → DPTHead's tokens (B, h * w, C)
            gh, gw = levels[-1].shape[-2:]
            head = self.depth_head([t.flatten(2).transpose(1, 2) for t in levels], gh, gw)
        else:
            head = fuse_levels(self.depth_head.scratch, levels, x.shape[-2:])  # (B, 1, Hp, Wp)
        disparity = F.relu(head[:, 0, :h, :w])  # (B, H, W)
        if return_features:
            return disparity, levels[-1].flatten(2).transpose(1, 2)  # (B, gh * gw, C)
        return disparity

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute backbone blocks in the backward pass, as far as timm's model supports it."""
        self.pretrained.set_grad_checkpointing(enable)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters whose names start with ``pretrained.`` (the backbone; trained at ``optim.encoder_lr_mult``)."""
        return list(self.pretrained.parameters())


def create_timm_student(name: str, **overrides) -> TimmDepthModel:
    """``name`` = ``"timm:<timm model name>"``; ``overrides``: ``features`` (head width), ``pad_input`` (CNNs),
    ``pretrained_backbone`` (timm's weights from the local cache)."""
    if not name.startswith(TIMM_PREFIX) or len(name) == len(TIMM_PREFIX):
        raise ValueError(f"not a timm student name: {name!r} (expected 'timm:<timm model name>')")
    allowed = {"features", "pad_input", "pretrained_backbone"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"{name}: unknown override(s) {unknown}; valid: {sorted(allowed)}")
    return TimmDepthModel(name[len(TIMM_PREFIX) :], **overrides)
