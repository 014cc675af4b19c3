"""Search spaces: YAML files naming experiment config keys (dotted) and their distributions.

    base_preset: smoke                # or base_config: path/to/config.yaml (relative to the space file)
    overrides: {train.max_failures: 0}   # fixed dotted keys applied to every trial
    params:
      loss.lambda_lg: {uniform: [0.0, 1.0]}
      optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
      loss.normalization: {choice: [global, hybrid, local, none]}
      data.crop_size: {randint: [56, 112], multiple_of: 14}    # inclusive bounds; sampled from the multiples
      loss.lambda_feat: {grid: [0.0, 1.0]}
    variants:                         # optional: a grid over whole override sets (e.g. "SC only" vs "SC+LG"),
      - {name: sc_only, loss.lambda_lg: 0.0}   # each optionally named ("name", not a config key: unique, shown by
      - {name: sc_lg, loss.lambda_lg: 0.5}     # jobs/analyze.py and used by its paper layout)
    metric: val_abs_rel
    mode: min
    num_samples: 2                    # repeats of the grid (random params are drawn per sample)
    scheduler: {type: asha, time_attr: step, max_t: 300, grace_period: 50, reduction_factor: 3}
    resources: {cpus_per_trial: 0.01, gpus_per_trial: 0}
    max_concurrent_trials: null       # null = cluster GPUs / GPUs per trial, or what fits the CPUs
    seed: 0
    warm_start_steps: 0               # > 0: one shared distillation of the base config first (this many steps);
                                      # every trial starts from its student (model.student_weights, init full)

The file is read by the experiment config's own :func:`~dad_ray.config.core.from_dict` into :class:`SpaceFile`
(unknown keys with close-match hints, types, ranges), then resolved into a :class:`SearchSpace` whose base is an
:class:`~dad_ray.config.ExperimentConfig`. :func:`load_space` is the one way in (jobs, driver, benchmarks): a file
path or the name of a space shipped in ``dad_ray/tune/spaces/``, plus ``--set`` overrides. It checks every key and
every value each distribution can produce against the experiment schema (the config is built for every choice/grid
value/variant and for both ends of every range), so a bad space fails in a second, before Ray starts, with an error
that names the file and the key.
"""

from __future__ import annotations

import itertools
import math
import os
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from dad_ray.config import ConfigError, ExperimentConfig, from_dict, is_uri, load_preset_dict, set_dotted, to_dict
from dad_ray.config.core import all_keys, check, close_matches, field_types
from dad_ray.config.loader import load_config_file_dict, parse_override, read_yaml_mapping
from dad_ray.metrics import METRIC_KEYS

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "grid", "randint")
# what a trial reports that Tune can rank by: every validation metric (val_<key>) and the training loss
METRICS = tuple(f"val_{k}" for k in METRIC_KEYS) + ("loss",)
# keys the driver sets per trial; a space must not vary them
RESERVED = ("train.name", "train.output")
# keys whose null means "empty" (a YAML section whose entries are all commented out)
NULL_MEANS_EMPTY = ("overrides", "params", "variants", "resources")
VARIANT_NAME = "name"  # the one key of a variant that is not a config key: its label
SPACES_PACKAGE = "dad_ray.tune.spaces"
MAX_COMBINATIONS = 4096  # every combination of the discrete candidates is checked up to this many

Number = int | float  # kept as written (an int bound stays an int)


# -------------------------------------------------------------------------------------------------- the file format


