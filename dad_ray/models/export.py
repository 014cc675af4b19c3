"""Export a depth model for deployment, and check the export against PyTorch.

Formats (every one takes an ImageNet-normalised image (B, 3, H, W) and returns disparity (B, H, W), ReLU'd):

- **ONNX** (:func:`export_onnx`): ``torch.onnx.export(dynamo=True)`` (``torch.export`` + onnxscript), opset
  :data:`ONNX_OPSET`, input ``image``, output ``disparity``. Dynamic batch, height and width by default (H and W
  multiples of the model's :func:`size_multiple`: the patch size 14 for ``dav2_*``). DINOv2's position-embedding
  resize runs in exported graphs as two matrix products built from the grid size
  (:func:`dad_ray.models.dinov2.traceable_interpolate_pos_embed`), so one graph serves every size.
- **torch.export** (:func:`export_program`, ``.pt2``): the same graph as an ``ExportedProgram``
  (``torch.export.load``; AOTInductor / ExecuTorch take it from there).
- **TorchScript** (:func:`export_torchscript`, ``.pt``): ``torch.jit.trace`` for LibTorch (C++) and PyTorch Mobile;
  height and width stay dynamic (shapes are traced). ``torch.jit`` is deprecated in PyTorch 2.14 but still works.
- **Hugging Face** (:func:`export_hf`): a ``DepthAnythingForDepthEstimation`` directory (``config.json`` +
  ``model.safetensors``) for the Depth Anything V2 family only (the key map is :mod:`dad_ray.models.hf_layout`).

Exported graphs have no input checks: a side that is not a multiple of :func:`size_multiple` gives a shape error or
a wrong-sized output instead of the model's ``ValueError``. :func:`verify_export` runs an export at given sizes
and returns the relative error ``max |export - torch| / max |torch|`` per size. transformers and ONNX packages are
imported only when used (``pip install -e ".[export]"``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from dad_ray.models.depth_anything import DepthAnythingV2
from dad_ray.models.hf_layout import to_transformers
from dad_ray.models.spec import PATCH_SIZE, PRETRAIN_SIZE
from dad_ray.models.weights import HF_WEIGHTS_FILE, unwrap_model

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "pt2", "torchscript", "hf")
SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".pt", "hf": ""}
ONNX_OPSET = 20  # torch.onnx's default in PyTorch 2.14 (ONNX Runtime >= 1.17 runs it)
INPUT_NAME, OUTPUT_NAME = "image", "disparity"
DEFAULT_SIZE = (PRETRAIN_SIZE, PRETRAIN_SIZE)
MAX_SIDE = 4096  # upper bound of the dynamic height / width
HF_CHECK_SIZE = DEFAULT_SIZE  # transformers matches us exactly at the stored 37 x 37 grid (see export_hf)
INSTALL_HINT = 'pip install -e ".[export]"'


def _require(module: str):
    """Import an optional export dependency, or an ImportError saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{module} is needed for this export: {INSTALL_HINT}") from err


def size_multiple(model: nn.Module) -> int:
    """What input sides must be multiples of: ``size_multiple`` (timm students), else ``patch_size`` (14), else 1."""
    model = unwrap_model(model)
    return int(getattr(model, "size_multiple", None) or getattr(model, "patch_size", None) or 1)


def check_input_size(model: nn.Module, input_size: Sequence[int]) -> tuple[int, int]:
    """``input_size`` as (H, W), or a ``ValueError`` naming the multiple the model needs."""
    if len(input_size) != 2 or min(input_size) < 1:
        raise ValueError(f"input size must be two positive sides (H, W), got {tuple(input_size)}")
    h, w = (int(s) for s in input_size)
    m = size_multiple(model)
    if h % m or w % m:
        name = getattr(unwrap_model(model), "model_name", type(model).__name__)
        example = f"{(h // m or 1) * m}x{(w // m or 1) * m}"
        raise ValueError(f"{name}: input size {h}x{w} is not a multiple of {m} (e.g. {example})")
    return h, w


