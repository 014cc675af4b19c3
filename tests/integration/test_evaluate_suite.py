"""``jobs/evaluate.py --suite`` end to end on a local Ray: two benchmarks written in their community formats (NYUv2:
PNG RGB + 16-bit PNG millimetres; DIODE: .npy metres + .npy validity mask) and converted by the data module's own
benchmark readers; two checkpoints that record their evaluation input sizes (one given as a file:// URI, fetched by
the actors); then prediction of images and weights given as URIs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dad_ray import runtime
from dad_ray.data import prepare_shards
from dad_ray.data.fixtures import scene
from dad_ray.metrics import MetricAccumulator, evaluate_disparity
from dad_ray.models import create_model, load_weights, predict_disparity, save_weights
from dad_ray.models.weights import EvalSettings

H, W, N = 48, 64, 3


@pytest.fixture(scope="module")
def ray_session():
    with runtime.ray_session(4, dashboard=False, log_to_driver=False):
        yield


def _write_nyu(root, samples):
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    lines = []
    for i, (image, depth) in enumerate(samples):
        Image.fromarray(image).save(root / "rgb" / f"{i}.png")
        Image.fromarray(np.round(depth * 1000).astype(np.uint16)).save(root / "depth" / f"{i}.png")  # millimetres
        lines.append(f"rgb/{i}.png depth/{i}.png")
    (root / "list.txt").write_text("\n".join(lines) + "\n")


def _write_diode(root, samples):
    root.mkdir(parents=True)
    lines = []
    for i, (image, depth) in enumerate(samples):
        Image.fromarray(image).save(root / f"{i}_rgb.png")
        np.save(root / f"{i}_depth.npy", depth[..., None])  # (H, W, 1) metres, as DIODE ships it
        mask = np.ones((H, W), np.uint8)
        mask[: H // 4] = 0  # an invalid band: depth 0 after conversion
        np.save(root / f"{i}_depth_mask.npy", mask)
        lines.append(f"{i}_rgb.png {i}_depth.npy {i}_depth_mask.npy")
    (root / "list.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def suite(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("suite")
    nyu = [scene(i, H, W) for i in range(N)]
    nyu = [(im, (np.round(np.clip(d, 0.5, 9.0) * 1000) / 1000).astype(np.float32)) for im, d in nyu]  # whole mm
    diode = [(im, np.clip(d * 3.0, 1.0, 30.0).astype(np.float32)) for im, d in (scene(10 + i, H, W) for i in range(N))]
    _write_nyu(root / "src" / "nyu", nyu)
    _write_diode(root / "src" / "diode", diode)
    for name in ("nyu", "diode"):
        src = root / "src" / name
        prepare_shards(str(src), str(root / "bench" / name), "test", filenames=str(src / "list.txt"), fmt=name,
                       progress=False)  # fmt: skip
    models = {}
    for label, seed, size in (("teacher", 0, 56), ("student", 1, 112)):
        torch.manual_seed(seed)
        model = create_model("dav2_micro")
        models[label] = save_weights(model, root / f"{label}.safetensors", EvalSettings(size, "nyu", "disparity"))
    diode_gt = [np.where(np.arange(H)[:, None] >= H // 4, d, 0.0).astype(np.float32) for _, d in diode]
    return root, {"nyu": nyu, "diode": [(im, d) for (im, _), d in zip(diode, diode_gt)]}, models


def _expected(samples, weights, input_size, protocol):
    model = create_model("dav2_micro")
    load_weights(model, weights)
    acc = MetricAccumulator()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each CPU actor on 2 cores runs (the thread count changes the convolutions' sums)
    try:
        for image, depth in samples:
            pred = predict_disparity(model, image[None], input_size)
            acc.add(*evaluate_disparity(torch.from_numpy(pred), torch.from_numpy(depth)[None], protocol, "disparity"))
    finally:
        torch.set_num_threads(threads)
    return acc.compute()


def test_suite_table5_with_checkpoint_input_sizes(suite, tmp_path, capsys):
    from jobs.evaluate import main

    root, samples, models = suite
    out = tmp_path / "table5.json"
    student_uri = models["student"].as_uri()  # file://: fetched by each actor, not opened by the driver
    argv = ["--suite", str(root / "bench"), "--checkpoint", str(models["teacher"]), "--checkpoint", student_uri]
    assert main([*argv, "--label", "teacher", "--label", "student", "--batch-size", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(s["name"], s["protocol"], s["protocol_from"]) for s in result["sets"]] == [
        ("nyu", "nyu", "manifest"),
        ("diode", "diode", "manifest"),
    ]
    # no --input-size: each checkpoint is evaluated at the size it recorded (the student at 112)
    assert result["models"]["student"]["input_size"] == 112 and result["models"]["teacher"]["input_size"] == 56
    assert result["models"]["student"]["settings_from"]["input_size"] == "checkpoint"
    for name in ("nyu", "diode"):
        for label, size in (("teacher", 56), ("student", 112)):
            got = result["results"][name][label]
            expected = _expected(samples[name], models[label], size, name)
            assert got["n_images"] == N and got["input_size"] == size
            for k in ("abs_rel", "d1", "rmse"):
                assert got[k] == pytest.approx(expected[k], rel=1e-4, abs=1e-6), (name, label, k)
    printed = capsys.readouterr().out
    assert "| model | NYUv2 AbsRel ↓ | NYUv2 δ1 ↑ | DIODE AbsRel ↓ | DIODE δ1 ↑ |" in printed
    row = next(line for line in printed.splitlines() if line.startswith("| student |"))
    nyu = result["results"]["nyu"]["student"]
    assert row.startswith(f"| student | {nyu['abs_rel']:.3f} | {nyu['d1']:.3f} |")
    assert "student: dav2_micro, input size 112 (checkpoint)" in printed


def test_predict_reads_images_and_weights_where_they_are(suite, tmp_path):
    """Images and weights given as file:// URIs: the Ray tasks read the images, the actors fetch the weights; the
    outputs equal a local prediction and keep the input names."""
    from dad_ray.inference import PredictOptions, predict_inputs

    root, samples, models = suite
    opts = PredictOptions("dav2_micro", models["student"].as_uri(), str(tmp_path / "out"), input_size=112)
    summary = predict_inputs([(root / "src" / "nyu" / "rgb").as_uri()], opts)
    assert summary.written == N
    model = create_model("dav2_micro")
    load_weights(model, models["student"])
    for i, (image, _depth) in enumerate(samples["nyu"]):
        got = np.load(tmp_path / "out" / f"{i}.npy")
        np.testing.assert_allclose(got, predict_disparity(model, image[None], 112)[0], rtol=1e-5, atol=1e-6)
