"""Evaluation without Ray: one resize for validation and the final evaluation, checkpoints that know how they were
evaluated, and the paper's Table 5 layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dad_ray.data.augment import eval_image
from dad_ray.data.fixtures import scene
from dad_ray.inference.evaluate import EvalActor, ModelToEvaluate
from dad_ray.metrics import METRIC_KEYS, evaluate_prediction
from dad_ray.models import create_model, save_weights

H, W, INPUT_SIZE = 45, 61, 56  # odd sizes: the resizes are not trivial


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "micro.safetensors"
    torch.manual_seed(3)
    model = create_model("dav2_micro").eval()
    with torch.no_grad():  # a head bias that keeps the ReLU output positive: the disparity fit sees every pixel
        model.depth_head.scratch.output_conv2[-2].bias.fill_(1.0)
    save_weights(model, path)
    return model, path


def test_validation_and_final_evaluation_give_identical_metrics(micro):
    """The same model and sample through training validation's path (the pipeline's eval_image → the model →
    evaluate_prediction, as the worker does) and through the final evaluation's actor (DepthPredictor inside
    EvalActor) give the same metrics, to the last bit."""
    model, path = micro
    image, depth = scene(7, H, W)
    depth = np.clip(depth, 0.5, 9.0).astype(np.float32)
    with torch.no_grad():
        pred = model(torch.from_numpy(eval_image(image, INPUT_SIZE))[None])  # (1, h, w) at the network input
    per_image, valid = evaluate_prediction(pred, torch.from_numpy(depth)[None], "nyu", "disparity")
    # the same torch thread count on both paths (it changes the summation order of the convolutions)
    actor = EvalActor(
        {"m": ModelToEvaluate("dav2_micro", str(path), INPUT_SIZE, "disparity")},
        "cpu",
        2,
        "nyu",
        torch.get_num_threads(),
    )
    rows = actor({"key": np.array(["a"], dtype=object), "image": image[None], "depth": depth[None]})
    assert valid.item() and bool(rows["valid"][0])
    assert 0 < per_image["abs_rel"].item() < 1
    for k in METRIC_KEYS:
        assert rows[k][0] == per_image[k].item(), k  # identical, not approximately equal


def test_eval_image_does_not_clamp_the_bicubic_overshoot():
    """A hard edge overshoots under bicubic: the official inference (cv2 INTER_CUBIC on floats) keeps it, and so
    does the one evaluation resize (the pipeline clamped it before, the final evaluation did not)."""
    image = np.zeros((20, 20, 3), np.uint8)
    image[:, 10:] = 255
    x = eval_image(image, 28)  # normalised: (v − mean) / std
    raw = x[0] * 0.229 + 0.485
    assert raw.max() > 1.0 + 1e-3 and raw.min() < -1e-3


def test_a_saved_student_records_how_it_is_evaluated(tmp_path):
    """save_weights with EvalSettings (as every training checkpoint does) → metadata read back from the header,
    also through a file:// URI; files that record nothing give empty settings."""
    from dad_ray.config import build_config
    from dad_ray.models.weights import EvalSettings, read_eval_settings, safetensors_header

    cfg = build_config(None, overrides={"eval.input_size": 112, "eval.protocol": "kitti"})
    path = save_weights(create_model("dav2_micro"), tmp_path / "s.safetensors", EvalSettings.from_config(cfg.eval))
    assert safetensors_header(path)["__metadata__"] == {
        "format": "pt",
        "arch": "dav2_micro",
        "eval_input_size": "112",
        "eval_protocol": "kitti",
        "eval_alignment": "disparity",
    }
    assert read_eval_settings(path) == EvalSettings(112, "kitti", "disparity")
    assert read_eval_settings(path.as_uri()) == EvalSettings(112, "kitti", "disparity")
    bare = save_weights(create_model("dav2_micro"), tmp_path / "bare.safetensors")
    assert read_eval_settings(bare) == EvalSettings()
    torch.save(create_model("dav2_micro").state_dict(), tmp_path / "official.pth")
    assert read_eval_settings(tmp_path / "official.pth") == EvalSettings()


def test_evaluation_settings_explicit_then_checkpoint_then_default(tmp_path):
    from dad_ray.inference.evaluate import model_to_evaluate
    from dad_ray.models.weights import EvalSettings

    saved = save_weights(create_model("dav2_micro"), tmp_path / "s.safetensors", EvalSettings(112, "nyu", "depth"))
    m = model_to_evaluate(str(saved))
    assert (m.name, m.input_size, m.alignment) == ("dav2_micro", 112, "depth")
    assert dict(m.sources) == {"input_size": "checkpoint", "alignment": "checkpoint"}
    m = model_to_evaluate(str(saved), input_size=56)
    assert (m.input_size, m.alignment, dict(m.sources)["input_size"]) == (56, "depth", "explicit")
    bare = save_weights(create_model("dav2_micro"), tmp_path / "bare.safetensors")
    m = model_to_evaluate(str(bare))
    assert (m.input_size, m.alignment, dict(m.sources)) == (
        518,
        "disparity",
        {"input_size": "default", "alignment": "default"},
    )


def _manifest(dataset):
    return {
        "format": "dad_ray-shards",
        "schema_version": 1,
        "split": "test",
        "source": "hand-written for discovery",
        "num_samples": 0,
        "shards": [],
        "skipped": [],
        "image_format": "png",
        "row_group_size": 8,
        "dataset": dataset,
    }