@dataclass(frozen=True)
class Distribution:
    """One entry of ``params``: exactly one distribution (checked by :class:`SpaceFile`, which knows its key)."""

    KEY_NOUN = "field"

    choice: tuple[Any, ...] | None = None  # one of the values, at random
    uniform: tuple[Number, Number] | None = None  # [low, high]
    loguniform: tuple[Number, Number] | None = None  # [low, high], low > 0
    grid: tuple[Any, ...] | None = None  # every value: a grid axis (multiplies the trials)
    randint: tuple[int, int] | None = None  # [low, high], both inclusive
    multiple_of: Number | None = None  # randint/uniform: only multiples of it (the bounds must be multiples)

    @property
    def kinds(self) -> list[str]:
        return [k for k in DISTRIBUTIONS if getattr(self, k) is not None]

    def __post_init__(self) -> None:
        for kind in ("choice", "grid"):
            values = getattr(self, kind)
            check(values is None or len(values) > 0, kind, "expected a non-empty list, got []")
        for kind in ("uniform", "loguniform", "randint"):
            bounds = getattr(self, kind)
            if bounds is not None:
                lo, hi = bounds
                check(math.isfinite(lo) and math.isfinite(hi), kind, f"expected finite numbers, got [{lo}, {hi}]")
                check(lo < hi, kind, f"low must be < high, got [{lo}, {hi}]")
        if self.loguniform is not None:
            check(self.loguniform[0] > 0, "loguniform", f"loguniform needs low > 0, got {self.loguniform[0]}")
        if self.multiple_of is not None:
            self._check_multiple_of(self.multiple_of)

    def _check_multiple_of(self, m: Number) -> None:
        check(math.isfinite(m) and m > 0, "multiple_of", f"must be > 0, got {m}")
        other = [k for k in self.kinds if k not in ("randint", "uniform")]
        check(not other, "multiple_of", f"applies to randint and uniform only, not {other[0] if other else ''}")
        if self.randint is not None:
            check(isinstance(m, int), "multiple_of", f"must be an integer for randint, got {m!r}")
            lo, hi = self.randint
            check(lo % m == 0 and hi % m == 0, "randint", f"bounds must be multiples of {m}, got [{lo}, {hi}]")
        if self.uniform is not None:
            lo, hi = self.uniform
            multiples = all(math.isclose(b / m, round(b / m), abs_tol=1e-9) for b in (lo, hi))
            check(multiples, "uniform", f"bounds must be multiples of {m}, got [{lo}, {hi}]")


@dataclass(frozen=True)
class SchedulerSpec:
    """ASHA's settings (``scheduler: null`` or ``type: none``: every trial runs to the end)."""

    KEY_NOUN = "key"

    type: str = "asha"
    time_attr: Literal["step", "val_round"] = "step"  # optimizer steps, or validation rounds
    max_t: int = 12
    grace_period: int = 6
    reduction_factor: float = 2.0

    def __post_init__(self) -> None:
        check(
            self.type in ("asha", "none"), "type", f"only 'asha' (or scheduler: null) is supported, got {self.type!r}"
        )
        check(self.max_t >= 1, "max_t", f"expected an integer >= 1, got {self.max_t}")
        check(self.grace_period >= 1, "grace_period", f"expected an integer >= 1, got {self.grace_period}")
        check(
            self.grace_period <= self.max_t,
            "grace_period",
            f"must be <= max_t ({self.max_t}), got {self.grace_period}",
        )
        rf = self.reduction_factor
        check(math.isfinite(rf) and rf > 1, "reduction_factor", f"must be > 1, got {rf}")


@dataclass(frozen=True)
class ResourcesSpec:
    """What each trial's own function reserves (its Train workers reserve theirs through the experiment config)."""

    KEY_NOUN = "key"

    cpus_per_trial: float = 0.01
    gpus_per_trial: float = 0.0

    def __post_init__(self) -> None:
        cpus, gpus = self.cpus_per_trial, self.gpus_per_trial
        check(math.isfinite(cpus) and cpus > 0, "cpus_per_trial", f"must be > 0 (Ray rejects 0), got {cpus}")
        check(math.isfinite(gpus) and gpus >= 0, "gpus_per_trial", f"must be >= 0, got {gpus}")


