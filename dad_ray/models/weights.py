"""Strict weights I/O in the official Depth Anything V2 key layout (``pretrained.*`` + ``depth_head.*``).

Reads official ``.pth`` files (``torch.load(weights_only=True)``: tensors only, never arbitrary pickled objects),
``.safetensors`` files (Distill-Any-Depth's releases, our own saves) and two explicit wrappers ``{"model": sd}`` /
``{"state_dict": sd}``; a path may also be ``hf://org/repo/file`` (the local Hugging Face cache only,
:mod:`dad_ray.models.hub`), a storage URI (``s3://…``, ``gs://…``, ``file://…``: fetched through
:mod:`dad_ray.data.storage` into this machine's weights cache, once per file version, by whichever process loads it —
an evaluation actor, a training worker) or a transformers model directory.

A saved student also records how it is evaluated (:class:`EvalSettings`: input size, protocol, alignment) in its
safetensors metadata, beside its architecture; :func:`read_eval_settings` reads it back (from the file's header
only, also on a URI) so that ``jobs/evaluate.py`` and ``jobs/predict.py`` default to it.

Key maps, applied in this order and reported in :class:`LoadReport`:

- ``module.`` (DDP) prefix on every key → stripped;
- transformers' ``DepthAnythingForDepthEstimation`` layout (``backbone.embeddings.*``, ``neck.*``, ``head.*``:
  ``save_pretrained`` directories and the Hub's ``*-hf`` repos) → official, by the explicit map of
  :mod:`dad_ray.models.hf_layout`; its ``config.json``, when beside the weights, must match the model;
- Distill-Any-Depth's Large layout ``backbone.*`` → ``pretrained.*``;
- DINOv2 chunked blocks ``<pretrained|backbone>.blocks.<chunk>.<i>.…`` → ``pretrained.blocks.<i>.…`` (DINOv2 keeps
  the global block index inside a chunk, so the chunk number is simply dropped).

Anything else is an error: missing keys, unexpected keys and shape mismatches are listed (with shapes) in a
:class:`WeightsError` that names the file. There is no ``strict=False`` path.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import struct
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from dad_ray.data import storage
from dad_ray.models.hf_layout import check_transformers_config, from_transformers, is_transformers_layout
from dad_ray.models.hub import is_hub_path, resolve_path

logger = logging.getLogger(__name__)

ENCODER_PREFIX = "pretrained."
HEAD_PREFIX = "depth_head."
WRAPPER_KEYS = ("model", "state_dict")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
MAX_LISTED = 40  # keys listed per category in an error message
HF_WEIGHTS_FILE = "model.safetensors"  # the weights of a transformers directory (save_pretrained)

_CHUNKED = re.compile(r"^(pretrained|backbone)\.blocks\.\d+\.(\d+)\.(.+)$")


class WeightsError(ValueError):
    """A weights file that cannot be read or does not match the model; the message names the file and the keys."""


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_weights` did."""

    path: str
    layout: str  # "official", or the key maps applied, e.g. "module.+dad_large"
    loaded: int  # tensors copied into the model
    ignored: tuple[str, ...] = ()  # file keys deliberately not loaded (head keys under encoder_only)
    unloaded: tuple[str, ...] = ()  # model keys left as initialised (exactly the head keys under encoder_only)

    def __str__(self) -> str:
        text = f"{self.loaded} tensors from {self.path} ({self.layout} layout)"
        if self.unloaded:
            text += f", {len(self.unloaded)} head tensors left at their initialisation"
        if self.ignored:
            text += f", {len(self.ignored)} file tensors ignored"
        return text


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module under DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def is_storage_uri(path: str | Path) -> bool:
    """A weights path read through :mod:`dad_ray.data.storage` (``s3://``, ``gs://``, ``file://``…), not ``hf://``."""
    return isinstance(path, str) and storage.is_uri(path) and not is_hub_path(path)


def weights_cache_dir() -> Path:
    """Where weights given as storage URIs are fetched to on this machine: ``<tmp>/dad_ray_weights``."""
    return Path(tempfile.gettempdir()) / "dad_ray_weights"


def fetch_weights(uri: str) -> Path:
    """The local copy of the weights file at a storage URI, downloaded into :func:`weights_cache_dir` unless this
    version (URI, size, modification time) is already there; FileNotFoundError naming the URI if there is none."""
    fs, inner = storage.resolve(uri)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"weights file not found: {uri}")
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"{uri}: not a weights file (a directory; give the .safetensors / .pth inside it)")
    version = uuid.uuid5(uuid.NAMESPACE_URL, f"{uri}|{info.size}|{info.mtime_ns}").hex
    dest = weights_cache_dir() / f"{version}-{storage.basename(uri)}"
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not storage.download_file(uri, dest):
            raise FileNotFoundError(f"weights file not found: {uri}")
        logger.info("fetched %s (%d bytes) to %s", uri, info.size, dest)
    return dest


