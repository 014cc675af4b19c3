"""The one config path: validation, presets, precedence, dict round trip."""

import argparse

import pytest
import yaml

from dad_ray.config import (
    ConfigError,
    ExperimentConfig,
    add_config_args,
    build_config,
    config_from_args,
    from_dict,
    load_config,
    preset_names,
    save_config,
    to_dict,
)


def test_defaults_validate_and_round_trip_through_plain_dict():
    cfg = ExperimentConfig()
    plain = to_dict(cfg)
    assert isinstance(plain["model"]["teachers"], list)  # Ray/JSON-safe: no tuples, no dataclasses
    assert from_dict(ExperimentConfig, plain) == cfg


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_builds_and_round_trips_through_yaml(name, tmp_path):
    cfg = build_config(name)
    path = save_config(cfg, tmp_path / "config.yaml")
    assert load_config(path) == cfg


def test_unknown_key_lists_valid_keys_and_close_match():
    with pytest.raises(ConfigError) as err:
        build_config(overrides={"loss.lamda_lg": 0.5})
    msg = str(err.value)
    assert "loss.lamda_lg" in msg and "lambda_lg" in msg and "valid keys" in msg


def test_unknown_top_level_section():
    with pytest.raises(ConfigError, match="unknown config key 'optimizer'.*did you mean optim"):
        build_config(overrides={"optimizer.lr": 1.0})


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("optim.lr", "fast", "optim.lr: expected float"),
        ("train.num_workers", 1.5, "train.num_workers: expected int"),
        ("train.use_gpu", "yes", "train.use_gpu: expected bool"),
        ("loss.normalization", "median", "loss.normalization: expected one of"),
        ("data.crop_size", 500, "data.crop_size: must be a positive multiple of 14"),
        ("loss.lambda_lg", -0.5, "loss.lambda_lg: must be >= 0"),
        ("optim.max_steps", 0, "optim.max_steps: must be >= 1"),
        ("data.global_size", [518], "data.global_size: expected 2 values"),
    ],
)
def test_wrong_type_or_range_names_the_key(key, value, fragment):
    with pytest.raises(ConfigError) as err:
        build_config(overrides={key: value})
    assert fragment in str(err.value)


def test_nested_list_item_validation_names_the_item():
    with pytest.raises(ConfigError, match=r"model.teachers\[0\].probability: expected float"):
        build_config(overrides={"model.teachers": [{"name": "dav2_vits", "probability": "high"}]})


def test_precedence_preset_then_file_then_cli(tmp_path):
    base = build_config("smoke")
    cfg_file = tmp_path / "exp.yaml"
    cfg_file.write_text(yaml.safe_dump({"base": "smoke", "loss": {"lambda_lg": 0.25, "lambda_grad": 3.0}}))
    parser = argparse.ArgumentParser()
    add_config_args(parser, {"--num-workers": ("train.num_workers", int, "Train workers")})
    args = parser.parse_args(
        ["--preset", "default", "--config", str(cfg_file), "--set", "loss.lambda_lg=0.75", "--num-workers", "2"]
    )
    cfg = config_from_args(args)
    assert cfg.loss.lambda_lg == 0.75  # CLI beats file
    assert cfg.loss.lambda_grad == 3.0  # file beats preset
    assert cfg.train.num_workers == 2  # shortcut flag
    assert cfg.data.crop_size == base.data.crop_size  # the file's own base preset
    assert build_config("default").loss.lambda_lg == 0.5


def test_override_values_are_parsed_as_yaml():
    cfg = build_config("default", overrides=["data.global_size=[56, 70]", "train.use_gpu=false", "train.name=x"])
    assert cfg.data.global_size == (56, 70) and cfg.train.use_gpu is False and cfg.train.name == "x"


def test_multi_teacher_probabilities_must_sum_to_one():
    teachers = [
        {"name": "dav2_vitl", "weights": "a.pth", "probability": 0.7},
        {"name": "dav2_vitb", "weights": "b.pth", "probability": 0.2},
    ]
    with pytest.raises(ConfigError, match="model.teachers: probabilities must sum to 1"):
        build_config(overrides={"model.teachers": teachers})


def test_unknown_preset_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'smok'.*did you mean smoke"):
        build_config("smok")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        build_config(config_file=bad)
    with pytest.raises(ConfigError, match="cannot read config file"):
        build_config(config_file=tmp_path / "missing.yaml")


def test_configs_are_frozen():
    cfg = ExperimentConfig()
    with pytest.raises(AttributeError):
        cfg.loss.lambda_lg = 3.0  # type: ignore[misc]
