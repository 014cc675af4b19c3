"""The key map between the official Depth Anything V2 layout and transformers' ``DepthAnythingForDepthEstimation``.

Pure renames (no transformers import), in both directions, as one table of prefix pairs:

- ``pretrained.*`` (DINOv2) ↔ ``backbone.*``: ``blocks.i`` → ``encoder.layer.i``, the fused ``attn.qkv`` split into
  ``attention.attention.{query,key,value}`` (``chunk(3)`` on dim 0), ``attn.proj`` → ``attention.output.dense``,
  ``ls{1,2}.gamma`` → ``layer_scale{1,2}.lambda1``, ViT-g's ``mlp.w12`` / ``mlp.w3`` → ``mlp.weights_in`` /
  ``mlp.weights_out``, ``norm`` → ``layernorm``;
- ``depth_head.*`` ↔ ``neck.*`` / ``head.*``: ``projects.i`` / ``resize_layers.i`` → ``reassemble_stage.layers.i``,
  ``scratch.layer{i+1}_rn`` → ``convs.i``, ``scratch.refinenet{4-i}`` → ``fusion_stage.layers.i`` (deepest first),
  ``output_conv1`` / ``output_conv2.{0,2}`` → ``head.conv{1,2,3}``.

The transformers names are those of its files (``save_pretrained`` and the Hub's ``*-hf`` repos). Names of
transformers >= 5 in memory (``attention.q_proj``, ``mlp.gate_proj`` ...) are read too. A key the table does not
know is passed through unchanged, so the strict check of :func:`dad_ray.models.weights.load_weights` lists it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Keys only a transformers checkpoint has (Distill-Any-Depth's Large layout also starts with ``backbone.``).
TRANSFORMERS_MARKERS = ("backbone.embeddings.", "backbone.encoder.layer.", "neck.", "head.")
QKV = ("query", "key", "value")


def _prefix_pairs() -> list[tuple[str, str]]:
    """(official prefix, transformers prefix); ``{n}`` stands for a block index."""
    block, layer = "pretrained.blocks.{n}.", "backbone.encoder.layer.{n}."
    pairs = [
        ("pretrained.cls_token", "backbone.embeddings.cls_token"),
        ("pretrained.mask_token", "backbone.embeddings.mask_token"),
        ("pretrained.pos_embed", "backbone.embeddings.position_embeddings"),
        ("pretrained.patch_embed.proj.", "backbone.embeddings.patch_embeddings.projection."),
        ("pretrained.norm.", "backbone.layernorm."),
        (block + "attn.proj.", layer + "attention.output.dense."),
        (block + "ls1.gamma", layer + "layer_scale1.lambda1"),
        (block + "ls2.gamma", layer + "layer_scale2.lambda1"),
        (block + "mlp.w12.", layer + "mlp.weights_in."),
        (block + "mlp.w3.", layer + "mlp.weights_out."),
    ]
    pairs += [(block + f"{p}.", layer + f"{p}.") for p in ("norm1", "norm2", "mlp.fc1", "mlp.fc2")]
    head, scratch = "depth_head.", "depth_head.scratch."
    for i in range(4):
        pairs += [
            (f"{head}projects.{i}.", f"neck.reassemble_stage.layers.{i}.projection."),
            (f"{head}resize_layers.{i}.", f"neck.reassemble_stage.layers.{i}.resize."),
            (f"{scratch}layer{i + 1}_rn.", f"neck.convs.{i}."),
            (f"{scratch}refinenet{4 - i}.out_conv.", f"neck.fusion_stage.layers.{i}.projection."),
        ]
        fusion, block = f"neck.fusion_stage.layers.{i}.", f"{scratch}refinenet{4 - i}."
        pairs += [
            (f"{block}resConfUnit{u}.conv{c}.", f"{fusion}residual_layer{u}.convolution{c}.")
            for u in (1, 2)
            for c in (1, 2)
        ]
    pairs += [
        (f"{scratch}output_conv1.", "head.conv1."),
        (f"{scratch}output_conv2.0.", "head.conv2."),
        (f"{scratch}output_conv2.2.", "head.conv3."),
    ]
    return pairs


def _compile(prefix: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(prefix).replace(re.escape("{n}"), r"(?P<n>\d+)"))


PAIRS = _prefix_pairs()
_TO_HF = [(_compile(ours), hf) for ours, hf in PAIRS]
_FROM_HF = [(_compile(hf), ours) for ours, hf in PAIRS]
_QKV_OURS = re.compile(r"^pretrained\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")
_QKV_HF = re.compile(r"^backbone\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")
# transformers >= 5 names in memory → the names of its files
_V5_NAMES = (
    (re.compile(r"\.attention\.([qkv])_proj\."), lambda m: ".attention.attention." + QKV["qkv".index(m[1])] + "."),
    (re.compile(r"\.attention\.o_proj\."), lambda m: ".attention.output.dense."),
    (re.compile(r"\.mlp\.down_proj\."), lambda m: ".mlp.weights_out."),
)
_V5_GATE_UP = re.compile(r"^(.*\.mlp\.)(gate|up)_proj\.(weight|bias)$")


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str:
    for pattern, template in rules:
        match = pattern.match(key)
        if match:
            return template.replace("{n}", match.groupdict().get("n") or "") + key[match.end() :]
    return key


def _concat(parts: list[Any]) -> Any:
    """torch.cat on dim 0 for tensors; the concatenated shape for shape lists (``infer_model_name`` reads shapes)."""
    if isinstance(parts[0], list):
        return [sum(p[0] for p in parts), *parts[0][1:]]
    import torch

    return torch.cat(parts, dim=0)


def is_transformers_layout(keys) -> bool:
    """Whether state-dict keys are transformers' ``DepthAnythingForDepthEstimation`` layout."""
    return any(k.startswith(TRANSFORMERS_MARKERS) for k in keys)