@dataclass(frozen=True)
class SpaceFile:
    """A search-space YAML file as written (see the module docstring); :meth:`resolve` makes it a SearchSpace."""

    KEY_NOUN = "search-space key"

    base_preset: str | None = None  # a shipped preset (default: "default") ...
    base_config: str | None = None  # ... or a config file, relative to the space file
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted key -> value, for every trial
    params: dict[str, Distribution] = field(default_factory=dict)  # dotted key -> distribution
    variants: tuple[dict[str, Any], ...] = ()  # a grid over whole override sets
    metric: str = "val_abs_rel"
    mode: Literal["min", "max"] = "min"
    num_samples: int = 1
    scheduler: SchedulerSpec | Literal["none"] | None = field(default_factory=SchedulerSpec)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    max_concurrent_trials: int | None = None  # null = computed by the driver from the cluster
    seed: int = 0
    time_budget_s: float | None = None
    warm_start_steps: int = 0  # > 0: trials start from the student of one shared distillation of this many steps

    def __post_init__(self) -> None:
        check(self.warm_start_steps >= 0, "warm_start_steps", f"must be >= 0, got {self.warm_start_steps}")
        check(
            self.base_preset is None or self.base_config is None,
            "base_config",
            "give base_preset or base_config, not both",
        )
        valid = all_keys(ExperimentConfig)
        for key in self.overrides:
            _check_key(key, "overrides", valid)
        for key, dist in self.params.items():
            _check_key(key, "params", valid)
            kinds = dist.kinds
            needed = f"exactly one distribution of {', '.join(DISTRIBUTIONS)} is needed, got {kinds or 'none'}"
            check(len(kinds) == 1, f"params.{key}", needed)
        for i, variant in enumerate(self.variants):
            keys = [k for k in variant if k != VARIANT_NAME]
            check(len(keys) > 0, f"variants[{i}]", "expected a non-empty mapping of dotted keys to values")
            for key in keys:
                _check_key(key, f"variants[{i}]", valid)
                check(key not in self.params, f"variants[{i}]", f"'{key}' is also in params; vary it in one place")
        names = [v[VARIANT_NAME] for v in self.variants if VARIANT_NAME in v]
        for i, variant in enumerate(self.variants):
            name = variant.get(VARIANT_NAME)
            check(name is None or (isinstance(name, str) and name != ""), f"variants[{i}].name", "must be a string")
            check(name is None or names.count(name) == 1, f"variants[{i}].name", f"'{name}' names two variants")
        check(bool(self.params or self.variants), "params", "nothing to search: give params and/or variants")
        _check_disjoint(list(self.params) + [k for v in self.variants for k in v if k != VARIANT_NAME])
        check(self.metric in METRICS, "metric", f"unknown metric '{self.metric}'{close_matches(self.metric, METRICS)}")
        check(self.num_samples >= 1, "num_samples", f"expected an integer >= 1, got {self.num_samples}")
        concurrent = self.max_concurrent_trials
        at_least_one = f"expected an integer >= 1 or null, got {concurrent}"
        check(concurrent is None or concurrent >= 1, "max_concurrent_trials", at_least_one)
        budget = self.time_budget_s
        check(budget is None or (math.isfinite(budget) and budget > 0), "time_budget_s", f"must be > 0, got {budget}")

    def _base_file(self, path: str) -> str | Path:
        """The local file ``base_config`` names; relative to the space file at ``path`` (a local path or a URI, e.g.
        the ``space.yaml`` saved into an ``s3://…`` experiment: then the base is fetched from beside it)."""
        if is_uri(self.base_config):
            return self._fetched(self.base_config)
        base_file = Path(self.base_config)
        if base_file.is_absolute() or path == "<space>":
            return base_file
        if is_uri(path):
            from dad_ray.data import storage

            return self._fetched(storage.join(storage.parent(path), self.base_config))
        return Path(path).parent / base_file

    @staticmethod
    def _fetched(uri: str) -> str:
        import tempfile

        from dad_ray.data import storage

        try:
            return storage.local_copy(uri, tempfile.mkdtemp(prefix="dadray-space-base-"))
        except FileNotFoundError as err:
            raise ConfigError(str(err)) from None

    def base_dict(self, path: str) -> dict[str, Any]:
        """The plain config dict of the base preset or file with ``overrides`` set on it."""
        try:
            if self.base_config is not None:
                base = load_config_file_dict(self._base_file(path))
            else:
                base = load_preset_dict(self.base_preset or "default")
        except ConfigError as err:
            raise ConfigError(f"{'base_config' if self.base_config is not None else 'base_preset'}: {err}") from None
        for key, value in self.overrides.items():
            set_dotted(base, key, value)
        return base

    def resolve(self, *, path: str, name: str | None, source: dict[str, Any]) -> SearchSpace:
        base_dict = self.base_dict(path)
        try:
            base = from_dict(ExperimentConfig, base_dict)
        except ConfigError as err:
            raise ConfigError(f"base config + overrides: {err}") from None
        scheduler = self.scheduler if isinstance(self.scheduler, SchedulerSpec) else None
        return SearchSpace(
            name=name or (Path(path).stem if path != "<space>" else "search"),
            base=base,
            params=tuple(Param.of(key, dist) for key, dist in self.params.items()),
            variants=self.variants,
            metric=self.metric,
            mode=self.mode,
            num_samples=self.num_samples,
            scheduler=None if scheduler is None or scheduler.type == "none" else scheduler,
            cpus_per_trial=self.resources.cpus_per_trial,
            gpus_per_trial=self.resources.gpus_per_trial,
            max_concurrent_trials=self.max_concurrent_trials,
            seed=self.seed,
            time_budget_s=self.time_budget_s,
            warm_start_steps=self.warm_start_steps,
            source=source,
            path=path,
        )


