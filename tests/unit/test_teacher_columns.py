"""Precomputed teachers: the stored column, attaching external maps, augmentation aligned with the image, the
training step mixing live and precomputed teachers, and the checks before Ray starts."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from dad_ray.config import ConfigError, build_config
from dad_ray.data import storage
from dad_ray.data.augment import AugmentSpec, augment_sample, sample_rng
from dad_ray.data.codec import encode_depth, encode_image
from dad_ray.data.errors import DataError
from dad_ray.data.fixtures import scene
from dad_ray.data.manifest import FORMAT, SCHEMA_VERSION, read_manifest, write_manifest
from dad_ray.data.shards import ROW_GROUP, read_row_group, shard_files, write_shard
from dad_ray.data.teacher_columns import (
    ExternalMaps,
    attach_column,
    column_name,
    decode_map,
    encode_map,
    to_disparity,
)

H, W = 24, 32


def write_split(directory: str, count: int = 5, per_shard: int = 3) -> list[str]:
    """A labeled shard split of ``count`` fixture scenes (keys ``d/s0000``…), ``per_shard`` rows per shard."""
    fs, inner = storage.resolve(directory)
    fs.create_dir(inner, recursive=True)
    keys = [f"d/s{i:04d}" for i in range(count)]
    shards = []
    for n, start in enumerate(range(0, count, per_shard)):
        rows = {name: [] for name in ("index", "key", "image", "depth", "height", "width")}
        for i in range(start, min(start + per_shard, count)):
            image, depth = scene(i, H, W)
            for name, value in zip(rows, (i, keys[i], encode_image(image, "png"), encode_depth(depth), H, W)):
                rows[name].append(value)
        shards.append(write_shard(fs, inner, n, rows))
    manifest = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "split": "train",
        "source": "fixture",
        "num_samples": count,
        "shards": shards,
        "skipped": [],
        "image_format": "png",
        "row_group_size": ROW_GROUP,
    }
    write_manifest(directory, manifest)
    return keys


def stored_maps(directory: str, name: str) -> dict[str, np.ndarray]:
    manifest, files, fs = shard_files(directory, verify=True)  # checksums refreshed by the attach
    out = {}
    for path in files:
        rows = read_row_group(fs, path, 0, (column_name(name),))
        for key, data in zip(rows["key"], rows[column_name(name)]):
            out[key] = decode_map(data, H, W, key)
    return out


def test_encoding_round_trip_keeps_the_map_up_to_a_per_row_scale_and_invalid_pixels():
    rng = np.random.default_rng(0)
    disparity = rng.uniform(0.01, 300.0, (H, W)).astype(np.float32)
    disparity[3, 4] = np.nan
    back = decode_map(encode_map(disparity), H, W, "r")
    assert np.isnan(back[3, 4]) and np.isfinite(back).sum() == H * W - 1
    scale = np.nanmax(disparity)
    np.testing.assert_allclose(back * scale, disparity, rtol=1e-3, equal_nan=True)  # float16: 2^-11 relative
    with pytest.raises(DataError, match="row k7: teacher map holds 768 values, the row is 10x10"):
        decode_map(encode_map(disparity), 10, 10, "row k7")


def test_kinds_convert_to_disparity_as_documented():
    depth = np.array([[1.0, 2.0], [4.0, 0.0]])
    np.testing.assert_allclose(to_disparity(depth, "depth"), [[1.0, 0.5], [0.25, np.nan]])
    np.testing.assert_allclose(to_disparity(np.array([[2.0, -1.0]]), "disparity"), [[2.0, np.nan]])
    affine = np.array([[10.0, 20.0, 30.0]])  # normalised to 0, 0.5, 1 then 1 / (d + 0.25)
    np.testing.assert_allclose(to_disparity(affine, "affine_depth", shift=0.25), [[4.0, 4 / 3, 0.8]], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown kind"):
        to_disparity(depth, "metric")


def test_attach_npy_and_png_maps_named_by_key_and_old_readers_still_work(tmp_path):
    split = str(tmp_path / "shards" / "train")
    keys = write_split(split)
    maps_dir = tmp_path / "maps"
    expected = {}
    for i, key in enumerate(keys):
        os.makedirs(maps_dir / os.path.dirname(key), exist_ok=True)
        depth = scene(i, H, W)[1]
        if i % 2:  # 16-bit PNG in millimetres
            mm = np.round(depth * 1000).astype(np.uint16)
            Image.fromarray(mm).save(maps_dir / f"{key}.png")
            expected[key] = to_disparity(mm.astype(np.float32), "depth")
        else:
            np.save(maps_dir / f"{key}.npy", depth)
            expected[key] = to_disparity(depth, "depth")
    manifest = attach_column(split, "ext", ExternalMaps(str(maps_dir), "depth"), kind="depth", source="maps")
    assert manifest["teacher_columns"] == {"ext": {"kind": "depth", "shift": 0.1, "source": "maps"}}
    got = stored_maps(split, "ext")
    for key in keys:
        want = expected[key] / np.nanmax(expected[key])
        np.testing.assert_allclose(got[key], want, rtol=1e-3, atol=1e-4, equal_nan=True)
    # the other columns are untouched and a reader that asks for no extra column sees the old layout
    _manifest, files, fs = shard_files(split)
    rows = read_row_group(fs, files[0], 0)
    assert rows["key"] == keys[:3] and "teacher_ext" not in rows
    # attaching again (same maps) rewrites nothing; the manifest keeps one entry
    assert read_manifest(split)["teacher_columns"].keys() == {"ext"}
    again = attach_column(split, "ext", ExternalMaps(str(maps_dir), "depth"), kind="depth", source="maps")
    assert again["shards"] == manifest["shards"]


def test_attach_errors_name_the_key_and_file(tmp_path):
    split = str(tmp_path / "train")
    keys = write_split(split, count=2)
    maps_dir = tmp_path / "maps" / "d"
    maps_dir.mkdir(parents=True)
    np.save(maps_dir / "s0000.npy", np.ones((H, W)))
    with pytest.raises(DataError, match=r"row d/s0001: no teacher map found \(looked for .*s0001.npy and .*png\)"):
        attach_column(split, "ext", ExternalMaps(str(tmp_path / "maps"), "disparity"))
    np.save(maps_dir / "s0001.npy", np.ones((H, W + 1)))
    with pytest.raises(
        DataError, match=r"s0001.npy \(row d/s0001\): map is \(24, 33\), the stored image is \(24, 32\)"
    ):
        attach_column(split, "ext", ExternalMaps(str(tmp_path / "maps"), "disparity"))
    assert "teacher_columns" not in read_manifest(split)  # the manifest is written last: nothing half-attached
    assert keys


@pytest.mark.parametrize("local_source", ["image", "crop"])
def test_a_precomputed_map_is_cropped_flipped_and_resized_with_the_depth_to_the_pixel(local_source):
    """A teacher map equal to the depth (NaN where the depth is invalid) comes out equal to the augmented depth
    views, pixel for pixel and mask for mask, whatever the draw (flip, crop side, position)."""
    spec = AugmentSpec(
        crop_size=28, min_crop=16, global_size=(28, 42), local_patch_size=14, local_grid=(2, 2),
        local_overlap=0.25, hflip=True, color_jitter=0.2, local_source=local_source,
    )  # fmt: skip
    image, depth = scene(3, 40, 60)
    depth[5:9, 10:30] = 0.0  # an invalid block
    teacher = np.where(depth > 0, depth, np.nan).astype(np.float32)
    flips = set()
    for key in ("a", "b", "c", "d", "e", "f"):
        plain = augment_sample(image, depth, spec, sample_rng(0, 0, key))
        row = augment_sample(image, depth, spec, sample_rng(0, 0, key), teachers={1: teacher})
        for name in plain:  # the row itself is unchanged by carrying a teacher
            np.testing.assert_array_equal(plain[name], row[name])
        np.testing.assert_array_equal(row["teacher1_crop_mask"], row["crop_mask"])
        np.testing.assert_allclose(row["teacher1_crop"], row["crop_depth"], rtol=1e-6)
        np.testing.assert_array_equal(row["teacher1_local_mask"], row["local_mask"])
        np.testing.assert_allclose(row["teacher1_local"], row["local_depth"], rtol=1e-6)
        assert row["teacher1_crop"].shape == (28, 28) and row["teacher1_local"].shape == (4, 14, 14)
        flips.add(bool(sample_rng(0, 0, key).random() < 0.5))  # augment_sample's first draw: the flip
    assert flips == {True, False} and "teacher0_crop" not in row


def test_compute_losses_takes_a_precomputed_teacher_from_the_batch_and_a_live_one_from_its_model(tmp_path):
    from dad_ray.models import create_model, save_weights
    from dad_ray.train.step import synthetic_batch
    from dad_ray.train.task import TeacherPool, build_student, build_task, compute_losses

    weights = str(tmp_path / "t.safetensors")
    torch.manual_seed(0)
    save_weights(create_model("dav2_micro"), weights)
    cfg = build_config(
        "smoke",
        overrides={
            "model.teachers": [
                {"name": "dav2_micro", "weights": weights, "probability": 0.5},
                {"name": "genpercept", "column": "gp", "probability": 0.5},
            ],
            "loss.lambda_feat": 0.0,
        },
    )
    pool = TeacherPool(cfg.model.teachers, torch.device("cpu"), seed=0)
    assert pool.models[1] is None and pool.layouts[1] is None and pool.dims == [pool.models[0].embed_dim]
    task = build_task(build_student(cfg.model), cfg, pool.dims)
    batch = synthetic_batch(cfg, 2, torch.device("cpu"), carried=(1,))
    _, _, t_crop = compute_losses(task, pool, batch, cfg, use_feat=False, teacher_index=1)
    assert torch.equal(t_crop, batch["teacher1_crop"])  # the column, not a model
    _, _, t_live = compute_losses(task, pool, batch, cfg, use_feat=False, teacher_index=0)
    assert not torch.equal(t_live, batch["teacher1_crop"])
    del batch["teacher1_crop"]
    with pytest.raises(RuntimeError, match="teacher 1 \\(genpercept\\) is not loaded on this worker"):
        compute_losses(task, pool, batch, cfg, use_feat=False, teacher_index=1)
    draws = {pool.draw() for _ in range(40)}
    assert draws == {0, 1}  # select mixes the live and the precomputed teacher


def test_config_checks_of_precomputed_teachers(tmp_path):
    from dad_ray.train.experiment import validate_experiment

    with pytest.raises(ConfigError, match="precomputed teacher .*leave weights empty"):
        build_config("smoke", overrides={"model.teachers.0.column": "gp"})
    split = tmp_path / "d" / "train"
    write_split(str(split), count=2)
    for other in ("val", "test"):
        write_split(str(tmp_path / "d" / other), count=2)
    base = {
        "data.root": str(tmp_path / "d"),
        "data.synthetic.train_samples": 0,
        "data.synthetic.unlabeled_samples": 0,
        "data.train_split": "train",
        "data.bootstrap_split": "",
        "data.val_split": "val",
        "data.test_split": "test",
        "bootstrap.enabled": False,
        "model.teachers": [{"name": "genpercept", "column": "gp"}],
    }
    cfg = build_config("smoke", overrides={**base, "loss.lambda_feat": 0.0})
    with pytest.raises(
        ConfigError, match=r"training source .*d/train has no precomputed teacher column 'gp' \(it has: none"
    ):
        validate_experiment(cfg)
    maps = tmp_path / "maps" / "d"
    maps.mkdir(parents=True)
    for key in ("s0000", "s0001"):
        np.save(maps / f"{key}.npy", np.ones((H, W)))
    attach_column(str(split), "gp", ExternalMaps(str(tmp_path / "maps"), "disparity"))
    validate_experiment(cfg)  # now it is there
    with pytest.raises(ConfigError, match="has no features for L_feat.*loss.feat_target=initial"):
        validate_experiment(build_config("smoke", overrides={**base, "loss.feat_target": "teacher"}))
