"""Depth Anything V2 models (DINOv2 on timm + DPT head), students on any timm backbone, the registry,
official-checkpoint I/O and inference."""

from dad_ray.models.depth_anything import DepthAnythingV2
from dad_ray.models.inference import DepthPredictor, network_input_size, predict_disparity
from dad_ray.models.registry import create_model, get_spec, is_model, list_models, list_zoo
from dad_ray.models.spec import ENCODERS, PATCH_SIZE, ModelSpec
from dad_ray.models.timm_student import ZOO, PretrainedNotCachedError, TimmDepthModel
from dad_ray.models.weights import LoadReport, WeightsError, load_weights, read_state_dict, save_weights

__all__ = [
    "DepthAnythingV2",
    "DepthPredictor",
    "ENCODERS",
    "LoadReport",
    "ModelSpec",
    "PATCH_SIZE",
    "PretrainedNotCachedError",
    "TimmDepthModel",
    "WeightsError",
    "ZOO",
    "create_model",
    "get_spec",
    "is_model",
    "list_models",
    "list_zoo",
    "load_weights",
    "network_input_size",
    "predict_disparity",
    "read_state_dict",
    "save_weights",
]