def _check_key(key: str, where: str, valid: dict[str, Any]) -> None:
    """``key`` names a field of the experiment config (list items by index: ``model.teachers.0.weights``)."""
    reserved = f"'{key}' is set by the tune driver for each trial and cannot be searched or overridden"
    check(key not in RESERVED, where, reserved)
    if key in valid:
        return
    tp: Any = ExperimentConfig  # walk the schema through tuples of configs
    for part in key.split("."):
        if part.isdigit() and typing.get_origin(tp) is tuple:
            tp = typing.get_args(tp)[0]
            continue
        fields = field_types(tp) if is_dataclass(tp) else {}
        check(part in fields, where, f"unknown config key '{key}'{close_matches(key, valid)}")
        tp = fields[part]


def _check_disjoint(keys: list[str]) -> None:
    """No searched key inside another (``model.teachers`` and ``model.teachers.0.weights``): which one wins would
    depend on the order they are set in."""
    for a, b in itertools.permutations(dict.fromkeys(keys), 2):
        check(
            not b.startswith(a + "."),
            "searched keys",
            f"'{b}' lies inside '{a}', which is searched too; vary one of them",
        )


# ----------------------------------------------------------------------------------------------- the resolved space


@dataclass(frozen=True)
class Param:
    key: str
    kind: str  # one of DISTRIBUTIONS
    values: tuple[Any, ...]  # choice/grid values, or (lo, hi) for ranges
    multiple_of: int | float | None = None

    @classmethod
    def of(cls, key: str, dist: Distribution) -> Param:
        (kind,) = dist.kinds
        return cls(key, kind, tuple(getattr(dist, kind)), dist.multiple_of)

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
class SearchSpace:
    name: str  # the experiment name (file stem unless given)
    base: ExperimentConfig  # base preset/file + overrides: what every trial starts from
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
    warm_start_steps: int = 0  # see SpaceFile; the driver runs it and points every trial's student at its result
    source: dict[str, Any] = field(default_factory=dict)  # the YAML as read, with --set overrides (saved with runs)
    path: str = "<space>"  # the file it was read from

    @property
    def searched_keys(self) -> list[str]:
        """Every dotted key a trial may vary (params, then keys of the variants), in order."""
        keys = [p.key for p in self.params]
        for variant in self.variants:
            keys += [k for k in variant if k not in keys and k != VARIANT_NAME]
        return keys

    def base_config(self) -> ExperimentConfig:
        return self.base

    def config_with(self, values: Mapping[str, Any]) -> ExperimentConfig:
        """The base config with ``values`` (dotted key -> value) set on it, validated."""
        tree = to_dict(self.base)
        for key, value in values.items():
            set_dotted(tree, key, value)
        return from_dict(ExperimentConfig, tree)

    def trial_values(self, sampled: Mapping[str, Any]) -> dict[str, Any]:
        """Tune's sampled config -> dotted key -> value (the variant selected by ``sampled['variant']`` expanded)."""
        values: dict[str, Any] = {}
        for key, value in sampled.items():
            values.update(self.variant_values(int(value)) if key == "variant" else {key: value})
        return values

    def variant_values(self, index: int) -> dict[str, Any]:
        """Variant ``index``'s dotted keys and values (without its name)."""
        return {k: v for k, v in self.variants[index].items() if k != VARIANT_NAME}

    def variant_name(self, sampled: Mapping[str, Any]) -> str:
        """The name of the variant a trial ran (``sampled['variant']``): its ``name``, else ``variant <index>``;
        "" without variants."""
        if "variant" not in sampled:
            return ""
        index = int(sampled["variant"])
        return str(self.variants[index].get(VARIANT_NAME, f"variant {index}"))

    def trial_config(self, sampled: Mapping[str, Any], *, name: str, output: str) -> ExperimentConfig:
        """base + sampled params (+ the variant selected by ``sampled['variant']``) + name/output."""
        return self.config_with({**self.trial_values(sampled), "train.name": name, "train.output": output})

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


