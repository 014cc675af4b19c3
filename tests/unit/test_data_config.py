"""Data configuration without Ray: training mixtures (config, weights -> row groups per epoch, the per-epoch draw),
depth-less sources in distill vs supervised mode, validation that is not the test set, the synthetic splits of the
embedded default."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from dad_ray.config import ConfigError, build_config
from dad_ray.data.manifest import FORMAT, SCHEMA_VERSION, write_manifest
from dad_ray.data.pipeline import Mixture, _row_depth
from dad_ray.train.experiment import synthetic_plan, validate_data


def manifest(rows: int, *, depth: bool = True, group: int = 16) -> dict:
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "split": "x",
        "source": "test",
        "num_samples": rows,
        "shards": [{"file": "part-00000.parquet", "num_rows": rows, "sha256": "0"}],
        "skipped": [],
        "image_format": "jpeg",
        "row_group_size": group,
        "has_depth": depth,
    }


def test_train_sources_from_a_config_file_after_a_preset(tmp_path):
    extra = tmp_path / "mix.yaml"
    extra.write_text(
        "data:\n  train_sources:\n"
        "    - {root: data/sa1b, split: train, weight: 0.9}\n"
        "    - {root: data/nyu, weight: 0.1}\n"
    )
    cfg = build_config("smoke", extra)
    assert [(s.root, s.split, s.weight) for s in cfg.data.training_sources] == [
        ("data/sa1b", "train", 0.9),
        ("data/nyu", "train", 0.1),
    ]
    assert build_config("smoke").data.training_sources[0].split == "unlabeled"  # empty: root + train_split
    with pytest.raises(ConfigError, match=r"data.train_sources\[1\].weight|data.train_sources.weight: must be > 0"):
        build_config("smoke", overrides={"data.train_sources": [{"root": "a"}, {"root": "b", "weight": 0}]})
    with pytest.raises(ConfigError, match="unknown config key 'data.train_sources.*wieght"):
        build_config("smoke", overrides={"data.train_sources": [{"root": "a", "wieght": 1}]})


def test_mixture_counts_and_draws_by_weight():
    # A: 100 rows = 7 row groups (6 x 16 + 4); B: 20 rows = 2 row groups (16 + 4); equal weights over 120 rows:
    # A gets round(60 / (100 / 7)) = round(4.2) = 4 row groups per epoch, B round(60 / 10) = 6 (3 laps of its 2)
    mix = Mixture.build([(manifest(100), ["a.parquet"], "fsA", 1.0), (manifest(20), ["b.parquet"], "fsB", 1.0)])
    assert mix.counts == (4, 6) and mix.num_slots == 10 and len(mix.units) == 9
    first = mix.schedule(seed=0, epoch=0)
    np.testing.assert_array_equal(first, mix.schedule(seed=0, epoch=0))  # a pure function of (seed, epoch)
    assert not np.array_equal(first, mix.schedule(seed=0, epoch=1))
    sources = [mix.units[i]["source"] for i in first]
    assert sources.count(0) == 4 and sources.count(1) == 6
    assert len(set(i for i in first if mix.units[i]["source"] == 0)) == 4  # A: 4 distinct units, no repeat
    assert sorted(i for i in first if mix.units[i]["source"] == 1) == [7, 7, 7, 8, 8, 8]  # B: each unit 3 times
    # weights 9:1 -> A 108 rows = round(7.56) = 8 groups (a lap and a bit), B round(12 / 10) = 1
    assert Mixture.build([(manifest(100), ["a"], None, 9.0), (manifest(20), ["b"], None, 1.0)]).counts == (8, 1)


def test_depth_less_rows_train_with_all_invalid_depth():
    rows = {"height": [2], "width": [3], "depth": [None]}
    np.testing.assert_array_equal(_row_depth(rows, 0, "r"), np.zeros((2, 3), np.float32))


def shard_root(tmp_path, splits: dict[str, bool]) -> str:
    for split, depth in splits.items():
        write_manifest(str(tmp_path / split), manifest(4, depth=depth))
    return str(tmp_path)


def real_data(root: str, **overrides):
    base = {"data.root": root, "data.synthetic.train_samples": 0, "data.synthetic.unlabeled_samples": 0}
    return build_config("smoke", overrides={**base, **overrides})


def test_distill_takes_depth_less_shards_supervised_refuses_them(tmp_path):
    root = shard_root(tmp_path, {"sa1b": False, "val": True, "test": True, "train": True})
    validate_data(real_data(root, **{"data.train_split": "sa1b", "bootstrap.enabled": False}))
    with pytest.raises(ConfigError, match=r"data.root/data.train_split: .*sa1b holds depth-less .* supervised"):
        validate_data(real_data(root, **{"data.train_split": "sa1b", "loss.mode": "supervised"}))
    mixed = {"data.train_sources": [{"root": root, "split": "train"}, {"root": root, "split": "sa1b"}]}
    validate_data(real_data(root, **mixed, **{"bootstrap.enabled": False}))
    with pytest.raises(ConfigError, match=r"data.train_sources\[1\]: .*sa1b holds depth-less"):
        validate_data(real_data(root, **mixed, **{"loss.mode": "supervised"}))
    with pytest.raises(ConfigError, match=r"data.val_root/data.val_split: .*sa1b holds depth-less .* validation"):
        validate_data(real_data(root, **{"data.train_split": "train", "data.val_split": "sa1b"}))
    with pytest.raises(ConfigError, match=r"data.test_root/data.test_split: no shards for split 'nope'"):
        validate_data(real_data(root, **{"data.train_split": "train", "data.test_split": "nope"}))


def test_validation_on_the_test_set_warns_or_fails_for_paper_presets(tmp_path, caplog):
    root = shard_root(tmp_path, {"train": True, "val": True, "test": True})
    with caplog.at_level(logging.WARNING):
        validate_data(real_data(root, **{"data.train_split": "train"}))
    assert "model selection" not in caplog.text  # val != test: nothing to say
    with caplog.at_level(logging.WARNING):
        validate_data(real_data(root, **{"data.train_split": "train", "data.val_split": "test"}))
    assert "model selection would see the test numbers" in caplog.text
    other = str(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match=r"data.val_split: .*test.* \(data.holdout: error\)"):
        validate_data(
            real_data(root, **{"data.train_split": "train", "data.val_split": "test", "data.holdout": "error"})
        )
    with pytest.raises(ConfigError, match="no shards for split 'test' under .*elsewhere"):  # another root: not the same
        validate_data(
            real_data(
                root,
                **{
                    "data.train_split": "train",
                    "data.val_root": other,
                    "data.val_split": "test",
                    "data.holdout": "error",
                },
            )
        )
    for name in ("nyu_vitl_to_vitb", "nyu_vitl_to_vits", "nyu_vitl_to_convnext_atto"):
        data = build_config(name).data
        assert data.holdout == "error" and data.val_location != data.test_location, name


def test_embedded_default_teacher_on_labeled_student_on_unlabeled_scenes():
    cfg = build_config("default")
    assert synthetic_plan(cfg.data) == [
        ("unlabeled", 600, False),
        ("train", 600, True),
        ("val", 24, True),
        ("test", 48, True),
    ]
    assert cfg.data.train_split == "unlabeled" and cfg.data.bootstrap_split == "train"
    assert cfg.data.val_location != cfg.data.test_location
    with pytest.raises(ConfigError, match="data.bootstrap_split: .*unlabeled"):
        synthetic_plan(build_config("default", overrides={"data.bootstrap_split": ""}).data)
