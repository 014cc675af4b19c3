"""Sources, codec and manifest without Ray: every format loads exactly; every bad input fails with its name."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
from PIL import Image

from dad_ray.data import DataError
from dad_ray.data.codec import decode_depth, decode_image, encode_depth, encode_image, validate_depth
from dad_ray.data.fixtures import scene, write_depth_png, write_folders, write_mat, write_sync
from dad_ray.data.manifest import SCHEMA_VERSION, read_manifest, validate_manifest, write_manifest
from dad_ray.data.prepare import EncodeOptions, encode_sample
from dad_ray.data.sources import open_source
from dad_ray.data.sources.nyu_mat import NyuMatSource, official_split
from dad_ray.data.sources.synthetic_source import SyntheticSource

H, W = 24, 32


def test_official_split_indices():
    train, test = official_split("train"), official_split("test")
    assert len(train) == 795 and len(test) == 654
    assert sorted(set(train) | set(test)) == list(range(1, 1450))
    assert list(test[:6]) == [1, 2, 9, 14, 15, 16]  # NYU_SPLITS.md
    with pytest.raises(DataError, match="no split 'val'"):
        official_split("val")


def test_mat_source_transposes_column_major(tmp_path):
    path = str(tmp_path / "nyu.mat")
    write_mat(path, 3, H, W)
    src = open_source(path, "all")
    assert isinstance(src, NyuMatSource) and src.refs() == ["0", "1", "2"]
    key, image, depth = src.load("2")
    ref_image, ref_depth = scene(2, H, W)
    assert key == "nyu_0003"
    np.testing.assert_array_equal(image, ref_image)
    np.testing.assert_array_equal(depth, ref_depth)


def test_mat_official_split_needs_1449_images(tmp_path):
    path = str(tmp_path / "small.mat")
    write_mat(path, 3, H, W)
    with pytest.raises(DataError, match=r"small\.mat.*1449.*--split all"):
        open_source(path, "train")


def test_mat_official_split_refs(tmp_path):
    path = str(tmp_path / "full.mat")
    with h5py.File(path, "w") as f:  # 1449 tiny images: the split indices map to 0-based rows
        f.create_dataset("images", (1449, 3, 4, 3), dtype=np.uint8)
        f.create_dataset("depths", data=np.ones((1449, 4, 3)))
    src = NyuMatSource(path, "test")
    refs = src.refs()
    assert len(refs) == 654 and refs[:3] == ["0", "1", "8"]
    key, image, depth = src.load(refs[2])
    assert key == "nyu_0009" and image.shape == (3, 4, 3) and depth.shape == (3, 4)


def test_mat_bad_inputs_are_named(tmp_path):
    not_hdf5 = tmp_path / "v5.mat"
    not_hdf5.write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 200)
    with pytest.raises(DataError, match=r"v5\.mat: cannot open as HDF5"):
        open_source(str(not_hdf5), "all")
    wrong = str(tmp_path / "wrong.mat")
    with h5py.File(wrong, "w") as f:
        f.create_dataset("images", (2, 3, W, H), dtype=np.uint8)
        f.create_dataset("depths", (2, W + 1, H), dtype=np.float64)
    with pytest.raises(DataError, match=r"wrong\.mat: 'depths'"):
        open_source(wrong, "all")
    # an all-zero depth map at .mat index 2 (1-based) fails naming the index
    zero = str(tmp_path / "zero.mat")
    write_mat(zero, 2, H, W)
    with h5py.File(zero, "a") as f:
        f["depths"][1] = 0.0
    src = open_source(zero, "all")
    _key, image, depth = src.load("1")
    with pytest.raises(DataError, match=r"zero\.mat\[index 2 \(1-based\)\]: depth map has no valid pixel"):
        encode_sample(src, "1", EncodeOptions())


def test_folder_source_round_trip(tmp_path):
    root = str(tmp_path / "folders")
    write_folders(root, {"train": 3, "test": 2}, H, W)
    src = open_source(root, "train")
    refs = src.refs()
    assert len(refs) == 3 and len(open_source(root, "all").refs()) == 5
    for i, ref in enumerate(refs):
        key, image, depth = src.load(ref)
        ref_image, ref_depth = scene(i, H, W)
        assert key == f"train/{i:05d}"
        assert image.data == (tmp_path / "folders" / "train" / "rgb" / f"{i:05d}.png").read_bytes()  # original bytes
        np.testing.assert_array_equal(image.decode(), ref_image)
        tol = 0.0 if i % 2 == 1 else 0.0005  # .npy exact, PNG in millimetres
        np.testing.assert_allclose(depth, ref_depth, atol=tol + 1e-7)


def test_folder_bad_inputs_are_named(tmp_path):
    root = tmp_path / "bad"
    write_folders(str(root), {"train": 4}, H, W, npy_every=0)
    os.remove(root / "train" / "depth" / "00001.png")  # RGB without depth
    os.remove(root / "train" / "rgb" / "00002.png")  # depth without RGB
    data = (root / "train" / "rgb" / "00003.png").read_bytes()
    (root / "train" / "rgb" / "00003.png").write_bytes(data[: len(data) // 2])  # truncated
    src = open_source(str(root), "train")
    errors = {}
    for ref in src.refs():
        try:
            encode_sample(src, ref, EncodeOptions())
        except DataError as err:
            errors[src.error_name(ref)] = str(err)
    assert set(os.path.basename(k) for k in errors) == {"00001.png", "00002.png", "00003.png"}
    messages = " | ".join(errors.values())
    assert "rgb/00001.png: missing partner depth file" in messages
    assert "depth/00002.png: missing partner RGB file" in messages
    assert "rgb/00003.png: unreadable or truncated image" in messages


def test_size_mismatch_is_named(tmp_path):
    root = tmp_path / "mismatch"
    write_folders(str(root), {"test": 1}, H, W, npy_every=0)
    write_depth_png(str(root / "test" / "depth" / "00000.png"), np.ones((H + 2, W), np.float32))
    src = open_source(str(root), "test")
    with pytest.raises(DataError, match=r"rgb/00000\.png: RGB/depth size mismatch"):
        encode_sample(src, src.refs()[0], EncodeOptions())


def test_sync_source_with_list_and_glob(tmp_path):
    root = str(tmp_path / "sync")
    listing = write_sync(root, 4, H, W)
    with_list = open_source(root, "train", filenames=listing)
    globbed = open_source(root, "train")
    assert sorted(with_list.refs()) == sorted(globbed.refs()) and len(with_list.refs()) == 4
    key, image, depth = with_list.load(with_list.refs()[1])
    ref_image, ref_depth = scene(1, H, W)
    assert key == "scene_01/rgb_00001"
    assert np.abs(image.decode().astype(int) - ref_image.astype(int)).mean() < 8  # JPEG q95, 4:2:0, noisy tiny image
    np.testing.assert_allclose(depth, ref_depth, atol=0.0005 + 1e-7)


def test_sync_bad_list_and_missing_partner(tmp_path):
    root = tmp_path / "sync"
    listing = write_sync(str(root), 2, H, W)
    with open(listing, "a") as f:
        f.write("/scene_00/rgb_00000.jpg\n")
    with pytest.raises(DataError, match=r"files\.txt:3: expected 'rgb_path depth_path"):
        open_source(str(root), "train", filenames=listing).refs()
    os.remove(root / "scene_01" / "sync_depth_00001.png")
    src = open_source(str(root), "train")
    with pytest.raises(DataError, match=r"sync_depth_00001\.png: missing partner depth file of scene_01/rgb_00001"):
        src.load(src.refs()[1])


def test_open_source_rejects_unknown(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_source(str(tmp_path / "nope"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match=r"x\.txt: a file source must be"):
        open_source(str(tmp_path / "x.txt"))
    with pytest.raises(DataError, match="synthetic:N"):
        open_source("synthetic:zero")
    assert isinstance(open_source("synthetic:5", height=32, width=40), SyntheticSource)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_codec_round_trip(fmt):
    image, depth = scene(0, H, W)
    decoded = decode_image(encode_image(image, fmt))
    if fmt == "png":
        np.testing.assert_array_equal(decoded, image)
    else:
        assert np.abs(decoded.astype(int) - image.astype(int)).mean() < 3
    np.testing.assert_array_equal(decode_depth(encode_depth(depth), H, W), depth)
    with pytest.raises(DataError, match="row k: depth has"):
        decode_depth(encode_depth(depth)[:-4], H, W, "row k")


def test_validate_sample_cleans_non_finite():
    image = np.zeros((2, 2, 3), np.uint8)
    depth = np.array([[np.nan, -1.0], [np.inf, 2.0]], np.float32)
    np.testing.assert_array_equal(validate_depth("s", depth, image.shape[:2]), [[0, 0], [0, 2.0]])
    with pytest.raises(DataError, match=r"s: RGB/depth size mismatch: image \(2, 3\)"):
        validate_depth("s", depth, (2, 3))


def test_manifest_validation(tmp_path):
    good = {
        "format": "dad_ray-shards",
        "schema_version": SCHEMA_VERSION,
        "split": "train",
        "source": "x",
        "num_samples": 2,
        "shards": [{"file": "part-00000.parquet", "num_rows": 2, "sha256": "0"}],
        "skipped": [],
        "image_format": "jpeg",
        "row_group_size": 16,
    }
    write_manifest(str(tmp_path / "train"), good)
    assert read_manifest(str(tmp_path / "train"))["num_samples"] == 2
    assert read_manifest(str(tmp_path / "nothing"), required=False) is None
    with pytest.raises(DataError, match="no manifest"):
        read_manifest(str(tmp_path / "nothing"))
    with pytest.raises(DataError, match=r"schema version 99 is not supported.*expects 1"):
        validate_manifest({**good, "schema_version": 99}, "m.json")
    with pytest.raises(DataError, match="num_samples 3 != sum of shard rows 2"):
        validate_manifest({**good, "num_samples": 3}, "m.json")
    with pytest.raises(DataError, match="lacks shards"):
        validate_manifest({k: v for k, v in good.items() if k != "shards"}, "m.json")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="broken/manifest.json: not valid JSON"):
        read_manifest(str(tmp_path / "broken"))
    assert json.loads((tmp_path / "train" / "manifest.json").read_text())["split"] == "train"


def test_truncated_jpeg_is_named(tmp_path):
    path = tmp_path / "t.jpg"
    Image.fromarray(scene(0, H, W)[0]).save(path, quality=95)
    data = path.read_bytes()
    with pytest.raises(DataError, match="x.jpg: unreadable or truncated image"):
        decode_image(data[: len(data) // 2], "x.jpg")


def test_synthetic_generation_lock_is_exclusive(tmp_path):
    """ensure_synthetic holds an exclusive lock per split: a second process/thread waits instead of racing."""
    import fcntl

    from dad_ray.data.prepare import _lock

    with _lock(str(tmp_path), "train"):
        with open(tmp_path / ".train.lock") as other:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with open(tmp_path / ".test.lock", "w") as free:  # another split is not blocked
            fcntl.flock(free, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(tmp_path / ".train.lock") as after:
        fcntl.flock(after, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released
