"""Source -> shards -> rows on a real local Ray: every source format, bad inputs, --skip-bad, atomic and idempotent
re-runs, manifest validation, pyarrow URIs, and the train / eval pipelines."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from dad_ray import runtime
from dad_ray.config.schema import DataConfig, SyntheticConfig
from dad_ray.data import (
    DataError,
    StaleShardsError,
    ensure_synthetic,
    eval_dataset,
    prepare_shards,
    read_shards,
    train_batches,
    train_dataset,
)
from dad_ray.data.fixtures import scene, write_folders, write_mat, write_sync
from dad_ray.data.shards import read_row_group, row_groups, shard_files

ray = pytest.importorskip("ray")

H, W = 24, 32


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    with runtime.ray_session(4, dashboard=False, log_to_driver=False):
        yield


def rows_by_key(path: str, split: str | None = None) -> dict[str, dict]:
    return {r["key"]: r for r in read_shards(path, split).take_all()}


def prep(source: str, out, split: str = "train", **kw):
    return prepare_shards(source, str(out), split, progress=False, **kw)


def test_mat_round_trip(tmp_path):
    mat = str(tmp_path / "nyu_depth_v2_labeled.mat")
    write_mat(mat, 5, H, W)
    manifest = prep(mat, tmp_path / "out", "all", image_format="png")
    assert manifest["num_samples"] == 5 and manifest["split"] == "all" and manifest["skipped"] == []
    rows = rows_by_key(str(tmp_path / "out"), "all")
    assert sorted(rows) == [f"nyu_{i:04d}" for i in range(1, 6)]
    for i in range(5):
        image, depth = scene(i, H, W)
        row = rows[f"nyu_{i + 1:04d}"]
        np.testing.assert_array_equal(row["image"], image)  # PNG: lossless
        np.testing.assert_array_equal(row["depth"], depth)  # float32: lossless
        assert row["index"] == i


def test_folder_round_trip_jpeg(tmp_path):
    write_folders(str(tmp_path / "src"), {"train": 3, "test": 2}, H, W)
    manifest = prep(str(tmp_path / "src"), tmp_path / "out", "test")
    assert manifest["num_samples"] == 2 and manifest["image_format"] == "jpeg"
    rows = rows_by_key(str(tmp_path / "out" / "test"))
    for i, key in enumerate(sorted(rows)):
        image, depth = scene(3 + i, H, W)
        assert rows[key]["image"].shape == (H, W, 3) and rows[key]["image"].dtype == np.uint8
        assert np.abs(rows[key]["image"].astype(int) - image.astype(int)).mean() < 3  # JPEG q95 4:4:4
        np.testing.assert_allclose(rows[key]["depth"], depth, atol=5e-4 + 1e-7)
        assert rows[key]["depth"].dtype == np.float32


def test_sync_round_trip_via_uri(tmp_path):
    listing = write_sync(str(tmp_path / "sync"), 4, H, W)
    uri = "file://" + str(tmp_path / "out")
    manifest = prep(str(tmp_path / "sync"), uri, "train", filenames=listing, image_format="png")
    assert manifest["num_samples"] == 4
    rows = rows_by_key(uri, "train")
    assert sorted(rows) == sorted(f"scene_{i % 2:02d}/rgb_{i:05d}" for i in range(4))
    np.testing.assert_allclose(rows["scene_01/rgb_00001"]["depth"], scene(1, H, W)[1], atol=5e-4 + 1e-7)


def test_synthetic_round_trip_and_checksums(tmp_path):
    manifest = prep("synthetic:6", tmp_path / "out", "train", height=32, width=40, seed=3, shard_bytes=8000)
    assert manifest["num_samples"] == 6 and len(manifest["shards"]) > 1  # rolled over by size
    split_dir = tmp_path / "out" / "train"
    for shard in manifest["shards"]:
        data = (split_dir / shard["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
    rows = read_shards(str(split_dir)).take_all()
    assert sorted(r["index"] for r in rows) == list(range(6))
    assert rows[0]["depth"].shape == (32, 40) and (rows[0]["depth"] == 0).any()


def test_bad_input_stops_the_job_naming_the_file(tmp_path):
    write_folders(str(tmp_path / "src"), {"train": 4}, H, W, npy_every=0)
    path = tmp_path / "src" / "train" / "rgb" / "00002.png"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DataError, match=r"train/rgb/00002\.png: unreadable or truncated image"):
        prep(str(tmp_path / "src"), tmp_path / "out")
    assert not (tmp_path / "out" / "train" / "manifest.json").exists()  # nothing a reader would trust
    with pytest.raises(DataError, match="no manifest"):
        read_shards(str(tmp_path / "out"), "train")


def test_skip_bad_records_every_skipped_file(tmp_path):
    write_folders(str(tmp_path / "src"), {"train": 5}, H, W, npy_every=0)
    rgb, dep = tmp_path / "src" / "train" / "rgb", tmp_path / "src" / "train" / "depth"
    (rgb / "00001.png").write_bytes((rgb / "00001.png").read_bytes()[:60])  # truncated
    os.remove(dep / "00003.png")  # missing partner
    os.remove(dep / "00004.png")
    np.save(dep / "00004.npy", np.zeros((H, W), np.float32))  # no valid pixel
    manifest = prep(str(tmp_path / "src"), tmp_path / "out", skip_bad=True)
    assert manifest["num_samples"] == 2
    reasons = {os.path.basename(s["key"]): s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"00001.png", "00003.png", "00004.png"}
    assert "unreadable or truncated" in reasons["00001.png"]
    assert "missing partner depth" in reasons["00003.png"]
    assert "no valid pixel" in reasons["00004.png"]
    assert sorted(rows_by_key(str(tmp_path / "out"), "train")) == ["train/00000", "train/00002"]
    on_disk = json.loads((tmp_path / "out" / "train" / "manifest.json").read_text())
    assert on_disk["skipped"] == manifest["skipped"]


def test_rerun_is_idempotent_and_other_source_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    first = prep("synthetic:3", out, height=32, width=40)
    part = out / "train" / first["shards"][0]["file"]
    stamp = part.stat().st_mtime_ns
    assert prep("synthetic:3", out, height=32, width=40) == first
    assert part.stat().st_mtime_ns == stamp  # nothing rewritten
    with pytest.raises(DataError, match="--overwrite"):
        prep("synthetic:4", out, height=32, width=40)
    assert prep("synthetic:4", out, height=32, width=40, overwrite=True)["num_samples"] == 4


def test_reader_trusts_only_the_manifest(tmp_path):
    out = tmp_path / "out"
    manifest = prep("synthetic:3", out, height=32, width=40)
    split_dir = out / "train"
    shutil.copy(split_dir / "part-00000.parquet", split_dir / "part-00007.parquet")  # a crash's leftover
    assert read_shards(str(out), "train").count() == 3
    (split_dir / "part-00000.parquet").write_bytes(b"garbage")
    with pytest.raises(DataError, match="part-00000.parquet: checksum does not match"):
        read_shards(str(out), "train", verify=True)
    os.remove(split_dir / "part-00000.parquet")
    with pytest.raises(DataError, match=r"part-00000\.parquet: listed in the manifest but missing"):
        read_shards(str(out), "train")
    bad = dict(manifest, schema_version=0)
    (split_dir / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match="schema version 0 is not supported"):
        read_shards(str(out), "train")


def data_cfg(root: str, **kw) -> DataConfig:
    base = dict(
        root=root,
        batch_size=4,
        crop_size=28,
        min_crop=24,
        global_size=(28, 42),
        local_patch_size=14,
        shuffle_buffer=8,
        data_cpus=0.5,
        prefetch_batches=1,
        synthetic=SyntheticConfig(train_samples=12, val_samples=5, height=32, width=48, seed=0),
    )
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth") / "data")
    cfg = data_cfg(root)
    ensure_synthetic(root, cfg.synthetic, splits=("train", "test"), progress=False, shard_bytes=20_000)
    return root


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def test_ensure_synthetic_is_idempotent(synth_root):
    cfg = data_cfg(synth_root)
    before = read_json(os.path.join(synth_root, "train", "manifest.json"))
    ensure_synthetic(synth_root, cfg.synthetic, splits=("train", "test"), progress=False)
    assert read_json(os.path.join(synth_root, "train", "manifest.json")) == before
    assert before["num_samples"] == 12 and len(before["shards"]) > 1
    assert read_json(os.path.join(synth_root, "test", "manifest.json"))["num_samples"] == 5
    other = dataclasses.replace(cfg.synthetic, train_samples=13)
    with pytest.raises(StaleShardsError, match=r"split 'train' holds synthetic shards made with other settings"):
        ensure_synthetic(synth_root, other, splits=("train", "test"), progress=False)


def epoch_rows(ds, cfg, epoch):
    out, order = {}, []
    for batch in train_batches(ds, cfg, epoch, seed=0):
        for i, idx in enumerate(batch["index"].tolist()):
            out[idx] = float(batch["crop_depth"][i].sum())
            order.append(idx)
    return out, order


def test_train_dataset_shapes_and_reproducibility(synth_root):
    cfg = data_cfg(synth_root)
    batch = next(iter(train_batches(train_dataset(cfg, seed=0), cfg, 0)))
    assert tuple(batch["crop_image"].shape) == (4, 3, 28, 28)
    assert tuple(batch["crop_depth"].shape) == (4, 28, 28) and str(batch["crop_mask"].dtype) == "torch.bool"
    assert tuple(batch["global_image"].shape) == (4, 3, 28, 42)
    assert tuple(batch["global_depth"].shape) == (4, 28, 42)
    assert tuple(batch["local_images"].shape) == (4, 4, 3, 14, 14)
    assert tuple(batch["local_boxes"].shape) == (4, 4, 4)
    e0, order0 = epoch_rows(train_dataset(cfg, seed=0), cfg, 0)
    again, order_again = epoch_rows(train_dataset(cfg, seed=0), cfg, 0)
    assert len(order0) == 12  # 12 rows, batch 4, nothing dropped
    assert e0 == again and order0 == order_again  # same seed: same rows, same order, same augmentation
    ds = train_dataset(cfg, seed=0)
    first, _ = epoch_rows(ds, cfg, 0)
    second, _ = epoch_rows(ds, cfg, 1)
    assert first == e0
    assert second != first and sorted(second) == sorted(first)  # a new epoch: new augmentation, same rows


def test_eval_dataset_order_and_shapes(synth_root):
    cfg = data_cfg(synth_root)
    batches = list(eval_dataset(cfg, input_size=28, max_samples=4).iter_torch_batches(batch_size=2))
    assert [b["index"].tolist() for b in batches] == [[0, 1], [2, 3]]
    assert tuple(batches[0]["image"].shape) == (2, 3, 28, 42)
    assert tuple(batches[0]["depth"].shape) == (2, 32, 48) and tuple(batches[0]["rgb"].shape) == (2, 32, 48, 3)
    keyed = eval_dataset(cfg, input_size=28, keys=True).take_all()
    assert [r["key"] for r in keyed] == [f"synthetic_test_{i:06d}" for i in range(5)]
    stored = rows_by_key(synth_root, "test")
    np.testing.assert_array_equal(keyed[2]["depth"], stored["synthetic_test_000002"]["depth"])


def stored_units(root: str, split: str = "train") -> list[list[int]]:
    """The ``index`` of every row of every unit of work (a Parquet row group), units in shard order, rows in stored
    order."""
    manifest, files, fs = shard_files(root, split)
    return [read_row_group(fs, u["path"], u["row_group"])["index"] for u in row_groups(manifest, files)]


def unit_sequence(order: list[int], units: list[list[int]]) -> list[int]:
    """The units (positions in ``units``) in the order the rows came, after checking that the rows came unit by
    unit: each unit once, whole, its rows in stored order."""
    unit_of = {index: u for u, rows in enumerate(units) for index in rows}
    seq = [unit_of[index] for index in order]
    sequence = [u for k, u in enumerate(seq) if k == 0 or seq[k - 1] != u]
    assert sorted(sequence) == list(range(len(units))), sequence  # every unit exactly once, in one contiguous run
    assert order == [index for u in sequence for index in units[u]]  # ... with its rows in stored order
    return sequence


def test_no_shuffle_buffer(synth_root):
    """With ``shuffle_buffer=0`` rows come unit by unit (row group by row group, rows in stored order), the units in
    the order ``randomize_block_order`` draws from (seed, the dataset's execution index = epoch): the same order for
    the same seed and epoch whichever dataset object runs it, and a new one every epoch and for another seed."""
    cfg = dataclasses.replace(data_cfg(synth_root), shuffle_buffer=0)
    units = stored_units(synth_root)
    assert len(units) >= 4 and sorted(i for rows in units for i in rows) == list(range(12))  # the check has teeth
    first, second = train_dataset(cfg, seed=0), train_dataset(cfg, seed=0)
    epochs_first = [epoch_rows(first, cfg, epoch) for epoch in range(2)]  # executions 0 and 1 of one dataset
    epochs_second = [epoch_rows(second, cfg, epoch) for epoch in range(2)]
    orders = [order for _rows, order in epochs_first]
    sequences = [unit_sequence(order, units) for order in orders]
    assert epochs_second == epochs_first  # same seed, same epoch: same order and same rows, in another dataset
    assert sequences[1] != sequences[0]  # the unit order is drawn again every epoch
    other_seed = unit_sequence(epoch_rows(train_dataset(cfg, seed=1), cfg, 0)[1], units)
    assert other_seed != sequences[0]
    # no buffer: train_batches' epoch argument (the buffer's seed) plays no part; the execution index alone does
    assert epoch_rows(train_dataset(cfg, seed=0), cfg, 7)[1] == orders[0]