def resolve_weights_file(path: str | Path) -> Path:
    """The local file behind a weights path: the file itself, a storage URI's copy in :func:`weights_cache_dir`
    (:func:`fetch_weights`), an ``hf://org/repo/file`` path's copy in the Hugging Face cache
    (:mod:`dad_ray.models.hub`; not cached → ``HubFileNotCachedError``), or a transformers directory's
    ``model.safetensors``."""
    if is_storage_uri(path):
        return fetch_weights(str(path))
    resolved = resolve_path(path)
    if resolved.is_dir():
        if not (resolved / HF_WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{path}: a directory without {HF_WEIGHTS_FILE} (a transformers model directory)")
        resolved = resolved / HF_WEIGHTS_FILE
    if not resolved.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    return resolved


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` / ``.pth`` file (or of its ``model`` / ``state_dict`` wrapper), on CPU.

    ``path`` may also be ``hf://org/repo/file`` (read from the local Hugging Face cache) or a transformers directory.
    """
    path = resolve_weights_file(path)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as err:
            raise WeightsError(f"{path}: not a readable safetensors file ({err})") from err
    if path.suffix not in TORCH_SUFFIXES:
        raise WeightsError(f"{path}: unknown weights format; expected .safetensors or one of {TORCH_SUFFIXES}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise WeightsError(
            f"{path}: refused to load: it holds objects other than tensors and plain containers "
            f"(loaded with weights_only=True; re-save it as a plain state dict): {err}"
        ) from err
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        wrappers = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
        if not wrappers:
            raise WeightsError(
                f"{path}: not a state dict: top-level keys {sorted(map(str, obj))[:MAX_LISTED]} hold non-tensors and "
                f"none of the accepted wrapper keys {WRAPPER_KEYS} is present"
            )
        logger.info("%s: using the state dict under %r", path, wrappers[0])
        obj = obj[wrappers[0]]
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise WeightsError(f"{path}: entries under {wrappers[0]!r} are not tensors: {bad[:MAX_LISTED]}")
    return dict(obj)


def to_official_layout(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Apply the explicit key maps (module. prefix, transformers' ``DepthAnythingForDepthEstimation`` layout
    (:mod:`dad_ray.models.hf_layout`), DAD-Large ``backbone.*``, chunked blocks) → (state, layout)."""
    keys = list(state)
    applied = []
    if keys and all(k.startswith("module.") for k in keys):
        state = {k[len("module.") :]: v for k, v in state.items()}
        applied.append("module.")
    if is_transformers_layout(state):  # before DAD-Large: both start with backbone.
        state = from_transformers(state)
        applied.append("transformers")
    elif any(k.startswith("backbone.") for k in state):
        state = {
            (ENCODER_PREFIX + k[len("backbone.") :] if k.startswith("backbone.") else k): v for k, v in state.items()
        }
        applied.append("dad_large")
    if any(_CHUNKED.match(k) for k in state):
        state = {_CHUNKED.sub(r"pretrained.blocks.\2.\3", k): v for k, v in state.items()}
        applied.append("chunked_blocks")
    return dict(state), "+".join(applied) or "official"


TIMM_STUDENT_PREFIX = "timm:"  # model_name of dad_ray.models.timm_student models


def to_model_layout(state: Mapping[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    """``state`` in ``model``'s key layout → (state, layout). Timm students (``model_name`` ``timm:…``) keep timm's
    backbone keys and only lose a DDP ``module.`` prefix on every key (the DINOv2 maps of :func:`to_official_layout`
    would rename e.g. MobileNet's ``pretrained.blocks.0.0.*``); every other model gets :func:`to_official_layout`."""
    if not str(getattr(model, "model_name", "")).startswith(TIMM_STUDENT_PREFIX):
        return to_official_layout(state)
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}, "module."
    return dict(state), "timm_student"


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def _listing(title: str, items: list[str]) -> str:
    more = f"\n    ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"  {title} ({len(items)}):\n    " + "\n    ".join(items[:MAX_LISTED]) + more


def check_state_dict(
    path: str | Path, state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], what: str
) -> None:
    """Raise :class:`WeightsError` listing missing / unexpected keys and shape mismatches (with shapes)."""
    missing = [f"{k} {_shape(v)}" for k, v in expected.items() if k not in state]
    unexpected = [f"{k} {_shape(v)}" for k, v in state.items() if k not in expected]
    mismatched = [
        f"{k}: file {_shape(v)} vs model {_shape(expected[k])}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = [f"{path}: weights do not match {what}:"]
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatch", mismatched),
        ):
            if items:
                parts.append(_listing(title, items))
        raise WeightsError("\n".join(parts))


def load_weights(model: nn.Module, path: str | Path, *, encoder_only: bool = False) -> LoadReport:
    """Load a checkpoint into ``model`` (DDP / compiled wrappers are unwrapped), strictly.

    ``encoder_only=True`` loads the ``pretrained.*`` tensors only (the paper's random-head students): the file's
    ``depth_head.*`` tensors, if any, are ignored, and it is asserted that exactly the model's ``depth_head.*``
    tensors are left unloaded. Returns a :class:`LoadReport`.
    """
    model = unwrap_model(model)
    what = getattr(model, "model_name", type(model).__name__)
    state, layout = to_model_layout(read_state_dict(path), model)
    if "transformers" in layout.split("+"):
        _check_transformers_config(path, model)
    expected = model.state_dict()
    ignored: list[str] = []
    if encoder_only:
        ignored = sorted(k for k in state if k.startswith(HEAD_PREFIX))
        state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
        expected = {k: v for k, v in expected.items() if k.startswith(ENCODER_PREFIX)}
        what += " (encoder only)"
    check_state_dict(path, state, expected, what)
    dtypes = sorted({str(v.dtype) for v in state.values()})
    if any(v.dtype != expected[k].dtype for k, v in state.items()):
        logger.info("%s: tensors stored as %s, cast to the model's dtype", path, ", ".join(dtypes))
    if encoder_only:
        encoder_state = {k[len(ENCODER_PREFIX) :]: v for k, v in state.items()}
        model.pretrained.load_state_dict(encoder_state, strict=True)
    else:
        model.load_state_dict(state, strict=True)
    unloaded = tuple(sorted(set(model.state_dict()) - set(state)))
    head_keys = tuple(sorted(k for k in model.state_dict() if k.startswith(HEAD_PREFIX)))
    if unloaded != (head_keys if encoder_only else ()):
        raise WeightsError(f"{path}: unexpected set of unloaded keys for {what}: {list(unloaded)[:MAX_LISTED]}")
    report = LoadReport(str(path), layout, len(state), tuple(ignored), unloaded)
    logger.info("loaded %s into %s", report, what)
    return report


def _check_transformers_config(path: str | Path, model: nn.Module) -> None:
    """A transformers checkpoint's ``config.json`` (beside its weights, when present) must describe ``model``: the
    same intermediate layers (``out_indices``) and a relative head — neither shows in the tensors."""
    config_file = resolve_weights_file(path).parent / "config.json"
    spec = getattr(model, "spec", None)
    if spec is None or not config_file.is_file():
        return
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise WeightsError(f"{config_file}: unreadable transformers config ({err})") from err
    try:
        check_transformers_config(config, spec.layers, str(config_file))
    except ValueError as err:
        raise WeightsError(str(err)) from err


@dataclass(frozen=True)
class EvalSettings:
    """How a checkpoint is evaluated, as recorded in its metadata (None = not recorded): the network's input size
    (short side), the protocol (a name of :data:`dad_ray.metrics.PROTOCOLS`) and the alignment space."""

    input_size: int | None = None
    protocol: str | None = None
    alignment: str | None = None

    @classmethod
    def from_config(cls, eval_cfg: Any) -> EvalSettings:
        """The ``eval`` section of an experiment config (:class:`~dad_ray.config.schema.EvalConfig`)."""
        return cls(eval_cfg.input_size, eval_cfg.protocol, eval_cfg.alignment)

    def to_metadata(self) -> dict[str, str]:
        return {f"eval_{k}": str(v) for k, v in vars(self).items() if v is not None}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], path: str | Path) -> EvalSettings:
        size = metadata.get("eval_input_size")
        if size is not None and not size.isdigit():
            raise WeightsError(f"{path}: metadata eval_input_size must be an integer, got {size!r}")
        return cls(int(size) if size else None, metadata.get("eval_protocol"), metadata.get("eval_alignment"))


def save_weights(model: nn.Module, path: str | Path, evaluation: EvalSettings | None = None) -> Path:
    """Write ``model``'s state dict as safetensors in the official key layout (atomic; DDP/compile unwrapped).

    Metadata: ``{"format": "pt", "arch": <registry name>}`` plus, with ``evaluation``, ``eval_input_size``,
    ``eval_protocol`` and ``eval_alignment`` (:class:`EvalSettings`). The file loads unchanged into the official
    ``DepthAnythingV2`` class (``load_state_dict(safetensors.torch.load_file(path))``) and back via
    :func:`load_weights`.
    """
    model = unwrap_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", "arch": str(getattr(model, "model_name", type(model).__name__))}
    metadata.update(evaluation.to_metadata() if evaluation is not None else {})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info("saved %d tensors of %s to %s", len(state), metadata["arch"], path)
    return path


SAFETENSORS_MAX_HEADER = 100_000_000  # bytes; the format's own limit


def safetensors_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a ``.safetensors`` file (tensor names → dtype, shape, offsets; ``__metadata__``), read
    without the tensors: 8 + header bytes, also from a storage URI (a ranged read, no download)."""
    if is_storage_uri(path):
        fs, inner = storage.resolve(str(path))
        if fs.get_file_info(inner).type != pafs.FileType.File:
            raise FileNotFoundError(f"weights file not found: {path}")
        opener = fs.open_input_file(inner)
    else:
        opener = open(resolve_weights_file(path), "rb")  # noqa: SIM115 (closed by the with below)
    with opener as f:
        raw = f.read(8)
        (size,) = struct.unpack("<Q", raw) if len(raw) == 8 else (0,)
        if not 0 < size <= SAFETENSORS_MAX_HEADER:
            raise WeightsError(f"{path}: not a readable safetensors file (header size {size})")
        try:
            header = json.loads(f.read(size))
        except (ValueError, UnicodeDecodeError) as err:
            raise WeightsError(f"{path}: not a readable safetensors file (header is not JSON: {err})") from err
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: not a readable safetensors file (header is not a JSON object)")
    return header


def _weights_suffix(path: str | Path) -> str:
    name = storage.basename(path) if is_storage_uri(path) else resolve_weights_file(path).name
    return Path(name).suffix


def read_eval_settings(path: str | Path) -> EvalSettings:
    """How the checkpoint at ``path`` (local, ``hf://`` or a storage URI) records it is evaluated; empty
    :class:`EvalSettings` for files that record nothing (official ``.pth`` files, older saves)."""
    if _weights_suffix(path) != ".safetensors":
        return EvalSettings()
    return EvalSettings.from_metadata(safetensors_header(path).get("__metadata__") or {}, path)


def _file_shapes(path: str | Path) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Key → shape (and safetensors metadata) without loading tensors where the format allows it (safetensors:
    the header only, also on a storage URI)."""
    if _weights_suffix(path) == ".safetensors":
        header = safetensors_header(path)
        metadata = header.pop("__metadata__", None) or {}
        return {k: list(v["shape"]) for k, v in header.items()}, dict(metadata)
    return {k: list(v.shape) for k, v in read_state_dict(path).items()}, {}


def infer_model_name(path: str | Path) -> str:
    """The registry name a checkpoint belongs to: its ``arch`` metadata (our saves), else the row of
    :data:`~dad_ray.models.spec.ENCODERS` whose embed dim, depth, DPT features and FFN match the tensors."""
    from dad_ray.models.registry import PREFIX, list_models
    from dad_ray.models.spec import ENCODERS

    shapes, metadata = _file_shapes(path)
    if metadata.get("arch") in list_models() or metadata.get("arch", "").startswith(TIMM_STUDENT_PREFIX):
        return metadata["arch"]
    shapes, _ = to_official_layout(shapes)  # type: ignore[arg-type]
    try:
        embed_dim = shapes["pretrained.pos_embed"][-1]
        features = shapes["depth_head.scratch.layer1_rn.weight"][0]
    except KeyError as err:
        raise WeightsError(f"{path}: cannot infer the model: no {err.args[0]} tensor") from err
    depth = len({k.split(".")[2] for k in shapes if k.startswith("pretrained.blocks.")})
    ffn = "swiglu" if any(".mlp.w12." in k for k in shapes) else "mlp"
    for encoder, spec in ENCODERS.items():
        if (spec.embed_dim, spec.depth, spec.features, spec.ffn) == (embed_dim, depth, features, ffn):
            return PREFIX + encoder
    raise WeightsError(
        f"{path}: no registry model has embed_dim={embed_dim}, depth={depth}, features={features}, ffn={ffn}; "
        "pass the model name explicitly"
    )
