"""Presets, config files and command-line overrides → one validated :class:`ExperimentConfig`.

Precedence (lowest first): dataclass defaults < ``--preset NAME`` < ``--config FILE.yaml`` < ``--set key=value``
(and the job's shortcut flags such as ``--num-workers``). Every job uses :func:`add_config_args` and
:func:`config_from_args`, so the flags are the same everywhere.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from dad_ray.config.core import ConfigError, close_matches, deep_merge, from_dict, set_dotted, to_dict
from dad_ray.config.schema import ExperimentConfig

BASE_KEY = "base"  # a preset or config file may name a preset it extends


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("dad_ray.config.presets").iterdir() if p.name.endswith(".yaml"))


def read_yaml_mapping(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The mapping a YAML file holds; a missing file, bad YAML or another top level is a ConfigError naming
    ``what`` (e.g. ``"preset"``) and the path."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def _resolve_bases(data: dict[str, Any], seen: tuple[str, ...]) -> dict[str, Any]:
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if base in seen:
        raise ConfigError(f"preset inheritance cycle: {' -> '.join(seen + (base,))}")
    return deep_merge(load_preset_dict(base, seen), data)


def load_preset_dict(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The plain dict of a shipped preset, with its ``base`` chain merged in."""
    names = preset_names()
    if name not in names:
        raise ConfigError(f"unknown preset '{name}'{close_matches(name, names)}; available: {', '.join(names)}")
    path = resources.files("dad_ray.config.presets") / f"{name}.yaml"
    with resources.as_file(path) as p:
        return _resolve_bases(read_yaml_mapping(p, "preset"), seen + (name,))


def load_config_file_dict(path: str | os.PathLike) -> dict[str, Any]:
    return _resolve_bases(read_yaml_mapping(path, "config file"), ())


def parse_override(text: str) -> tuple[str, Any]:
    """``'loss.lambda_lg=0.5'`` → ``('loss.lambda_lg', 0.5)``; the value is parsed as YAML (``[1, 2]``, ``true``)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value, e.g. loss.lambda_lg=0.5")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def build_config(
    preset: str | None = None,
    config_file: str | os.PathLike | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    cls: type = ExperimentConfig,
) -> Any:
    """Compose preset < config file < overrides and validate into ``cls``."""
    data: dict[str, Any] = load_preset_dict(preset) if preset else {}
    if config_file:
        data = deep_merge(data, load_config_file_dict(config_file))
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides or [])
    for key, value in items:
        set_dotted(data, key, value)
    return from_dict(cls, data)


def config_to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config atomically (temp file + rename); the file alone reproduces the run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(config_to_yaml(cfg))
    os.replace(tmp, path)
    return path


def load_config(path: str | os.PathLike, cls: type = ExperimentConfig) -> Any:
    return from_dict(cls, load_config_file_dict(path))


# ---------------------------------------------------------------------------------------------------------------- CLI


def add_config_args(parser: argparse.ArgumentParser, shortcuts: dict[str, tuple[str, type, str]] | None = None) -> None:
    """Add ``--preset``, ``--config``, ``--set`` and shortcut flags (``flag -> (dotted key, type, help)``)."""
    group = parser.add_argument_group("configuration (precedence: preset < config file < --set and shortcut flags)")
    group.add_argument("--preset", help=f"a shipped preset: {', '.join(preset_names())}")
    group.add_argument("--config", help="a YAML config file (e.g. a run's config.yaml or analyze's best_config.yaml)")
    add_override_arg(group)
    group.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.set_defaults(_shortcuts=shortcuts or {})
    for flag, (key, tp, help_) in (shortcuts or {}).items():
        if tp is bool:
            group.add_argument(flag, action="store_const", const=True, default=None, help=f"{help_} (sets {key})")
        else:
            group.add_argument(flag, type=tp, default=None, help=f"{help_} (sets {key})")


def add_override_arg(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    help_text: str = "override one config value by dotted key, e.g. --set loss.lambda_lg=0.5 (repeatable)",
) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``: strings that :func:`parse_override` reads."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help_text)


def _arg_sources(args: argparse.Namespace, default_preset: str | None) -> tuple[str | None, Any, dict[str, Any]]:
    """(preset, config file, overrides) of a command line made by :func:`add_config_args`."""
    overrides = [parse_override(o) for o in args.overrides]
    for flag, (key, _tp, _help) in args._shortcuts.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            overrides.append((key, value))
    return args.preset or (default_preset if not args.config else None), args.config, dict(overrides)


def config_from_args(args: argparse.Namespace, default_preset: str | None = None, cls: type = ExperimentConfig) -> Any:
    preset, config_file, overrides = _arg_sources(args, default_preset)
    return build_config(preset, config_file, overrides, cls=cls)


def explicit_keys(args: argparse.Namespace, default_preset: str | None = None) -> set[str]:
    """The dotted keys a command line sets — in its preset, its config file, ``--set`` or a shortcut flag — as
    opposed to the dataclass defaults: values a job must not replace by ones it reads elsewhere (e.g.
    ``jobs/evaluate.py`` takes the input size from the checkpoint unless ``eval.input_size`` is explicit)."""
    preset, config_file, overrides = _arg_sources(args, default_preset)
    data: dict[str, Any] = load_preset_dict(preset) if preset else {}
    if config_file:
        data = deep_merge(data, load_config_file_dict(config_file))

    def leaves(tree: dict[str, Any], prefix: str) -> set[str]:
        out = set()
        for k, v in tree.items():
            out |= leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
        return out

    return leaves(data, "") | set(overrides)
