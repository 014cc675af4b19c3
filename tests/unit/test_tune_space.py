"""Search-space loading: every shipped space loads; bad keys and values fail before any trial, naming the key."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from dad_ray.config import ConfigError, ExperimentConfig
from dad_ray.tune.space import load_space, parse_space, resolve_space_path, shipped_spaces

REPO = Path(__file__).resolve().parents[2]
SPACES = REPO / "dad_ray" / "tune" / "spaces"
SHIPPED = sorted(SPACES.glob("*.yaml"))


def smoke(**changes):
    data = yaml.safe_load((SPACES / "smoke.yaml").read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_spaces_load(path):
    space = load_space(path)
    assert space.total_trials() >= 1
    assert space.searched_keys


def test_required_spaces_are_shipped():
    names = {p.stem for p in SHIPPED}
    assert {"loss_weights", "crop_sizes", "smoke", "default", "ablation"} <= names
    assert set(load_space("loss_weights").searched_keys) == {
        "loss.lambda_lg",
        "loss.lambda_feat",
        "loss.lambda_grad",
        "loss.normalization",
    }
    assert {"data.crop_size", "data.min_crop", "data.local_patch_size", "data.local_overlap"} == set(
        load_space("crop_sizes").searched_keys
    )


def test_ablation_is_the_papers_grid():
    space = load_space("ablation")
    assert space.total_trials() == 8
    norm = next(p for p in space.params if p.key == "loss.normalization")
    assert set(norm.values) == {"global", "hybrid", "local", "none"}
    assert {v["loss.lambda_lg"] for v in space.variants} == {0.0, 0.5}


def test_smoke_has_at_least_four_trials_and_asha():
    space = load_space("smoke")
    assert space.total_trials() >= 4
    assert space.scheduler.grace_period < space.scheduler.max_t


def test_unknown_param_key_names_it_with_close_matches():
    with pytest.raises(ConfigError, match=r"unknown config key 'loss\.lamda_lg'.*did you mean loss\.lambda_lg"):
        parse_space(smoke(params={"loss.lamda_lg": {"uniform": [0, 1]}}))


def test_unknown_override_key_fails():
    with pytest.raises(ConfigError, match=r"overrides.*unknown config key 'optim\.max_step'.*optim\.max_steps"):
        parse_space(smoke(overrides={"optim.max_step": 10}))


def test_unknown_top_level_key_fails():
    with pytest.raises(ConfigError, match=r"unknown search-space key 'num_sample'.*num_samples"):
        parse_space({**smoke(), "num_sample": 3})


def test_crop_not_multiple_of_14_fails_on_a_choice():
    with pytest.raises(ConfigError, match=r"params\.data\.crop_size=60.*multiple of 14"):
        parse_space(smoke(params={"data.crop_size": {"choice": [56, 60]}}))


def test_randint_crop_bounds_must_be_multiples():
    with pytest.raises(ConfigError, match=r"data\.crop_size.*multiples of 14"):
        parse_space(smoke(params={"data.crop_size": {"randint": [50, 112], "multiple_of": 14}}))


def test_randint_multiple_of_samples_only_multiples():
    space = parse_space(smoke(params={"data.crop_size": {"randint": [56, 112], "multiple_of": 14}}))
    (param,) = space.params
    assert param.candidates() == [56, 70, 84, 98, 112]


def test_negative_lambda_fails_at_the_range_end():
    with pytest.raises(ConfigError, match=r"params\.loss\.lambda_grad=-0\.5.*loss\.lambda_grad: must be >= 0"):
        parse_space(smoke(params={"loss.lambda_grad": {"uniform": [-0.5, 1.0]}}))


def test_bad_choice_value_in_literal_fails():
    with pytest.raises(ConfigError, match=r"loss\.normalization.*'hybird'"):
        parse_space(smoke(params={"loss.normalization": {"grid": ["hybrid", "hybird"]}}))


def test_invalid_variant_fails():
    with pytest.raises(ConfigError, match=r"variants\[1\].*loss\.lambda_lg: must be >= 0"):
        parse_space(smoke(variants=[{"loss.lambda_lg": 0.0}, {"loss.lambda_lg": -1.0}]))


def test_reserved_keys_cannot_be_searched():
    with pytest.raises(ConfigError, match=r"train\.name.*set by the tune driver"):
        parse_space(smoke(params={"train.name": {"choice": ["a", "b"]}}))


@pytest.mark.parametrize(
    ("scheduler", "pattern"),
    [
        ({"type": "asha", "time_attr": "steps"}, r"time_attr.*did you mean step"),
        ({"type": "asha", "max_t": 12, "grace_period": 20}, r"grace_period: must be <= max_t"),
        ({"type": "asha", "max_t": 1000, "grace_period": 6}, r"max_t: 1000 steps is beyond"),
        ({"type": "asha", "reduction_factor": 1}, r"reduction_factor: must be > 1"),
        ({"type": "hyperband"}, r"only 'asha'"),
        ({"type": "asha", "grace_perod": 2}, r"unknown key 'grace_perod'.*grace_period"),
    ],
)
def test_bad_scheduler(scheduler, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_space(smoke(scheduler=scheduler))


def test_bad_distribution_and_metric():
    with pytest.raises(ConfigError, match=r"unknown field 'choise'.*choice"):
        parse_space(smoke(params={"optim.lr": {"choise": [1e-3]}}))
    with pytest.raises(ConfigError, match=r"loguniform needs low > 0"):
        parse_space(smoke(params={"optim.lr": {"loguniform": [0.0, 1e-3]}}))
    with pytest.raises(ConfigError, match=r"metric.*'val_absrel'.*val_abs_rel"):
        parse_space(smoke(metric="val_absrel"))


def test_trial_config_applies_base_overrides_params_and_variant(tmp_path):
    space = parse_space(smoke(variants=[{"loss.lambda_lg": 0.0}, {"loss.lambda_lg": 0.25}]))
    cfg = space.trial_config(
        {"optim.lr": 1e-6, "loss.normalization": "global", "variant": 1}, name="t1", output=str(tmp_path)
    )
    assert cfg.optim.lr == 1e-6 and cfg.loss.normalization == "global" and cfg.loss.lambda_lg == 0.25
    assert cfg.train.max_failures == 0 and cfg.train.image_every == 0  # the space's overrides
    assert cfg.data.crop_size == 56  # from the smoke preset
    assert cfg.train.name == "t1" and cfg.train.output == str(tmp_path)
    assert space.searched_keys == ["optim.lr", "loss.normalization", "loss.lambda_lg"]


def test_param_space_maps_to_tune_domains():
    from ray import tune

    space = parse_space(
        smoke(
            params={
                "optim.lr": {"loguniform": [1e-4, 1e-2]},
                "data.crop_size": {"randint": [56, 84], "multiple_of": 14},
                "loss.normalization": {"grid": ["global", "local"]},
            }
        )
    )
    ps = space.param_space()
    assert isinstance(ps["optim.lr"], tune.search.sample.Float)
    assert ps["data.crop_size"].categories == [56, 70, 84]
    assert ps["loss.normalization"] == {"grid_search": ["global", "local"]}
    assert space.total_trials() == 2 * space.num_samples


def test_list_items_are_addressed_by_index():
    space = parse_space(smoke(overrides={"model.teachers.0.weights": "/x/teacher.safetensors"}))
    assert space.base_config().model.teachers[0].weights == "/x/teacher.safetensors"
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.teachers\.0\.weight'"):
        parse_space(smoke(overrides={"model.teachers.0.weight": "/x"}))


# ------------------------------------------------------------------ one loading path: names, files, --set overrides


def test_shipped_name_resolves_from_package_data_not_the_repo_layout(tmp_path, monkeypatch):
    import dad_ray.tune

    monkeypatch.chdir(tmp_path)  # nothing relative to the working directory (or to a checkout) is looked at
    package_dir = (Path(dad_ray.tune.__file__).parent / "spaces").resolve()
    path = resolve_space_path("loss_weights")
    assert path.resolve() == package_dir / "loss_weights.yaml"
    assert {"loss_weights", "crop_sizes", "smoke", "default", "ablation"} <= set(shipped_spaces())
    assert all(p.resolve().parent == package_dir for p in shipped_spaces().values())
    # the repo's search_spaces/ is only a link to the package data, for paths like search_spaces/x.yaml
    assert (REPO / "search_spaces").resolve() == package_dir
    # a non-editable install ships them: they are package data of dad_ray.tune.spaces
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"dad_ray.tune.spaces" = ["*.yaml"]' in pyproject
    assert load_space("loss_weights").path == str(path)


def test_user_files_by_path_with_a_base_config_relative_to_the_space(tmp_path, monkeypatch):
    (tmp_path / "spaces").mkdir()
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"base": "smoke", "optim": {"max_steps": 24}}))
    space_file = tmp_path / "spaces" / "mine.yaml"
    space_file.write_text(yaml.safe_dump({**smoke(base_preset=None), "base_config": "../base.yaml"}))
    monkeypatch.chdir(tmp_path)
    space = load_space("spaces/mine.yaml")
    assert space.name == "mine" and space.path == "spaces/mine.yaml"
    assert isinstance(space.base, ExperimentConfig) and space.base.optim.max_steps == 24
    assert space.base.data.crop_size == 56 and space.base.train.image_every == 0  # smoke, then the space's overrides


def test_missing_space_names_the_shipped_one_it_resembles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"'search_spaces/loss_weights\.yaml' not found \(did you mean loss_weights"):
        load_space("search_spaces/loss_weights.yaml")


def test_set_overrides_join_the_space_overrides():
    space = load_space("smoke", overrides=["optim.max_steps=24", "train.image_every=5"], name="exp")
    assert space.name == "exp"
    assert space.base.optim.max_steps == 24 and space.base.train.image_every == 5  # a --set beats the file
    assert space.source["overrides"] == {**smoke()["overrides"], "optim.max_steps": 24, "train.image_every": 5}
    as_mapping = load_space("smoke", overrides={"optim.max_steps": 24})
    assert as_mapping.base == replace(space.base, train=replace(space.base.train, image_every=0))
    with pytest.raises(ConfigError, match=r"smoke\.yaml: override 'optim\.lr' must look like key=value"):
        load_space("smoke", overrides=["optim.lr"])
    with pytest.raises(ConfigError, match=r"smoke\.yaml: overrides: unknown config key 'optim\.lrr'"):
        load_space("smoke", overrides=["optim.lrr=1"])


def test_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(smoke(params={"optim.lr": {"uniform": [1e-3, 1e-4]}})))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}: params\.optim\.lr\.uniform: low must be < high"):
        load_space(bad)
    bad.write_text("params: [")
    with pytest.raises(ConfigError, match=rf"search space {re.escape(str(bad))} is not valid YAML"):
        load_space(bad)


def test_null_sections_are_empty_and_scheduler_none_means_no_scheduler():
    for scheduler in (None, "none", {"type": "none"}):
        data = {**smoke(), "scheduler": scheduler, "overrides": None, "resources": None, "variants": None}
        space = parse_space(data)
        assert space.scheduler is None and space.cpus_per_trial == 0.01 and space.variants == ()
        assert space.base == parse_space(smoke(overrides={})).base


def test_searched_keys_must_not_lie_inside_one_another():
    with pytest.raises(ConfigError, match=r"'model\.teachers\.0\.weights' lies inside 'model\.teachers'"):
        parse_space(
            smoke(
                params={"model.teachers.0.weights": {"choice": ["/a", "/b"]}},
                variants=[{"model.teachers": [{"name": "dav2_vits"}]}],
            )
        )


def test_experiment_space_keeps_its_name_and_makes_paths_absolute(tmp_path, monkeypatch):
    from dad_ray.tune.driver import SPACE_FILE, load_experiment_space

    exp_dir = tmp_path / "exp_renamed"
    exp_dir.mkdir()
    data = smoke()
    data["overrides"] = {**data["overrides"], "data.root": "rel/data", "model.teachers.0.weights": "rel/t.pt"}
    (exp_dir / SPACE_FILE).write_text(yaml.safe_dump({**data, "_name": "exp"}))
    monkeypatch.chdir(tmp_path)
    space = load_experiment_space(exp_dir)
    assert space.name == "exp"
    assert space.base.data.root == str(tmp_path / "rel" / "data")
    assert space.base.model.teachers[0].weights == str(tmp_path / "rel" / "t.pt")
    assert Path(space.base.train.output).is_absolute()
    assert space.source == data  # the written name is not part of the space


def test_a_space_takes_another_base_preset_or_config_file(tmp_path):
    """jobs/tune.py --preset / --base: the space's base is replaced, its overrides still apply, and the saved
    source (space.yaml of the experiment, read by --resume) names the new base."""
    from dad_ray.config import build_config, save_config

    space = load_space("loss_weights", base_preset="smoke")
    assert space.base.model.student == build_config("smoke").model.student
    assert space.base.optim.max_steps == 300  # the space's override, on the new base
    assert space.source["base_preset"] == "smoke" and "base_config" not in space.source
    again = parse_space(dict(space.source), path="space.yaml")
    assert again.base == space.base

    gpu = load_space("loss_weights_gpu")
    assert gpu.base.train.use_gpu and gpu.gpus_per_trial == 1 and gpu.base.data.synthetic.train_samples == 0

    config = save_config(build_config("smoke", overrides={"optim.lr": 0.0123}), tmp_path / "mine.yaml")
    own = load_space("loss_weights", base_config=str(config))
    assert own.base.optim.lr == 0.0123 and own.source["base_config"] == str(config)
    with pytest.raises(ConfigError, match="not both"):
        load_space("loss_weights", base_preset="smoke", base_config=str(config))
    with pytest.raises(ConfigError, match="base_preset"):
        load_space("loss_weights", base_preset="no_such_preset")


def test_warm_start_fixes_the_student_and_points_every_trial_at_its_result(tmp_path):
    """warm_start_steps: the driver's shared run is reused when its student exists (no Ray needed then), and every
    trial's config starts from it; a space cannot vary the student it shares, nor bring its own initialisation."""
    from dad_ray.tune.driver import WARM_START_DIR, warm_start

    text = "base_preset: smoke\nwarm_start_steps: 6\nparams: {optim.lr: {grid: [1.0e-3, 3.0e-3]}}\nscheduler: null\n"
    space = parse_space(yaml.safe_load(text), path="<space>", name="ws")
    assert space.warm_start_steps == 6
    exp = tmp_path / "exp"
    (exp / WARM_START_DIR).mkdir(parents=True)
    (exp / WARM_START_DIR / "student.safetensors").write_bytes(b"stands in for the shared run's student")
    warmed = warm_start(space, str(exp))
    cfg = warmed.trial_config({"optim.lr": 3.0e-3}, name="t0", output=str(tmp_path / "trials"))
    assert cfg.model.student_weights == str(exp / WARM_START_DIR / "student.safetensors")
    assert cfg.model.student_init == "full" and cfg.optim.lr == 3.0e-3
    assert warm_start(replace(space, warm_start_steps=0), str(exp)) == replace(space, warm_start_steps=0)

    with pytest.raises(ConfigError, match=r"warm_start_steps.*do not vary model\.student"):
        parse_space(yaml.safe_load(text + "variants: [{model.student: dav2_tiny}]\n"), path="<space>", name="ws")
    own = text.replace(
        "scheduler: null", "scheduler: null\noverrides: {model.student_weights: x.pt, model.student_init: full}"
    )
    with pytest.raises(ConfigError, match="must not set model.student_weights"):
        parse_space(yaml.safe_load(own), path="<space>", name="ws")
    with pytest.raises(ConfigError, match="warm_start_steps.*>= 0"):
        parse_space(
            yaml.safe_load(text.replace("warm_start_steps: 6", "warm_start_steps: -1")), path="<space>", name="ws"
        )
