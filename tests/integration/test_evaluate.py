"""jobs/evaluate.py end to end on a local Ray: shards written by the data module, a random dav2_micro checkpoint."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from dad_ray import runtime
from dad_ray.data import prepare_shards
from dad_ray.data.fixtures import scene
from dad_ray.metrics import METRIC_KEYS, MetricAccumulator, evaluate_disparity
from dad_ray.models import create_model, load_weights, predict_disparity, save_weights

H, W, N = 48, 64, 5
INPUT_SIZE = 56


@pytest.fixture(scope="module")
def ray_session():
    with runtime.ray_session(4, dashboard=False, log_to_driver=False):
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    src = root / "src" / "test"
    (src / "rgb").mkdir(parents=True)
    (src / "depth").mkdir()
    samples = []
    for i in range(N):
        image, depth = scene(i, H, W)
        depth = np.clip(depth, 0.5, 9.0).astype(np.float32)
        if i == 3:
            depth = np.full((H, W), 20.0, np.float32)  # beyond NYU's 10 m cap: no valid pixel under the protocol
        Image.fromarray(image).save(src / "rgb" / f"{i:05d}.png")
        np.save(src / "depth" / f"{i:05d}.npy", depth)
        samples.append((f"{i:05d}", image, depth))
    weights = root / "micro.safetensors"
    torch.manual_seed(0)
    save_weights(create_model("dav2_micro"), weights)
    return root, samples, weights


def _expected(samples, weights):
    model = create_model("dav2_micro")
    load_weights(model, weights)
    acc = MetricAccumulator()
    for _key, image, depth in samples:
        pred = predict_disparity(model, image[None], INPUT_SIZE)
        acc.add(*evaluate_disparity(torch.from_numpy(pred), torch.from_numpy(depth)[None], "nyu", "disparity"))
    return acc.compute()


def test_evaluate_job(ray_session, setup, tmp_path, capsys):
    from jobs.evaluate import main

    root, samples, weights = setup
    prepare_shards(str(root / "src"), str(root / "shards"), split="test", image_format="png", progress=False)
    out = tmp_path / "metrics.json"
    argv = ["--checkpoint", str(weights), "--model", "dav2_micro", "--data", str(root / "shards"), "--split", "test"]
    argv += ["--input-size", str(INPUT_SIZE), "--batch-size", "2", "--json", str(out), "--actors", "2"]
    argv += ["--tensorboard", str(tmp_path / "tb")]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["n_images"] == N and result["n_invalid"] == 1
    assert len(result["invalid_keys"]) == 1 and "00003" in result["invalid_keys"][0]
    assert result["protocol"] == "nyu" and result["alignment"] == "disparity"
    expected = _expected(samples, weights)
    for k in METRIC_KEYS:
        assert math.isfinite(result[k]), k
        assert result[k] == pytest.approx(expected[k], rel=1e-4, abs=1e-6), k
    printed = capsys.readouterr().out
    assert "alignment in disparity space" in printed and "abs_rel" in printed
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_evaluate_rejects_bad_input(ray_session, setup):
    from dad_ray.inference import evaluate_checkpoint

    root, _samples, weights = setup
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        evaluate_checkpoint(model_name="dav2_micro", weights=str(root / "missing.safetensors"), data=str(root))
    with pytest.raises(ValueError, match="unknown protocol 'nyu3'"):
        evaluate_checkpoint(model_name="dav2_micro", weights=str(weights), data=str(root), protocol="nyu3")