def test_suite_discovery_protocols_order_and_fallback(tmp_path, caplog):
    from dad_ray.data.errors import DataError
    from dad_ray.data.manifest import write_manifest
    from dad_ray.inference.suite import discover_suite

    for name, dataset in [("eth3d", "eth3d"), ("kitti", None), ("nyu", "nyu"), ("my_diode", "diode")]:
        write_manifest(str(tmp_path / name / "test"), _manifest(dataset))
    (tmp_path / "notes").mkdir()  # no test/manifest.json: not a data set
    with caplog.at_level("WARNING"):
        sets = discover_suite(str(tmp_path), "test")
    assert [(s.name, s.protocol, s.protocol_from, s.title) for s in sets] == [
        ("nyu", "nyu", "manifest", "NYUv2"),
        ("kitti", "kitti", "directory name", "KITTI"),  # no dataset field: the directory name, with a warning
        ("eth3d", "eth3d", "manifest", "ETH3D"),
        ("my_diode", "diode", "manifest", "my_diode"),
    ]
    assert "protocol 'kitti' taken from the directory name" in caplog.text
    uri_sets = discover_suite(tmp_path.as_uri(), "test")  # a suite on a URI (file:// takes the s3:// code path)
    assert [(s.name, s.protocol) for s in uri_sets] == [(s.name, s.protocol) for s in sets]
    assert uri_sets[0].root == tmp_path.as_uri() + "/nyu"
    write_manifest(str(tmp_path / "synthetic" / "test"), _manifest(None))
    with pytest.raises(DataError, match="synthetic/test: the manifest names no data set and the directory name"):
        discover_suite(str(tmp_path), "test")
    with pytest.raises(DataError, match="no data set with val/manifest.json"):
        discover_suite(str(tmp_path), "val")


def test_table5_layout():
    from dad_ray.inference.suite import format_table5

    def r(abs_rel, d1, n=10, bad=0):
        return {"abs_rel": abs_rel, "d1": d1, "n_images": n, "n_invalid": bad}

    m = {"name": "dav2_vits", "weights": "w", "input_size": 518, "alignment": "disparity"}
    suite = {
        "sets": [
            {"name": "nyu", "title": "NYUv2", "protocol": "nyu"},
            {"name": "eth3d", "title": "ETH3D", "protocol": "eth3d"},
        ],
        "models": {
            "teacher": {**m, "settings_from": {"input_size": "default", "alignment": "default"}},
            "student": {**m, "input_size": 112, "settings_from": {"input_size": "checkpoint", "alignment": "default"}},
        },
        "results": {
            "nyu": {"teacher": r(0.0451, 0.979), "student": r(0.04349, 0.9812)},
            "eth3d": {"teacher": r(0.131, 0.8654, 4, 1), "student": r(float("nan"), float("nan"), 4, 1)},
        },
    }
    lines = format_table5(suite).splitlines()
    assert lines[0] == "| model | NYUv2 AbsRel ↓ | NYUv2 δ1 ↑ | ETH3D AbsRel ↓ | ETH3D δ1 ↑ |"
    assert lines[1] == "|---|---|---|---|---|"
    assert lines[2] == "| teacher | 0.045 | 0.979 | 0.131 | 0.865 |"
    assert lines[3] == "| student | 0.043 | 0.981 | nan | nan |"
    assert lines[5].endswith("Protocols: NYUv2 = nyu (10 images); ETH3D = eth3d (4 images, 1 without a valid pixel).")
    assert lines[7] == "student: dav2_vits (w), input size 112 (checkpoint), alignment in disparity space (default)"


def test_explicit_keys_are_what_the_command_line_sets(tmp_path):
    """jobs/evaluate.py replaces only what the command line leaves unset by the checkpoint's recorded settings."""
    from dad_ray.config import explicit_keys
    from jobs.evaluate import _parser

    def keys(*argv):
        return explicit_keys(_parser().parse_args(["--checkpoint", "c.safetensors", "--data", "d", *argv]))

    assert keys() == set()
    assert keys("--input-size", "112") == {"eval.input_size"}
    assert keys("--set", "eval.alignment=depth", "--protocol", "kitti") == {"eval.alignment", "eval.protocol"}
    (tmp_path / "run.yaml").write_text("eval:\n  input_size: 224\n")
    assert keys("--config", str(tmp_path / "run.yaml")) == {"eval.input_size"}


def test_a_training_checkpoint_student_is_evaluated_at_its_input_size_without_flags(tmp_path):
    """The student a training checkpoint holds (what copy_student copies to <run>/student.safetensors) records the
    run's eval section; evaluation settings default to it: input size 112 without --input-size."""
    from dad_ray.config import build_config
    from dad_ray.inference.evaluate import model_to_evaluate
    from dad_ray.train.checkpoint import STUDENT_FILE, TrainState, save_checkpoint

    cfg = build_config(None, overrides={"eval.input_size": 112, "model.student": "dav2_micro"})
    model = create_model("dav2_micro")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    save_checkpoint(
        tmp_path, rank=0, student=model, extra_modules={}, optimizer=optimizer, scheduler=scheduler,
        state=TrainState(), cfg=cfg,
    )  # fmt: skip
    m = model_to_evaluate(str(tmp_path / STUDENT_FILE))
    assert (m.name, m.input_size, dict(m.sources)["input_size"]) == ("dav2_micro", 112, "checkpoint")
