"""Depth Anything V2 models (DINOv2 on timm + DPT head), students on any timm backbone, the registry,
official-checkpoint I/O and inference.

Imported lazily (each name from its submodule on first use): checkpoint I/O (``load_weights``, ``save_weights``) does
not import timm, and timm imports torchvision and ``torch._dynamo`` (~1.5 s per cold process on 2 cores). The
processes of a run that never build a model (a Tune trial, the Ray Train controller) stay free of them.
"""

from __future__ import annotations

from dad_ray.lazy import lazy_exports

_API = {
    "DepthAnythingV2": "depth_anything",
    "DepthPredictor": "inference",
    "network_input_size": "inference",
    "predict_disparity": "inference",
    "create_model": "registry",
    "get_spec": "registry",
    "is_model": "registry",
    "list_models": "registry",
    "list_zoo": "registry",
    "ENCODERS": "spec",
    "PATCH_SIZE": "spec",
    "ModelSpec": "spec",
    "ZOO": "timm_student",
    "PretrainedNotCachedError": "timm_student",
    "TimmDepthModel": "timm_student",
    "LoadReport": "weights",
    "WeightsError": "weights",
    "load_weights": "weights",
    "read_state_dict": "weights",
    "save_weights": "weights",
}

__all__ = sorted(_API)


__getattr__ = lazy_exports(__name__, _API)