# --------------------------------------------------------------------------------------------------------- checks


def _config_or_error(space: SearchSpace, values: Mapping[str, Any], where: str) -> None:
    try:
        space.config_with(values)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def _validate_values(space: SearchSpace) -> None:
    """Build the ExperimentConfig for every candidate value of every param and every variant."""
    # each param value on its own (errors name the param), then every variant
    for p in space.params:
        for value in p.candidates():
            _config_or_error(space, {p.key: value}, f"params.{p.key}={value!r}")
    for i in range(len(space.variants)):
        _config_or_error(space, space.variant_values(i), f"variants[{i}]")
    # combinations (cross-field rules such as checkpoint_every % val_every), capped to keep loading instant
    axes = [[(p.key, v) for v in p.candidates()] for p in space.params]
    if space.variants:
        axes.append([("variant", i) for i in range(len(space.variants))])
    if math.prod(len(a) for a in axes) <= MAX_COMBINATIONS:
        for combo in itertools.product(*axes):
            shown = ", ".join(f"{k}={v!r}" for k, v in combo)
            _config_or_error(space, space.trial_values(dict(combo)), f"the combination {shown}")


def _check_horizon(space: SearchSpace) -> None:
    """ASHA's max_t must be reachable within the base config's training length."""
    s, cfg = space.scheduler, space.base
    if s is None:
        return
    horizon = cfg.optim.max_steps if s.time_attr == "step" else cfg.optim.max_steps // cfg.train.val_every
    check(
        s.max_t <= horizon,
        "scheduler.max_t",
        f"{s.max_t} {s.time_attr}s is beyond the base config's training length ({horizon}); ASHA could never reach it",
    )


WARM_START_FIXED = ("model.student", "model.student_weights", "model.student_init", "model.student_pretrained")


def _check_warm_start(space: SearchSpace) -> None:
    """A warm start initialises every trial's student from one shared run: the student architecture and its
    initialisation must then be the same for every trial, and the base must not bring its own."""
    if space.warm_start_steps == 0:
        return
    varied = [k for k in space.searched_keys if k in WARM_START_FIXED]
    check(not varied, "warm_start_steps", f"trials start from one shared student: do not vary {', '.join(varied)}")
    model = space.base.model
    check(
        model.student_init == "none" and not model.student_pretrained,
        "warm_start_steps",
        "the warm start sets the students' initial weights; the base config must not set model.student_weights / "
        "student_init / student_pretrained",
    )


