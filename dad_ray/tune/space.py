"""Search spaces: YAML files naming experiment config keys (dotted) and their distributions.

    base_preset: smoke                # or base_config: path/to/config.yaml (relative to the space file)
    overrides: {train.max_failures: 0}   # fixed dotted keys applied to every trial
    params:
      loss.lambda_lg: {uniform: [0.0, 1.0]}
      optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
      loss.normalization: {choice: [global, hybrid, local, none]}
      data.crop_size: {randint: [56, 112], multiple_of: 14}    # inclusive bounds; sampled from the multiples
      loss.lambda_feat: {grid: [0.0, 1.0]}
    variants:                         # optional: a grid over whole override sets (e.g. "SC only" vs "SC+LG")
      - {loss.lambda_lg: 0.0}
      - {loss.lambda_lg: 0.5}
    metric: val_abs_rel
    mode: min
    num_samples: 2                    # repeats of the grid (random params are drawn per sample)
    scheduler: {type: asha, time_attr: step, max_t: 300, grace_period: 50, reduction_factor: 3}
    resources: {cpus_per_trial: 0.01, gpus_per_trial: 0}
    max_concurrent_trials: null       # null = cluster GPUs / GPUs per trial, or what fits the CPUs
    seed: 0

:func:`load_space` checks every key and every value each distribution can produce against the experiment schema
(the config is built for every choice/grid value/variant and for both ends of every range), so a bad space fails
in a second, before Ray starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dad_ray.config import ConfigError, ExperimentConfig, all_keys, build_config, load_preset_dict
from dad_ray.config.core import close_matches, field_types, set_dotted
from dad_ray.config.loader import load_config_file_dict

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "grid", "randint")
TOP_KEYS = (
    "base_preset",
    "base_config",
    "overrides",
    "params",
    "variants",
    "metric",
    "mode",
    "num_samples",
    "scheduler",
    "resources",
    "max_concurrent_trials",
    "seed",
    "time_budget_s",
)
SCHEDULER_KEYS = ("type", "time_attr", "max_t", "grace_period", "reduction_factor")
TIME_ATTRS = ("step", "val_round")
METRICS = ("val_abs_rel", "val_d1", "val_sq_rel", "val_rmse", "val_rmse_log", "val_log10", "val_silog", "loss")
# keys the driver sets per trial; a space must not vary them
RESERVED = ("train.name", "train.output")


@dataclass(frozen=True)
class Param:
    key: str
    kind: str  # one of DISTRIBUTIONS
    values: tuple[Any, ...]  # choice/grid values, or (lo, hi) for ranges
    multiple_of: int | float | None = None

    def candidates(self) -> list[Any]:
        """Every value the distribution can produce that matters for validation (all values, or both ends)."""
        if self.kind in ("choice", "grid"):
            return list(self.values)
        if self.kind == "randint" and self.multiple_of:
            return list(range(int(self.values[0]), int(self.values[1]) + 1, int(self.multiple_of)))
        return [self.values[0], self.values[1]]

    def tune_domain(self) -> Any:
        from ray import tune

        lo_hi = self.values
        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "uniform":
            return tune.quniform(*lo_hi, self.multiple_of) if self.multiple_of else tune.uniform(*lo_hi)
        if self.kind == "loguniform":
            return tune.loguniform(*lo_hi)
        if self.multiple_of:  # randint over the multiples only
            return tune.choice(self.candidates())
        return tune.randint(int(lo_hi[0]), int(lo_hi[1]) + 1)  # inclusive upper bound


@dataclass(frozen=True)
class SchedulerSpec:
    type: str = "asha"
    time_attr: str = "step"
    max_t: int = 12
    grace_period: int = 6
    reduction_factor: float = 2.0


@dataclass(frozen=True)
class SearchSpace:
    name: str  # the experiment name (file stem unless given)
    base: dict[str, Any]  # plain config dict of base preset/file + overrides
    params: tuple[Param, ...]
    variants: tuple[dict[str, Any], ...] = ()
    metric: str = "val_abs_rel"
    mode: str = "min"
    num_samples: int = 1
    scheduler: SchedulerSpec | None = field(default_factory=SchedulerSpec)
    cpus_per_trial: float = 0.01
    gpus_per_trial: float = 0.0
    max_concurrent_trials: int | None = None
    seed: int = 0
    time_budget_s: float | None = None
    source: dict[str, Any] = field(default_factory=dict)  # the YAML as read (saved with the experiment)

    @property
    def searched_keys(self) -> list[str]:
        """Every dotted key a trial may vary (params, then keys of the variants), in order."""
        keys = [p.key for p in self.params]
        for variant in self.variants:
            keys += [k for k in variant if k not in keys]
        return keys

    def base_config(self) -> ExperimentConfig:
        return build_config(overrides=_flat_items(self.base))

    def trial_config(self, sampled: dict[str, Any], *, name: str, output: str) -> ExperimentConfig:
        """base + overrides + sampled params (+ the variant selected by ``sampled['variant']``) + name/output."""
        return build_config(overrides=self.trial_overrides(sampled, name=name, output=output))

    def trial_overrides(self, sampled: dict[str, Any], *, name: str, output: str) -> dict[str, Any]:
        values = dict(_flat_items(self.base))
        for key, value in sampled.items():
            if key == "variant":
                values.update(self.variants[int(value)])
            else:
                values[key] = value
        values.update({"train.name": name, "train.output": output})
        return values

    def param_space(self) -> dict[str, Any]:
        from ray import tune

        space = {p.key: p.tune_domain() for p in self.params}
        if self.variants:
            space["variant"] = tune.grid_search(list(range(len(self.variants))))
        return space

    def grid_size(self) -> int:
        n = len(self.variants) or 1
        for p in self.params:
            if p.kind == "grid":
                n *= len(p.values)
        return n

    def total_trials(self) -> int:
        return self.grid_size() * self.num_samples


def _flat_items(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict → {dotted key: leaf} (lists are leaves, as in presets)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flat_items(v, key))
        else:
            out[key] = v
    return out


def _err(where: str, message: str) -> ConfigError:
    return ConfigError(f"{where}: {message}")


def _check_key(key: Any, where: str, valid: dict[str, Any]) -> str:
    if not isinstance(key, str):
        raise _err(where, f"config keys must be dotted strings, got {key!r}")
    if key in RESERVED:
        raise _err(where, f"'{key}' is set by the tune driver for each trial and cannot be searched or overridden")
    if key in valid:
        return key
    # list items are addressed by index (model.teachers.0.weights): walk the schema through tuples of configs
    tp: Any = ExperimentConfig
    for part in key.split("."):
        if part.isdigit() and typing.get_origin(tp) is tuple:
            tp = typing.get_args(tp)[0]
            continue
        fields = field_types(tp) if dataclasses.is_dataclass(tp) else {}
        if part not in fields:
            raise _err(where, f"unknown config key '{key}'{close_matches(key, valid)}")
        tp = fields[part]
    return key


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _err(where, f"expected a finite number, got {value!r}")
    return value


def _parse_param(key: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, dict):
        raise _err(where, f"expected a mapping like {{choice: [...]}}, got {spec!r}")
    kinds = [k for k in spec if k in DISTRIBUTIONS]
    extra = [k for k in spec if k not in DISTRIBUTIONS and k != "multiple_of"]
    if extra:
        raise _err(where, f"unknown field '{extra[0]}'{close_matches(str(extra[0]), DISTRIBUTIONS + ('multiple_of',))}")
    if len(kinds) != 1:
        raise _err(where, f"exactly one distribution of {', '.join(DISTRIBUTIONS)} is needed, got {kinds or 'none'}")
    kind = kinds[0]
    raw = spec[kind]
    multiple_of = spec.get("multiple_of")
    if multiple_of is not None:
        _number(multiple_of, f"{where}.multiple_of")
        if multiple_of <= 0:
            raise _err(f"{where}.multiple_of", f"must be > 0, got {multiple_of}")
        if kind not in ("randint", "uniform"):
            raise _err(f"{where}.multiple_of", f"applies to randint and uniform only, not {kind}")
    if kind in ("choice", "grid"):
        if not isinstance(raw, list) or not raw:
            raise _err(f"{where}.{kind}", f"expected a non-empty list, got {raw!r}")
        return Param(key, kind, tuple(raw))
    if not isinstance(raw, list) or len(raw) != 2:
        raise _err(f"{where}.{kind}", f"expected [low, high], got {raw!r}")
    lo, hi = (_number(v, f"{where}.{kind}") for v in raw)
    if not lo < hi:
        raise _err(f"{where}.{kind}", f"low must be < high, got [{lo}, {hi}]")
    if kind == "loguniform" and lo <= 0:
        raise _err(f"{where}.{kind}", f"loguniform needs low > 0, got {lo}")
    if kind == "randint":
        if not (isinstance(lo, int) and isinstance(hi, int)):
            raise _err(f"{where}.{kind}", f"randint bounds must be integers, got [{lo}, {hi}]")
        if multiple_of is not None:
            if not isinstance(multiple_of, int):
                raise _err(f"{where}.multiple_of", f"must be an integer for randint, got {multiple_of!r}")
            if lo % multiple_of or hi % multiple_of:
                raise _err(f"{where}.{kind}", f"bounds must be multiples of {multiple_of}, got [{lo}, {hi}]")
    if kind == "uniform" and multiple_of is not None:
        for bound in (lo, hi):
            if not math.isclose(bound / multiple_of, round(bound / multiple_of), abs_tol=1e-9):
                raise _err(f"{where}.{kind}", f"bounds must be multiples of {multiple_of}, got [{lo}, {hi}]")
    return Param(key, kind, (lo, hi), multiple_of)


def _validate_values(space: SearchSpace, path: str) -> None:
    """Build the ExperimentConfig for every candidate value of every param and every variant."""
    base = dict(_flat_items(space.base))
    try:
        build_config(overrides=base)
    except ConfigError as err:
        raise ConfigError(f"{path}: base config + overrides: {err}") from None
    # each param value on its own (errors name the param), then every combination of the discrete ones
    checks: list[tuple[str, dict[str, Any]]] = []
    for p in space.params:
        for value in p.candidates():
            checks.append((f"params.{p.key}={value!r}", {p.key: value}))
    for i, variant in enumerate(space.variants):
        checks.append((f"variants[{i}]", dict(variant)))
    for where, values in checks:
        try:
            build_config(overrides={**base, **values})
        except ConfigError as err:
            raise ConfigError(f"{path}: {where}: {err}") from None
    # combinations (cross-field rules such as checkpoint_every % val_every), capped to keep loading instant
    axes = [[(p.key, v) for v in p.candidates()] for p in space.params]
    if space.variants:
        axes.append([("variant", i) for i in range(len(space.variants))])
    if math.prod(len(a) for a in axes) <= 4096:
        for combo in itertools.product(*axes):
            values = {}
            for key, value in combo:
                values.update(space.variants[value] if key == "variant" else {key: value})
            try:
                build_config(overrides={**base, **values})
            except ConfigError as err:
                shown = ", ".join(f"{k}={v!r}" for k, v in combo)
                raise ConfigError(f"{path}: the combination {shown}: {err}") from None


def parse_space(data: dict[str, Any], *, path: str = "<space>", name: str | None = None) -> SearchSpace:
    """Validate a search-space mapping (see the module docstring) into a :class:`SearchSpace`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a search space must be a mapping, got {type(data).__name__}")
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise ConfigError(
            f"{path}: unknown search-space key '{unknown[0]}'{close_matches(str(unknown[0]), TOP_KEYS)}; "
            f"valid keys: {', '.join(TOP_KEYS)}"
        )
    valid = all_keys(ExperimentConfig)

    if "base_preset" in data and "base_config" in data:
        raise ConfigError(f"{path}: give base_preset or base_config, not both")
    if "base_config" in data:
        base_file = Path(data["base_config"])
        if not base_file.is_absolute() and path != "<space>":
            base_file = Path(path).parent / base_file
        base = load_config_file_dict(base_file)
    else:
        base = load_preset_dict(str(data.get("base_preset", "default")))
    overrides = data.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{path}: overrides must be a mapping of dotted keys to values")
    for key, value in overrides.items():
        set_dotted(base, _check_key(key, f"{path}: overrides", valid), value)

    params_raw = data.get("params") or {}
    if not isinstance(params_raw, dict):
        raise ConfigError(f"{path}: params must be a mapping of dotted keys to distributions")
    params = tuple(
        _parse_param(_check_key(k, f"{path}: params", valid), v, f"{path}: params.{k}") for k, v in params_raw.items()
    )
    variants_raw = data.get("variants") or []
    if not isinstance(variants_raw, list) or not all(isinstance(v, dict) and v for v in variants_raw):
        raise ConfigError(f"{path}: variants must be a list of non-empty mappings of dotted keys to values")
    for i, variant in enumerate(variants_raw):
        for key in variant:
            _check_key(key, f"{path}: variants[{i}]", valid)
            if key in params_raw:
                raise ConfigError(f"{path}: variants[{i}]: '{key}' is also in params; vary it in one place")
    if not params and not variants_raw:
        raise ConfigError(f"{path}: nothing to search: give params and/or variants")

    metric = data.get("metric", "val_abs_rel")
    if metric not in METRICS:
        raise ConfigError(f"{path}: metric: unknown metric '{metric}'{close_matches(str(metric), METRICS)}")
    mode = data.get("mode", "min")
    if mode not in ("min", "max"):
        raise ConfigError(f"{path}: mode: expected 'min' or 'max', got {mode!r}")
    num_samples = data.get("num_samples", 1)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"{path}: num_samples: expected an integer >= 1, got {num_samples!r}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{path}: seed: expected an integer, got {seed!r}")

    scheduler = _parse_scheduler(data.get("scheduler", {"type": "asha"}), path)
    resources = data.get("resources") or {}
    if not isinstance(resources, dict):
        raise ConfigError(f"{path}: resources must be a mapping")
    bad = [k for k in resources if k not in ("cpus_per_trial", "gpus_per_trial")]
    if bad:
        raise ConfigError(
            f"{path}: resources: unknown key '{bad[0]}'"
            + close_matches(str(bad[0]), ("cpus_per_trial", "gpus_per_trial"))
        )
    cpus = _number(resources.get("cpus_per_trial", 0.01), f"{path}: resources.cpus_per_trial")
    gpus = _number(resources.get("gpus_per_trial", 0), f"{path}: resources.gpus_per_trial")
    if cpus <= 0:
        raise ConfigError(f"{path}: resources.cpus_per_trial: must be > 0 (Ray rejects 0), got {cpus}")
    if gpus < 0:
        raise ConfigError(f"{path}: resources.gpus_per_trial: must be >= 0, got {gpus}")
    concurrent = data.get("max_concurrent_trials")
    if concurrent is not None and (isinstance(concurrent, bool) or not isinstance(concurrent, int) or concurrent < 1):
        raise ConfigError(f"{path}: max_concurrent_trials: expected an integer >= 1 or null, got {concurrent!r}")
    budget = data.get("time_budget_s")
    if budget is not None and _number(budget, f"{path}: time_budget_s") <= 0:
        raise ConfigError(f"{path}: time_budget_s: must be > 0, got {budget}")

    space = SearchSpace(
        name=name or (Path(path).stem if path != "<space>" else "search"),
        base=base,
        params=params,
        variants=tuple(dict(v) for v in variants_raw),
        metric=metric,
        mode=mode,
        num_samples=num_samples,
        scheduler=scheduler,
        cpus_per_trial=float(cpus),
        gpus_per_trial=float(gpus),
        max_concurrent_trials=concurrent,
        seed=seed,
        time_budget_s=budget,
        source=data,
    )
    _validate_values(space, path)
    if scheduler is not None:
        cfg = space.base_config()
        horizon = cfg.optim.max_steps if scheduler.time_attr == "step" else cfg.optim.max_steps // cfg.train.val_every
        if scheduler.max_t > horizon:
            raise ConfigError(
                f"{path}: scheduler.max_t: {scheduler.max_t} {scheduler.time_attr}s is beyond the base config's "
                f"training length ({horizon}); ASHA could never reach it"
            )
    return space


