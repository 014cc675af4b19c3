"""Conversions on a real local Ray: an interrupted conversion finishes only its missing shards, a benchmark archive
(./-prefixed tar + list) reads back at the benchmark's crop, and an unlabeled image folder distils end to end in the
smoke preset."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from dad_ray.data import prepare_shards, read_shards
from dad_ray.data.fixtures import scene
from dad_ray.data.prepare import PROGRESS_DIR, EncodeOptions, _plan, convert_shard, fingerprint_of
from dad_ray.data.sources import open_source

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    from dad_ray.runtime import init_ray

    init_ray(4)
    yield
    ray.shutdown()


def image_folder(root, count: int, height: int, width: int) -> None:
    """SA-1B's layout: sa_N.jpg with a JSON side file each, in two sub-directories."""
    for i in range(count):
        directory = os.path.join(root, f"sa_{i % 2:06d}")
        os.makedirs(directory, exist_ok=True)
        Image.fromarray(scene(i, height, width)[0]).save(os.path.join(directory, f"sa_{i}.jpg"), quality=90)
        with open(os.path.join(directory, f"sa_{i}.json"), "w") as f:
            f.write('{"annotations": []}')


def test_interrupted_conversion_finishes_only_the_missing_shards(tmp_path):
    image_folder(tmp_path / "imgs", 12, 24, 32)
    source, out = str(tmp_path / "imgs"), str(tmp_path / "out")
    split_dir = tmp_path / "out" / "train"
    # what a killed job leaves: the plan, and shards 0 and 2 finished (written by the same task function)
    src = open_source(source, "train")
    refs, opts = src.refs(), EncodeOptions()
    sizes = [os.path.getsize(os.path.join(source, r.split("\t")[1])) for r in refs[:4]]  # what the plan probes
    shard_bytes = int(2.5 * sum(sizes) / 4)  # -> ceil(2.5) = 3 rows per shard, 4 shards
    plan = _plan(str(split_dir), src, refs, fingerprint_of(src, "train", opts), opts, shard_bytes)
    rows = plan["rows_per_shard"]
    assert rows == 3 and plan["num_shards"] == 4, plan
    for shard in (0, 2):
        convert_shard(
            {"shard": shard, "start": shard * rows, "refs": refs[shard * rows : (shard + 1) * rows]},
            src,
            opts,
            str(split_dir),
        )
    stamps = {n: os.stat(split_dir / f"part-0000{n}.parquet") for n in (0, 2)}
    assert not (split_dir / "manifest.json").exists()

    manifest = prepare_shards(source, out, "train", shard_bytes=shard_bytes, progress=False)
    for n, before in stamps.items():  # the finished shards were not converted again
        after = os.stat(split_dir / f"part-0000{n}.parquet")
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [s["file"] for s in manifest["shards"]] == [f"part-{i:05d}.parquet" for i in range(plan["num_shards"])]
    assert manifest["num_samples"] == 12 and manifest["has_depth"] is False and manifest["dataset"] is None
    assert not (split_dir / PROGRESS_DIR).exists()
    got = read_shards(out, "train").take_all()
    assert sorted(r["index"] for r in got) == list(range(12)) and "depth" not in got[0]
    by_key = {r["key"]: r for r in got}
    original = np.asarray(Image.open(tmp_path / "imgs" / "sa_000001" / "sa_5.jpg").convert("RGB"))
    np.testing.assert_array_equal(by_key["sa_000001/sa_5"]["image"], original)  # the file's own bytes, decoded