def second_size(model: nn.Module, input_size: Sequence[int]) -> tuple[int, int]:
    """Another valid size (taller, narrower) to check that a dynamic export really is dynamic."""
    h, w = check_input_size(model, input_size)
    step = size_multiple(model) * max(1, PATCH_SIZE // size_multiple(model))
    return h + 2 * step, max(step, w - step)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |out - ref| / max |ref|`` (the tolerance the export checks use); shapes must agree."""
    if tuple(out.shape) != tuple(ref.shape):
        raise ValueError(f"export output shape {tuple(out.shape)} != PyTorch output shape {tuple(ref.shape)}")
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def _prepare(model: nn.Module, input_size: Sequence[int], batch: int) -> tuple[nn.Module, torch.Tensor]:
    """The unwrapped model in eval mode and a seeded example input on its device."""
    model = unwrap_model(model).eval()
    h, w = check_input_size(model, input_size)
    device = next(model.parameters()).device
    example = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    return model, example


def _dynamic_shapes(model: nn.Module) -> tuple[dict[int, object]]:
    """Dynamic batch, and height / width as multiples of :func:`size_multiple` (for ``torch.export``)."""
    Dim = torch.export.Dim  # noqa: N806 - torch's name
    m = size_multiple(model)
    if m > 1:
        h, w = Dim("grid_h", min=1, max=MAX_SIDE // m) * m, Dim("grid_w", min=1, max=MAX_SIDE // m) * m
    else:
        h = w = Dim.AUTO  # e.g. a padding CNN: torch.export finds the ranges its padding arithmetic allows
    return ({0: Dim("batch", min=1, max=1024), 2: h, 3: w},)


def _atomic_target(path: Path) -> tuple[Path, Path]:
    """(final path, temporary path beside it); the caller moves the temporary file over the final one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    return path, Path(tmp)


def export_program(model: nn.Module, path: str | Path, input_size=DEFAULT_SIZE, dynamic: bool = True) -> Path:
    """``torch.export`` the model (traced at ``input_size``; batch 2 when dynamic, since a traced size of 1 would be
    fixed) and save the ``ExportedProgram`` to ``path`` (``.pt2``). Returns the path."""
    model, example = _prepare(model, input_size, 2 if dynamic else 1)
    program = torch.export.export(model, (example,), dynamic_shapes=_dynamic_shapes(model) if dynamic else None)
    path, tmp = _atomic_target(Path(path))
    try:
        torch.export.save(program, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("saved torch.export program of %s to %s", getattr(model, "model_name", "model"), path)
    return path


def export_onnx(model: nn.Module, path: str | Path, input_size=DEFAULT_SIZE, dynamic: bool = True) -> Path:
    """Export to ONNX (opset :data:`ONNX_OPSET`, dynamo exporter) at ``input_size`` = (H, W); with ``dynamic`` the
    batch, height and width are symbolic (H, W multiples of :func:`size_multiple`). Returns the path (the weights
    are embedded unless the model exceeds ONNX's 2 GB limit, e.g. ViT-g: then ``<path>.data`` beside it)."""
    _require("onnxscript")
    model, example = _prepare(model, input_size, 2 if dynamic else 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=_dynamic_shapes(model) if dynamic else None,
            verbose=False,
        )
    program.save(str(path))
    logger.info(
        "saved ONNX (opset %d, %s) of %s to %s",
        ONNX_OPSET,
        "dynamic" if dynamic else "static",
        getattr(model, "model_name", "model"),
        path,
    )
    return path


def export_torchscript(model: nn.Module, path: str | Path, input_size=DEFAULT_SIZE) -> Path:
    """``torch.jit.trace`` at ``input_size`` and save to ``path`` (``torch.jit.load`` / LibTorch ``torch::jit::load``).
    Returns the path. The tracer warnings about the model's input checks (not kept in the trace) are silenced."""
    model, example = _prepare(model, input_size, 1)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=FutureWarning)  # torch.jit is deprecated in PyTorch 2.14
        traced = torch.jit.trace(model, example, check_trace=False)
        path, tmp = _atomic_target(Path(path))
        try:
            torch.jit.save(traced, str(tmp))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    logger.info("saved TorchScript of %s to %s", getattr(model, "model_name", "model"), path)
    return path


def hf_config(model: DepthAnythingV2):
    """transformers' ``DepthAnythingConfig`` of a Depth Anything V2 model (relative head, DINOv2 backbone whose
    ``out_indices`` are our intermediate layers + 1: transformers counts the embeddings as layer 0)."""
    transformers = _require("transformers")
    spec = model.spec
    backbone = transformers.Dinov2Config(
        hidden_size=spec.embed_dim,
        num_hidden_layers=spec.depth,
        num_attention_heads=spec.num_heads,
        mlp_ratio=4,
        image_size=PRETRAIN_SIZE,
        patch_size=PATCH_SIZE,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        qkv_bias=True,
        use_swiglu_ffn=spec.ffn == "swiglu",
        out_indices=[i + 1 for i in spec.layers],
        reshape_hidden_states=False,
        apply_layernorm=True,
    )
    return transformers.DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=PATCH_SIZE,
        reassemble_hidden_size=spec.embed_dim,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=list(spec.out_channels),
        fusion_hidden_size=spec.features,
        head_hidden_size=32,
        depth_estimation_type="relative",
    )


