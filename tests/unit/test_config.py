"""The one config path: validation, presets, precedence, dict round trip."""

import argparse
import dataclasses
from typing import Any, Literal

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
from dad_ray.config.core import check


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


# ------------------------------------------------------------------------------ from_dict extensions (search spaces)


@dataclasses.dataclass(frozen=True)
class _Inner:
    KEY_NOUN = "field"  # a file format of its own: "unknown field 'x'" under its prefix

    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        check(self.low < self.high, "high", f"must be > low, got {self.high}")


@dataclasses.dataclass(frozen=True)
class _Outer:
    items: dict[str, _Inner] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    inner: _Inner | Literal["none"] | None = None
    mode: Literal["min", "max"] = "min"


def test_dict_field_converts_each_value_and_names_its_key():
    out = from_dict(_Outer, {"items": {"a.b": {"low": 1, "high": 2}}, "extra": {"k": [1, 2]}})
    assert out.items == {"a.b": _Inner(1.0, 2.0)} and isinstance(out.items["a.b"].low, float)
    assert out.extra == {"k": [1, 2]}
    with pytest.raises(ConfigError, match=r"^items\.a\.b\.high: must be > low, got 0\.5$"):
        from_dict(_Outer, {"items": {"a.b": {"high": 0.5, "low": 1}}})
    with pytest.raises(ConfigError, match=r"^items\.x\.low: expected float, got str 'a'$"):
        from_dict(_Outer, {"items": {"x": {"low": "a"}}})
    with pytest.raises(ConfigError, match=r"^items: expected mapping of str to mapping \(_Inner\), got list"):
        from_dict(_Outer, {"items": ["x"]})
    with pytest.raises(ConfigError, match=r"^extra: keys must be strings, got int 1$"):
        from_dict(_Outer, {"extra": {1: "x"}})


def test_key_noun_words_unknown_keys_under_their_prefix():
    with pytest.raises(
        ConfigError, match=r"^items\.a: unknown field 'hihg' \(did you mean high\?\); valid fields: low, high$"
    ):
        from_dict(_Outer, {"items": {"a": {"hihg": 2}}})
    # without KEY_NOUN: the experiment config's wording, unchanged
    with pytest.raises(ConfigError, match=r"^unknown config key 'mdoe' \(did you mean mode\?\); valid keys: "):
        from_dict(_Outer, {"mdoe": "min"})


def test_union_with_a_config_class_reports_the_classs_own_error():
    assert from_dict(_Outer, {"inner": None}).inner is None
    assert from_dict(_Outer, {"inner": "none"}).inner == "none"
    assert from_dict(_Outer, {"inner": {"high": 3}}).inner == _Inner(0.0, 3.0)
    with pytest.raises(ConfigError, match=r"^inner\.high: must be > low, got -1\.0$"):
        from_dict(_Outer, {"inner": {"high": -1}})
    with pytest.raises(ConfigError, match=r"^inner: expected mapping \(_Inner\) or one of 'none' or null, got 'x'$"):
        from_dict(_Outer, {"inner": "x"})


def test_literal_error_names_close_matches():
    with pytest.raises(ConfigError, match=r"^mode: expected one of 'min', 'max', got 'mn' \(did you mean min\?\)$"):
        from_dict(_Outer, {"mode": "mn"})
    with pytest.raises(ConfigError, match=r"loss\.normalization: .*got 'hybird' \(did you mean hybrid\?\)"):
        build_config(overrides={"loss.normalization": "hybird"})