# ----------------------------------------------------------------------------------------------------- loading


def _with_overrides(data: dict[str, Any], overrides: Iterable[str] | Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with extra fixed overrides (``key=value`` strings as ``--set`` takes them, or a mapping) added to its
    ``overrides`` (a key given in both takes the new value)."""
    if isinstance(overrides, str):
        overrides = [overrides]
    extra = dict(overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides))
    if not extra:
        return data
    current = data.get("overrides") or {}
    return {**data, "overrides": {**current, **extra} if isinstance(current, dict) else current}


def parse_space(
    data: Any,
    *,
    path: str = "<space>",
    name: str | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
) -> SearchSpace:
    """Validate a search-space mapping (see the module docstring) into a :class:`SearchSpace`; ``overrides`` are
    added to its ``overrides``. Every error is a ConfigError that starts with ``path``."""
    try:
        if not isinstance(data, dict):
            raise ConfigError(f"a search space must be a mapping, got {type(data).__name__}")
        data = _with_overrides(data, overrides)
        spec = from_dict(SpaceFile, {k: v for k, v in data.items() if v is not None or k not in NULL_MEANS_EMPTY})
        space = spec.resolve(path=path, name=name, source=data)
        _validate_values(space)
        _check_horizon(space)
        _check_warm_start(space)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return space


def shipped_spaces() -> dict[str, Path]:
    """Name -> file of every search space shipped in the package (``dad_ray/tune/spaces/*.yaml``)."""
    files = resources.files(SPACES_PACKAGE)
    yamls = sorted((f for f in files.iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name)
    return {f.name[: -len(".yaml")]: Path(str(f)) for f in yamls}


def resolve_space_path(name_or_path: str | os.PathLike) -> Path:
    """A path to a YAML file, or the name of a space shipped with the package (``loss_weights``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_spaces()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    hint = close_matches(path.stem, shipped)
    raise ConfigError(f"search space '{name_or_path}' not found{hint}; shipped: {', '.join(shipped)}")


def with_base(data: dict[str, Any], *, preset: str | None = None, config: str | os.PathLike | None = None):
    """``data`` (a space mapping) with its base replaced by the preset ``preset`` or the config file ``config``
    (made absolute, so the experiment's saved ``space.yaml`` finds it again); unchanged when both are None."""
    if preset is not None and config is not None:
        raise ConfigError("give a base preset or a base config file, not both")
    if preset is None and config is None:
        return data
    out = {k: v for k, v in data.items() if k not in ("base_preset", "base_config")}
    if preset is not None:
        out["base_preset"] = preset
    else:
        out["base_config"] = config if is_uri(config) else os.path.abspath(config)
    return out


def load_space(
    name_or_path: str | os.PathLike,
    *,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    name: str | None = None,
    base_preset: str | None = None,
    base_config: str | os.PathLike | None = None,
) -> SearchSpace:
    """Read a search space: a YAML file or a shipped space's name, plus extra fixed overrides (``key=value`` strings
    as ``--set`` takes them, or a mapping). ``base_preset`` / ``base_config`` replace the space's base (its
    overrides still apply). The experiment name is ``name``, else the file's stem. (An experiment's own
    ``space.yaml`` is read by :func:`dad_ray.tune.driver.load_experiment_space`.)"""
    path = resolve_space_path(name_or_path)
    data = read_yaml_mapping(path, "search space")
    try:
        data = with_base(data, preset=base_preset, config=base_config)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return parse_space(data, path=str(path), name=name, overrides=overrides)


__all__ = [
    "Distribution",
    "Param",
    "ResourcesSpec",
    "SchedulerSpec",
    "SearchSpace",
    "SpaceFile",
    "load_space",
    "parse_space",
    "resolve_space_path",
    "shipped_spaces",
]