def export_hf(model: nn.Module, out_dir: str | Path) -> Path:
    """Write a transformers ``DepthAnythingForDepthEstimation`` directory (``config.json`` + ``model.safetensors``)
    for a Depth Anything V2 model; ``from_pretrained(out_dir)`` loads it.

    Its ``predicted_depth`` equals ours at 518 x 518 (the stored position-embedding grid). At other sizes
    transformers' DINOv2 resizes the position embedding to the target size, not by DINOv2's scale factor
    ``(n + 0.1) / 37`` as the official model (and ours) does: a ~1e-3 relative difference, from transformers.
    """
    from safetensors.torch import save_file

    model = unwrap_model(model)
    if not isinstance(model, DepthAnythingV2):
        name = getattr(model, "model_name", type(model).__name__)
        raise ValueError(
            f"{name}: Hugging Face export (DepthAnythingForDepthEstimation) is for the Depth Anything V2 family "
            "(dav2_* models); export this model with --format onnx, pt2 or torchscript"
        )
    config = hf_config(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in to_transformers(model.state_dict()).items()}
    path, tmp = _atomic_target(out_dir / HF_WEIGHTS_FILE)
    try:
        save_file(state, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    config.save_pretrained(str(out_dir))
    logger.info("saved %s as a transformers DepthAnythingForDepthEstimation directory %s", model.model_name, out_dir)
    return out_dir


def load_export(path: str | Path, fmt: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function image (B, 3, H, W) → disparity (B, H, W) running an exported file (CPU)."""
    path = Path(path)
    if fmt == "onnx":
        ort = _require("onnxruntime")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.cpu().numpy()})[0])
    if fmt == "pt2":
        module = torch.export.load(str(path)).module()
        return lambda x: module(x)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
        return lambda x: module(x)
    if fmt == "hf":
        transformers = _require("transformers")
        hf_model = transformers.DepthAnythingForDepthEstimation.from_pretrained(str(path)).eval()
        return lambda x: hf_model(pixel_values=x).predicted_depth
    raise ValueError(f"unknown export format {fmt!r}; one of {FORMATS}")


def verify_export(
    model: nn.Module, path: str | Path, fmt: str, sizes: Sequence[Sequence[int]], batch: int = 1
) -> dict[tuple[int, int], float]:
    """Run the export at each (H, W) in ``sizes`` and PyTorch (CPU, fp32) on the same seeded input →
    {size: relative error} (:func:`relative_error`)."""
    model = unwrap_model(model).eval()
    run = load_export(path, fmt)
    errors = {}
    for i, size in enumerate(sizes):
        h, w = check_input_size(model, size)
        x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(i + 1))
        with torch.no_grad():
            ref = model.to("cpu")(x)
            errors[(h, w)] = relative_error(run(x), ref)
    return errors


TOLERANCE = 1e-4  # relative (relative_error) an export must meet at the checked sizes


def export_model(
    model: nn.Module, fmt: str, out: str | Path, input_size=DEFAULT_SIZE, dynamic: bool = True
) -> tuple[Path, list[tuple[int, int]]]:
    """Export ``model`` in ``fmt`` (one of :data:`FORMATS`) → (path, the sizes to check it at): the export size,
    plus a second size when the export is dynamic (ONNX, pt2, TorchScript); 518 x 518 for ``hf``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")
    size = check_input_size(model, input_size)
    if fmt == "hf":
        return export_hf(model, out), [HF_CHECK_SIZE]
    if fmt == "onnx":
        path = export_onnx(model, out, size, dynamic=dynamic)
    elif fmt == "pt2":
        path = export_program(model, out, size, dynamic=dynamic)
    else:
        path, dynamic = export_torchscript(model, out, size), True
    return path, [size, second_size(model, size)] if dynamic else [size]
