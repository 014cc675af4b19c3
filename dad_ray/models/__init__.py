"""Depth Anything V2 models (DINOv2 on timm + DPT head), the registry, official-checkpoint I/O and inference."""

from dad_ray.models.depth_anything import DepthAnythingV2
from dad_ray.models.inference import DepthPredictor, network_input_size, predict_disparity
from dad_ray.models.registry import create_model, get_spec, list_models
from dad_ray.models.spec import ENCODERS, PATCH_SIZE, ModelSpec
from dad_ray.models.weights import LoadReport, WeightsError, load_weights, read_state_dict, save_weights

__all__ = [
    "DepthAnythingV2",
    "DepthPredictor",
    "ENCODERS",
    "LoadReport",
    "ModelSpec",
    "PATCH_SIZE",
    "WeightsError",
    "create_model",
    "get_spec",
    "list_models",
    "load_weights",
    "network_input_size",
    "predict_disparity",
    "read_state_dict",
    "save_weights",
]