def _parse_scheduler(raw: Any, path: str) -> SchedulerSpec | None:
    if raw is None or raw == {"type": "none"} or raw == "none":
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: scheduler must be a mapping like {{type: asha, ...}} or null")
    bad = [k for k in raw if k not in SCHEDULER_KEYS]
    if bad:
        raise ConfigError(f"{path}: scheduler: unknown key '{bad[0]}'{close_matches(str(bad[0]), SCHEDULER_KEYS)}")
    if raw.get("type", "asha") != "asha":
        raise ConfigError(f"{path}: scheduler.type: only 'asha' (or scheduler: null) is supported, got {raw['type']!r}")
    spec = SchedulerSpec(**{k: v for k, v in raw.items() if k != "type"})
    if spec.time_attr not in TIME_ATTRS:
        raise ConfigError(
            f"{path}: scheduler.time_attr: expected one of {', '.join(TIME_ATTRS)}, got {spec.time_attr!r}"
            f"{close_matches(str(spec.time_attr), TIME_ATTRS)}"
        )
    for key in ("max_t", "grace_period"):
        value = getattr(spec, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{path}: scheduler.{key}: expected an integer >= 1, got {value!r}")
    if spec.grace_period > spec.max_t:
        raise ConfigError(f"{path}: scheduler.grace_period: must be <= max_t ({spec.max_t}), got {spec.grace_period}")
    if _number(spec.reduction_factor, f"{path}: scheduler.reduction_factor") <= 1:
        raise ConfigError(f"{path}: scheduler.reduction_factor: must be > 1, got {spec.reduction_factor}")
    return spec


def resolve_space_path(name_or_path: str | os.PathLike) -> Path:
    """A path to a YAML file, or the stem of a file shipped in ``search_spaces/``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = Path(__file__).resolve().parents[2] / "search_spaces"
    candidate = shipped / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    names = sorted(p.stem for p in shipped.glob("*.yaml"))
    hint = close_matches(str(name_or_path), names)
    raise ConfigError(f"search space '{name_or_path}' not found{hint}; shipped: {', '.join(names)}")


def load_space(name_or_path: str | os.PathLike, *, name: str | None = None) -> SearchSpace:
    path = resolve_space_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"search space {path} is not valid YAML: {err}") from None
    return parse_space(data, path=str(path), name=name)


def space_to_yaml(space: SearchSpace) -> str:
    return yaml.safe_dump(space.source, sort_keys=False)


__all__ = ["Param", "SchedulerSpec", "SearchSpace", "load_space", "parse_space", "resolve_space_path"]
