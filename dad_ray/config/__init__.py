"""One config path for every job: typed frozen dataclasses, YAML presets, dotted overrides."""

from dad_ray.config.core import ConfigError, all_keys, from_dict, get_dotted, replace, set_dotted, to_dict
from dad_ray.config.loader import (
    add_config_args,
    build_config,
    config_from_args,
    config_to_yaml,
    load_config,
    load_preset_dict,
    preset_names,
    save_config,
)
from dad_ray.config.paths import absolute_path, is_uri, with_absolute_paths
from dad_ray.config.schema import (
    PATCH,
    BootstrapConfig,
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    SyntheticConfig,
    TeacherConfig,
    TrainConfig,
)

__all__ = [
    "absolute_path",
    "is_uri",
    "with_absolute_paths",
    "PATCH",
    "BootstrapConfig",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "SyntheticConfig",
    "TeacherConfig",
    "TrainConfig",
    "add_config_args",
    "all_keys",
    "build_config",
    "config_from_args",
    "config_to_yaml",
    "from_dict",
    "get_dotted",
    "load_config",
    "load_preset_dict",
    "preset_names",
    "replace",
    "save_config",
    "set_dotted",
    "to_dict",
]
