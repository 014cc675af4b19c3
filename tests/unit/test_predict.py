"""Inference pre-processing, the DepthPredictor actor, colour maps / grids, and jobs/predict.py end to end."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from dad_ray import runtime
from dad_ray.data import DataError
from dad_ray.inference import PredictOptions, collect_images, predict_inputs, run_predict
from dad_ray.models import DepthPredictor, create_model, network_input_size, predict_disparity, save_weights
from dad_ray.models.inference import preprocess
from dad_ray.viz import colorize, make_grid

REPO = Path(__file__).resolve().parents[2]
SIZES = {"a.png": (42, 56), "b.jpg": (42, 56), "sub/c.png": (30, 20)}
INPUT = 28  # short side of the network input (a multiple of 14) — tiny, for speed


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("dav2_micro")
    with torch.no_grad():
        model.depth_head.scratch.output_conv2[2].weight.abs_().mul_(10.0)
        model.depth_head.scratch.output_conv2[2].bias.fill_(0.1)
    return save_weights(model, tmp_path_factory.mktemp("ckpt") / "micro.safetensors")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
    return root


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize(
    "hw, size, expected",
    [
        ((480, 640), 518, (518, 686)),
        ((518, 518), 518, (518, 518)),
        ((640, 480), 518, (686, 518)),
        ((100, 1000), 28, (28, 280)),
        ((375, 1242), 518, (518, 1722)),
    ],
)
def test_network_input_size_lower_bound_multiple_of_14(hw, size, expected):
    assert network_input_size(*hw, size) == expected
    with pytest.raises(ValueError, match="multiple of 14"):
        network_input_size(*hw, 500)


def test_predict_disparity_equals_model_on_network_sized_input(checkpoint):
    model = create_model("dav2_micro")
    from dad_ray.models import load_weights

    load_weights(model, checkpoint)
    images = np.random.default_rng(1).integers(0, 256, (2, 28, 42, 3), dtype=np.uint8)
    out = predict_disparity(model, images, input_size=28)  # already network-sized: no resize either way
    x = (
        torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    ) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    assert out.dtype == np.float32 and out.shape == (2, 28, 42)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    bf16 = predict_disparity(model, images, input_size=28, amp_dtype=torch.bfloat16)
    assert bf16.dtype == np.float32 and np.abs(bf16 - out).max() < 0.05 * np.abs(out).max()
    resized = predict_disparity(model, images, input_size=56)  # predicted at 56x84, returned at 28x42
    assert resized.shape == (2, 28, 42)
    assert preprocess(torch.from_numpy(images), (56, 84)).shape == (2, 3, 56, 84)
    with pytest.raises(ValueError, match="uint8"):
        predict_disparity(model, images.astype(np.float32), 28)


def test_depth_predictor_mixed_sizes_and_ray_batch_contract(checkpoint):
    predictor = DepthPredictor("dav2_micro", checkpoint, input_size=INPUT, device="cpu", batch_size=2)
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, s + (3,), dtype=np.uint8) for s in [(42, 56), (30, 20), (42, 56), (42, 56)]]
    out = predictor.predict(images)
    assert [d.shape for d in out] == [(42, 56), (30, 20), (42, 56), (42, 56)]
    for image, disparity in zip(images, out):
        np.testing.assert_allclose(predictor.predict([image])[0], disparity, rtol=1e-5, atol=1e-6)
    same = predictor({"image": np.stack([images[0], images[2]]), "id": np.array([7, 8])})
    assert same["disparity"].shape == (2, 42, 56) and "image" not in same and list(same["id"]) == [7, 8]
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = images[0], images[1]
    mixed = predictor({"image": ragged})
    assert mixed["disparity"].dtype == object and mixed["disparity"][1].shape == (30, 20)


def test_colorize_range_nan_and_constant():
    cmap = matplotlib.colormaps["Spectral_r"]
    d = np.linspace(0.0, 1.0, 100, dtype=np.float32).reshape(10, 10)
    d[0, 0] = np.nan
    rgb = colorize(d, vmin=0.2, vmax=0.8)
    assert rgb.shape == (10, 10, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 0] == 0).all()  # non-finite → black
    assert (rgb[9, 9] == np.array(cmap(1.0, bytes=True)[:3])).all()  # above vmax → top colour
    assert (rgb[0, 1] == np.array(cmap(0.0, bytes=True)[:3])).all()  # below vmin → bottom colour
    robust = colorize(np.concatenate([np.zeros((10, 10)), np.full((1, 10), 1e6)]))  # outlier row ignored by range
    assert (robust[0, 0] == np.array(cmap(0.0, bytes=True)[:3])).all()
    assert colorize(np.ones((4, 5))).shape == (4, 5, 3)
    with pytest.raises(ValueError, match="H, W"):
        colorize(np.zeros((2, 2, 2)))


def test_make_grid_layout():
    a = np.full((4, 6, 3), 10, np.uint8)
    b = np.full((2, 3), 200, np.uint8)
    grid = make_grid([[a, b], [b]], pad=1, fill=255)
    assert grid.shape == (2 * 4 + 1, 2 * 6 + 1, 3) and grid.dtype == np.uint8
    assert (grid[:4, :6] == 10).all() and (grid[:2, 7:10] == 200).all()
    assert (grid[4] == 255).all() and (grid[5:9, 7:] == 255).all()  # padding row and the missing cell
    with pytest.raises(ValueError, match=r"\[1\]\[0\]"):
        make_grid([[a], [a.astype(np.float32)]])


def _run_job(argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("predict_job", REPO / "jobs" / "predict.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job.main(argv)


def _check_outputs(out: Path, image_dir: Path, checkpoint: Path) -> dict[str, np.ndarray]:
    predictor = DepthPredictor("dav2_micro", checkpoint, input_size=INPUT, device="cpu")
    results = {}
    for name, (h, w) in SIZES.items():
        stem = out / Path(name).with_suffix("")
        disparity = np.load(stem.with_suffix(".npy"))
        assert disparity.shape == (h, w) and disparity.dtype == np.float32
        np.testing.assert_allclose(disparity, predictor.predict([_rgb(image_dir / name)])[0], rtol=1e-5, atol=1e-6)
        png = Image.open(stem.with_suffix(".png"))
        assert png.size == (w, h) and png.mode == "RGB"
        results[name] = disparity
    return results


def test_predict_job_local_end_to_end(tmp_path, image_dir, checkpoint):
    out = tmp_path / "out"
    argv = [str(image_dir), "--checkpoint", str(checkpoint), "--out", str(out), "--input-size", str(INPUT)]
    assert _run_job(argv + ["--batch-size", "2", "--ray", "off"]) == 0  # --model inferred from the file
    _check_outputs(out, image_dir, checkpoint)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "a.npy",
        "a.png",
        "b.npy",
        "b.png",
        "sub",
        "sub/c.npy",
        "sub/c.png",
    ]


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory, image_dir):
    """Two good images and, between them in input order, a corrupt ``.jpg`` (a truncated JPEG: its first 200 bytes)."""
    root = tmp_path_factory.mktemp("bad_images")
    for name in ("a.png", "b.jpg"):
        (root / name).write_bytes((image_dir / name).read_bytes())
    (root / "a_broken.jpg").write_bytes((image_dir / "b.jpg").read_bytes()[:200])
    return root


def _run_cli(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / "predict.py"), *argv], capture_output=True, text=True, cwd=REPO
    )


def _check_bad_dir(out: Path, bad_dir: Path, checkpoint: Path, skipped: bool) -> None:
    """``out`` holds a.npy/.png and b.npy/.png predicted from ``bad_dir``; with ``skipped`` also a skipped.json
    naming a_broken.jpg (and nothing else)."""
    predictor = DepthPredictor("dav2_micro", checkpoint, input_size=INPUT, device="cpu")
    for name in ("a.png", "b.jpg"):
        stem = out / Path(name).with_suffix("")
        np.testing.assert_allclose(
            np.load(stem.with_suffix(".npy")), predictor.predict([_rgb(bad_dir / name)])[0], rtol=1e-5, atol=1e-6
        )
        assert stem.with_suffix(".png").is_file()
    expected = ["a.npy", "a.png", "b.npy", "b.png"] + (["skipped.json"] if skipped else [])
    assert sorted(p.name for p in out.iterdir()) == expected
    if skipped:
        entries = json.loads((out / "skipped.json").read_text())
        assert [e["path"] for e in entries] == [str((bad_dir / "a_broken.jpg").resolve())]
        assert entries[0]["reason"]


def _opts(checkpoint: Path, out: Path, skip_bad: bool) -> PredictOptions:
    return PredictOptions(
        model="dav2_micro",
        checkpoint=str(checkpoint),
        out=str(out),
        input_size=INPUT,
        batch_size=2,
        device="cpu",
        skip_bad=skip_bad,
    )


def test_predict_cli_corrupt_image_local(tmp_path, bad_dir, checkpoint):
    base = [str(bad_dir), "--checkpoint", str(checkpoint), "--input-size", str(INPUT), "--ray", "off"]
    failed = _run_cli(base + ["--out", str(tmp_path / "strict")])
    assert failed.returncode == 2, failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert "Traceback" not in failed.stderr
    assert lines[-1].startswith(f"predict: error: {(bad_dir / 'a_broken.jpg').resolve()}: cannot read image (")
    # the good image before it in input order (a.png) is written, none after it (b.jpg)
    assert sorted(p.name for p in (tmp_path / "strict").iterdir()) == ["a.npy", "a.png"]

    out = tmp_path / "skip"
    done = _run_cli(base + ["--out", str(out), "--skip-bad"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("wrote 2 depth map(s)")
    assert "skipped 1 unreadable input(s)" in done.stdout
    assert "skipped: " in done.stderr and "a_broken.jpg" in done.stderr  # the warning
    _check_bad_dir(out, bad_dir, checkpoint, skipped=True)


def test_collect_images_globs_collisions_and_empty(tmp_path, image_dir):
    files, root = collect_images([str(image_dir / "**" / "*.png")])
    assert [p.name for p in files] == ["a.png", "c.png"] and root == image_dir.resolve()
    (tmp_path / "x.png").write_bytes((image_dir / "a.png").read_bytes())
    (tmp_path / "x.jpg").write_bytes((image_dir / "b.jpg").read_bytes())
    with pytest.raises(ValueError, match=r"x\.npy"):
        collect_images([str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        collect_images([str(tmp_path / "nothing_here" / "*.png")])


@pytest.fixture(scope="module")
def ray_cluster():
    with runtime.ray_session(4, dashboard=False):
        yield


@pytest.mark.slow  # starts a local Ray
def test_predict_with_ray_data_matches_local(tmp_path, image_dir, checkpoint, ray_cluster):
    opts = PredictOptions(
        model="dav2_micro",
        checkpoint=str(checkpoint),
        out=str(tmp_path / "ray"),
        input_size=INPUT,
        batch_size=2,
        device="cpu",
    )
    assert run_predict([str(image_dir)], opts, ray_mode="on") == len(SIZES)
    _check_outputs(tmp_path / "ray", image_dir, checkpoint)


@pytest.mark.slow  # starts a local Ray
def test_predict_with_ray_data_corrupt_image(tmp_path, bad_dir, checkpoint, ray_cluster):
    broken = re.escape(str((bad_dir / "a_broken.jpg").resolve()))
    with pytest.raises(DataError, match=rf"^{broken}: cannot read image \("):
        predict_inputs([str(bad_dir)], _opts(checkpoint, tmp_path / "strict", False), ray_mode="on")
    assert sorted(p.name for p in (tmp_path / "strict").iterdir()) == ["a.npy", "a.png"]
    summary = predict_inputs([str(bad_dir)], _opts(checkpoint, tmp_path / "skip", True), ray_mode="on")
    assert summary.written == 2 and [Path(e["path"]).name for e in summary.skipped] == ["a_broken.jpg"]
    _check_bad_dir(tmp_path / "skip", bad_dir, checkpoint, skipped=True)


@pytest.mark.slow  # builds shards with dad_ray.data's Ray pipeline first
def test_predict_shard_directory(tmp_path, checkpoint, ray_cluster):
    from dad_ray.data import prepare_shards, read_shards

    prepare_shards("synthetic:2", str(tmp_path / "shards"), "test", height=42, width=56, progress=False)
    rows = {r["key"]: r["image"] for r in read_shards(str(tmp_path / "shards" / "test")).take_all()}
    opts = PredictOptions(
        model="dav2_micro",
        checkpoint=str(checkpoint),
        out=str(tmp_path / "out"),
        input_size=INPUT,
        batch_size=2,
        device="cpu",
    )
    assert run_predict([str(tmp_path / "shards" / "test")], opts) == 2
    predictor = DepthPredictor("dav2_micro", checkpoint, input_size=INPUT, device="cpu")
    for key, image in rows.items():
        disparity = np.load(tmp_path / "out" / f"{key}.npy")
        np.testing.assert_allclose(disparity, predictor.predict([image])[0], rtol=1e-5, atol=1e-6)
        assert (tmp_path / "out" / f"{key}.png").is_file()


@pytest.mark.slow  # builds shards with dad_ray.data's Ray pipeline first
def test_predict_shard_directory_corrupt_row(tmp_path, checkpoint, ray_cluster):
    import pyarrow.parquet as pq

    from dad_ray.data import prepare_shards

    prepare_shards("synthetic:3", str(tmp_path / "shards"), "test", height=42, width=56, progress=False)
    shard = tmp_path / "shards" / "test" / "part-00000.parquet"
    table = pq.read_table(shard)
    images = table.column("image").to_pylist()
    images[1] = images[1][:100]  # the second row's JPEG, truncated
    table = table.set_column(table.schema.get_field_index("image"), "image", [images])
    pq.write_table(table, shard, row_group_size=16)
    keys = table.column("key").to_pylist()

    with pytest.raises(DataError, match=rf"^{re.escape(str(shard))} row {keys[1]}: cannot read image \("):
        predict_inputs([str(shard.parent)], _opts(checkpoint, tmp_path / "strict", False))
    assert sorted(p.stem for p in (tmp_path / "strict").glob("*.npy")) == [keys[0]]
    summary = predict_inputs([str(shard.parent)], _opts(checkpoint, tmp_path / "skip", True))
    assert summary.written == 2
    entries = json.loads((tmp_path / "skip" / "skipped.json").read_text())
    assert [(e["path"], e["key"]) for e in entries] == [(str(shard), keys[1])] and entries[0]["reason"]
    assert sorted(p.stem for p in (tmp_path / "skip").glob("*.npy")) == sorted([keys[0], keys[2]])
