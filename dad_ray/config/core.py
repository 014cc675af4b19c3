"""Generic machinery for frozen, typed, validated config dataclasses.

A config class is a ``@dataclass(frozen=True)`` whose fields are annotated with ``int``, ``float``, ``str``,
``bool``, ``Any``, ``Literal[...]``, ``X | None``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``dict[str, X]``, a union of
those, or another config dataclass. ``from_dict`` builds one from the plain dict that YAML, the command line or Ray
hands us, checking every key and type and naming the dotted key on failure; ``to_dict`` turns it back into plain
YAML/JSON types. Range checks live in each class's ``__post_init__`` and raise :class:`ConfigError` via :func:`check`
(a key given there without its parents' prefix gets it prepended).

A class may set ``KEY_NOUN`` (a plain class attribute, not a field) to word its unknown-key errors for a file format
of its own: ``"<prefix>: unknown <noun> 'name' (did you mean …?)"`` instead of ``"unknown config key 'a.b.name'"``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key is invalid. The message names the dotted key."""


def check(condition: bool, key: str, message: str) -> None:
    """Raise ``ConfigError('<key>: <message>')`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


def close_matches(name: str, valid: typing.Iterable[str]) -> str:
    """A human hint: ' (did you mean a, b?)' or ''."""
    matches = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(matches)}?)" if matches else ""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return "list" if args[0] is Any else f"list of {_type_name(args[0])}"
        return "list [" + ", ".join(_type_name(a) for a in args) + "]"
    if origin is dict:
        key_tp, value_tp = get_args(tp)
        return f"mapping of {_type_name(key_tp)} to {_type_name(value_tp)}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert a plain value to type ``tp`` or raise ConfigError naming ``key``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {type(value).__name__} {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin is Literal:
        allowed = get_args(tp)
        bool_ok = any(isinstance(a, bool) for a in allowed)
        if value in allowed and (bool_ok or not isinstance(value, bool)):
            return value
        hint = close_matches(value, [a for a in allowed if isinstance(a, str)]) if isinstance(value, str) else ""
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}{hint}")
    if origin in (Union, types.UnionType):
        configs = [a for a in get_args(tp) if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and configs:  # a mapping can only be the config class: report its own error
            return _convert(value, configs[0], key)
        for arg in get_args(tp):
            try:
                return _convert(value, arg, key)
            except ConfigError:
                continue
        words = [a for lit in get_args(tp) if get_origin(lit) is Literal for a in get_args(lit) if isinstance(a, str)]
        hint = close_matches(value, words) if isinstance(value, str) else ""  # 'hybird' in Literal[...] | None
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}{hint}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values ({_type_name(tp)}), got {len(value)}: {value!r}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        key_tp, value_tp = get_args(tp)
        out = {}
        for k, v in value.items():
            if key_tp is str and not isinstance(k, str):
                raise ConfigError(f"{key}: keys must be strings, got {type(k).__name__} {k!r}")
            out[k] = _convert(v, value_tp, f"{key}.{k}")
        return out
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected bool (true/false), got {type(value).__name__} {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected int, got {type(value).__name__} {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected float, got {type(value).__name__} {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected str, got {type(value).__name__} {value!r}")
    raise TypeError(f"{key}: unsupported config field type {tp!r}")


def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a config dataclass's fields."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build config ``cls`` from a plain dict; missing keys take their defaults, unknown keys are errors."""
    data = dict(data or {})
    types_ = field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise _unknown_key(cls, unknown[0], list(types_), prefix)
    kwargs = {}
    for name, tp in types_.items():
        if name in data:
            key = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _convert(data[name], tp, key)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        if prefix and not str(err).startswith(prefix):
            raise ConfigError(f"{prefix}.{err}") from None
        raise


def _unknown_key(cls: type, name: str, valid: list[str], prefix: str) -> ConfigError:
    hint = close_matches(name, valid)
    noun = getattr(cls, "KEY_NOUN", None)
    if noun:  # a file format of its own (e.g. a search space): its keys are not experiment config keys
        where = f"{prefix}: " if prefix else ""
        return ConfigError(f"{where}unknown {noun} '{name}'{hint}; valid {noun}s: {', '.join(valid)}")
    where = f"{prefix}." if prefix else ""
    return ConfigError(
        f"unknown config key '{where}{name}'{hint}; "
        f"valid keys{' under ' + prefix if prefix else ''}: {', '.join(sorted(valid))}"
    )


def to_dict(cfg: Any) -> Any:
    """Plain-Python (YAML/JSON/Ray-safe) form of a config: dataclasses → dicts, tuples → lists."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def all_keys(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every dotted leaf key of a config class with its type (nested dataclasses expanded)."""
    out: dict[str, Any] = {}
    for name, tp in field_types(cls).items():
        key = f"{prefix}.{name}" if prefix else name
        if dataclasses.is_dataclass(tp):
            out.update(all_keys(tp, key))
        else:
            out[key] = tp
    return out


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """``tree['a']['b'] = value`` for ``dotted='a.b'``; list items are addressed by index (``teachers.0.name``)."""
    parts = dotted.split(".")
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            idx = int(part)
            while len(node) <= idx:
                node.append({})
            node = node[idx]
            continue
        if part not in node or not isinstance(node[part], (dict, list)):
            node[part] = [] if nxt.isdigit() else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        idx = int(last)
        while len(node) <= idx:
            node.append({})
        node[idx] = value
    else:
        node[last] = value


def get_dotted(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``override`` wins, lists are replaced whole."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def replace(cfg: T, **changes: Any) -> T:
    """``dataclasses.replace`` that re-runs validation (frozen configs are rebuilt, never mutated)."""
    return dataclasses.replace(cfg, **changes)