def to_transformers(state: Mapping[str, Any]) -> dict[str, Any]:
    """Official layout → transformers' file layout (qkv split into query / key / value)."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        qkv = _QKV_OURS.match(key)
        if qkv:
            for name, part in zip(QKV, value.chunk(3, dim=0)):
                out[f"backbone.encoder.layer.{qkv[1]}.attention.attention.{name}.{qkv[2]}"] = part.contiguous()
        else:
            out[_rename(key, _TO_HF)] = value
    return out


def _v5_to_file_names(state: Mapping[str, Any]) -> dict[str, Any]:
    """transformers >= 5 in-memory names → file names (SwiGLU gate / up fused back into ``weights_in``)."""
    out: dict[str, Any] = {}
    gate_up: dict[tuple[str, str], dict[str, Any]] = {}
    for key, value in state.items():
        match = _V5_GATE_UP.match(key)
        if match:
            gate_up.setdefault((match[1], match[3]), {})[match[2]] = value
            continue
        for pattern, repl in _V5_NAMES:
            key = pattern.sub(repl, key)
        out[key] = value
    for (prefix, kind), parts in gate_up.items():
        if set(parts) == {"gate", "up"}:
            out[f"{prefix}weights_in.{kind}"] = _concat([parts["gate"], parts["up"]])
        else:  # incomplete: left as is, so the strict check names it
            out.update({f"{prefix}{name}_proj.{kind}": v for name, v in parts.items()})
    return out


def from_transformers(state: Mapping[str, Any]) -> dict[str, Any]:
    """transformers layout (file or >= 5 in-memory names) → official layout (query / key / value fused into qkv).

    Unknown keys and incomplete query / key / value groups are passed through unchanged (the strict check names them).
    """
    out: dict[str, Any] = {}
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for key, value in _v5_to_file_names(state).items():
        qkv = _QKV_HF.match(key)
        if qkv:
            groups.setdefault((qkv[1], qkv[3]), {})[qkv[2]] = value
        else:
            out[_rename(key, _FROM_HF)] = value
    for (block, kind), parts in groups.items():
        if set(parts) == set(QKV):
            out[f"pretrained.blocks.{block}.attn.qkv.{kind}"] = _concat([parts[n] for n in QKV])
        else:
            out.update({f"backbone.encoder.layer.{block}.attention.attention.{n}.{kind}": v for n, v in parts.items()})
    return out


def check_transformers_config(config: Mapping[str, Any], layers: tuple[int, ...], source: str) -> None:
    """Raise ``ValueError`` when a transformers ``config.json`` describes a model that our weights alone cannot show:
    backbone ``out_indices`` other than our intermediate ``layers`` + 1, or a metric head (sigmoid x max_depth)."""
    if config.get("model_type") != "depth_anything":
        return
    out_indices = list((config.get("backbone_config") or {}).get("out_indices") or [])
    if out_indices and out_indices != [i + 1 for i in layers]:
        raise ValueError(
            f"{source}: backbone out_indices {out_indices} do not match the model's intermediate layers {list(layers)} "
            f"(transformers counts the embeddings as layer 0: expected {[i + 1 for i in layers]})"
        )
    kind = config.get("depth_estimation_type", "relative")
    if kind != "relative":
        raise ValueError(f"{source}: depth_estimation_type {kind!r}; dad_ray's models are relative-disparity models")