def test_kitti_archive_reads_back_cropped_with_rows_counted(tmp_path):
    h, w = 375, 1242
    members = {}
    lines = []
    for i in range(3):
        image = scene(i, h, w)[0]
        raw = np.zeros((h, w), np.uint16)
        raw[h - 1, 13 + i] = 256 * (i + 1)  # (i + 1) m at the crop's last row, column i
        for name, array in ((f"rgb/{i}.png", image), (f"depth/{i}.png", raw)):
            buf = io.BytesIO()
            Image.fromarray(array).save(buf, format="PNG")
            members[name] = buf.getvalue()
        lines.append(f"rgb/{i}.png depth/{i}.png 721.5377")
    lines.insert(1, "rgb/9.png None 721.5377")
    with tarfile.open(tmp_path / "kitti.tar", "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    (tmp_path / "eigen.txt").write_text("\n".join(lines) + "\n")
    out = str(tmp_path / "kitti")
    manifest = prepare_shards(
        str(tmp_path / "kitti.tar"), out, "test", fmt="kitti", filenames=str(tmp_path / "eigen.txt"), progress=False
    )
    assert manifest["dataset"] == "kitti" and manifest["rows_without_depth"] == 1 and manifest["num_samples"] == 3
    assert manifest["crop"] == {"name": "kitti_benchmark", "height": 352, "width": 1216, "stored": True}
    on_disk = json.loads((tmp_path / "kitti" / "test" / "manifest.json").read_text())
    assert on_disk["dataset"] == "kitti"
    for row in read_shards(out, "test").take_all():
        i = int(row["key"].split("/")[1])
        assert row["image"].shape == (352, 1216, 3) and row["depth"].shape == (352, 1216)
        np.testing.assert_array_equal(row["image"], scene(i, h, w)[0][23:, 13:1229])
        assert row["depth"][351, i] == i + 1 and (row["depth"] > 0).sum() == 1


def test_unlabeled_folder_distils_end_to_end_in_the_smoke_preset(tmp_path, smoke_assets):
    from dad_ray.train import run_experiment

    image_folder(tmp_path / "photos", 24, 120, 160)
    manifest = prepare_shards(str(tmp_path / "photos"), str(tmp_path / "shards"), "train", progress=False)
    assert manifest["has_depth"] is False and manifest["num_samples"] == 24
    cfg = smoke_assets.config(
        tmp_path / "runs", "unlabeled_folder", **{"data.train_sources": [{"root": str(tmp_path / "shards")}]}
    )
    metrics = run_experiment(cfg)
    assert set(metrics) >= {"teacher", "student", "untrained_student"}
    assert metrics["student"]["n_images"] == 8 and np.isfinite(metrics["student"]["abs_rel"])
    assert metrics["_info"]["split"].endswith("test")
    journal = [json.loads(line) for line in (tmp_path / "runs" / "unlabeled_folder" / "progress.jsonl").open()]
    assert max(e.get("step", 0) for e in journal) == cfg.optim.max_steps


def test_training_mixture_of_a_labeled_and_an_unlabeled_set(tmp_path):
    """data.train_sources through the Ray Data training pipeline: each epoch draws the row groups the weights give
    (labeled 20 rows = 2 groups, unlabeled 32 rows = 2 groups; weights 1:3 over 52 rows -> 1 labeled group
    (round(13 / 10)) and 2 unlabeled (round(39 / 16))), unlabeled rows come with all-invalid depth."""
    from dad_ray.config.schema import DataConfig, TrainSource
    from dad_ray.data import train_batches, train_dataset

    root = str(tmp_path / "mix")
    prepare_shards("synthetic:20", root, "labeled", height=32, width=48, progress=False)
    prepare_shards("synthetic:32", root, "unlabeled", height=32, width=48, depth=False, progress=False)
    cfg = DataConfig(
        root=root,
        train_sources=(TrainSource(root, "labeled", 1.0), TrainSource(root, "unlabeled", 3.0)),
        batch_size=4, crop_size=28, min_crop=24, global_size=(28, 42), local_patch_size=14, shuffle_buffer=0,
        data_cpus=0.5, prefetch_batches=1,
    )  # fmt: skip
    ds = train_dataset(cfg, seed=0)
    for epoch in range(2):
        has_depth = [bool(m.any()) for b in train_batches(ds, cfg, epoch, seed=0) for m in b["crop_mask"]]
        assert has_depth.count(False) == 32  # both unlabeled row groups: 16 + 16 rows without depth
        assert has_depth.count(True) in (4, 16)  # one labeled row group (16 or the last 4 rows of 20)
