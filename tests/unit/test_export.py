"""Export (ONNX, torch.export, TorchScript, Hugging Face transformers): every export is run and compared with PyTorch.

Tolerance everywhere: max |export - torch| / max |torch| <= 1e-4 (``dad_ray.models.export.relative_error``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from dad_ray.models import WeightsError, create_model, load_weights
from dad_ray.models import dinov2 as dinov2_module
from dad_ray.models.dinov2 import interpolate_pos_embed, traceable_interpolate_pos_embed
from dad_ray.models.export import (
    HF_CHECK_SIZE,
    ONNX_OPSET,
    TOLERANCE,
    export_hf,
    export_onnx,
    export_torchscript,
    relative_error,
    second_size,
    verify_export,
)
from dad_ray.models.hf_layout import from_transformers, to_transformers

NAME = "dav2_micro"
REPO = Path(__file__).resolve().parents[2]
SIZE = (70, 98)  # 5 x 7 patches: the position embedding is resized


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model(NAME).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return m


@pytest.mark.parametrize("grid", [(5, 7), (3, 4), (37, 37), (37, 5), (40, 60), (1, 1), (74, 20)])
def test_traceable_pos_embed_is_dinov2_resize(grid):
    pos = torch.randn(1, 1 + 37 * 37, 32, generator=torch.Generator().manual_seed(0))
    ours, traceable = interpolate_pos_embed(pos, *grid), traceable_interpolate_pos_embed(pos, *grid)
    assert traceable.shape == ours.shape == (1, 1 + grid[0] * grid[1], 32)
    assert relative_error(traceable, ours) < 1e-5  # float32 rounding of the same bicubic weights
    if grid == (37, 37):
        assert torch.equal(traceable, pos)  # the stored grid: unchanged


def test_second_size_differs_and_keeps_the_multiple(model):
    h, w = second_size(model, SIZE)
    assert (h, w) != SIZE and h % 14 == 0 and w % 14 == 0
    with pytest.raises(ValueError, match="multiple of 14"):
        export_torchscript(model, "unused.pt", (71, 98))


@pytest.mark.slow
def test_onnx_static_matches_torch(tmp_path, model):
    path = export_onnx(model, tmp_path / "static.onnx", SIZE, dynamic=False)
    errors = verify_export(model, path, "onnx", [SIZE])
    assert errors[SIZE] < TOLERANCE
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime's own error type: the graph has a fixed size
        verify_export(model, path, "onnx", [second_size(model, SIZE)])


def _job():
    spec = importlib.util.spec_from_file_location("export_job", REPO / "jobs" / "export.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job


@pytest.mark.slow
@pytest.mark.parametrize("fmt, suffix", [("onnx", ".onnx"), ("pt2", ".pt2"), ("torchscript", ".pt")])
def test_cli_exports_a_dynamic_graph_that_matches_torch_at_two_sizes(tmp_path, model, capsys, fmt, suffix):
    """README: python jobs/export.py --checkpoint student.safetensors --format <fmt> --out student<suffix>
    --input-size 70 98 — exported at 70x98, checked there and at 98x84 by the job itself, then here at batch 2 and
    518x518 (the stored position-embedding grid)."""
    from dad_ray.models import save_weights

    ckpt = save_weights(model, tmp_path / "student.safetensors")
    out = tmp_path / f"student{suffix}"
    argv = ["--checkpoint", str(ckpt), "--format", fmt, "--out", str(out), "--input-size", "70", "98"]
    assert _job().main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count(" ok") == 2 and "70x98" in printed and "98x84" in printed
    errors = verify_export(model, out, fmt, [SIZE, second_size(model, SIZE), (518, 518)], batch=2)
    assert max(errors.values()) < TOLERANCE, errors
    if fmt == "onnx":
        import onnx

        assert onnx.load(str(out)).opset_import[0].version == ONNX_OPSET


@pytest.mark.slow
def test_onnx_export_of_a_timm_student(tmp_path):
    student = create_model("timm:convnext_atto").eval()
    path = export_onnx(student, tmp_path / "atto.onnx", SIZE)
    errors = verify_export(student, path, "onnx", [SIZE, second_size(student, SIZE)])
    assert max(errors.values()) < TOLERANCE, errors
    with pytest.raises(ValueError, match="Depth Anything V2 family.*onnx"):
        export_hf(student, tmp_path / "hf")


def _transformers_pos_embed(pos_embed, grid_h, grid_w):
    """transformers' DINOv2 resize: to the target size (not DINOv2's scale factor (n + 0.1) / 37)."""
    side, dim = 37, pos_embed.shape[-1]
    patch = pos_embed[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    patch = torch.nn.functional.interpolate(patch, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
    return torch.cat((pos_embed[:, :1], patch.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)


def test_hf_export_loads_in_transformers_with_the_same_depth(tmp_path, model, monkeypatch):
    from transformers import DepthAnythingForDepthEstimation

    out = export_hf(model, tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "depth_anything" and config["backbone_config"]["out_indices"] == [1, 2, 3, 4]
    hf = DepthAnythingForDepthEstimation.from_pretrained(str(out)).eval()
    x = torch.randn(1, 3, *HF_CHECK_SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert relative_error(hf(pixel_values=x).predicted_depth, model(x)) < TOLERANCE  # 518: no resize
        # At other sizes transformers resizes the position embedding by size, DINOv2 by scale factor; with ours
        # switched to transformers' resize the two agree at a small size too (the rest of the map is exact).
        monkeypatch.setattr(dinov2_module, "interpolate_pos_embed", _transformers_pos_embed)
        small = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(2))
        assert relative_error(hf(pixel_values=small).predicted_depth, model(small)) < TOLERANCE
    # transformers >= 5 renames tensors in memory (q_proj, o_proj ...): those names map back too
    back = from_transformers(hf.state_dict())
    assert set(back) == set(model.state_dict())
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_hf_layout_round_trip_with_swiglu():
    vitg = create_model(
        "dav2_vitg", embed_dim=48, depth=4, num_heads=2, features=16, out_channels=(8, 16, 24, 48), layers=(0, 1, 2, 3)
    )
    hf = to_transformers(vitg.state_dict())
    assert "backbone.encoder.layer.3.mlp.weights_in.weight" in hf
    assert "backbone.encoder.layer.0.attention.attention.value.bias" in hf
    assert "neck.fusion_stage.layers.0.residual_layer1.convolution1.weight" in hf  # refinenet4 comes first
    back = from_transformers(hf)
    assert set(back) == set(vitg.state_dict())
    assert all(torch.equal(back[k], v) for k, v in vitg.state_dict().items())


def test_hf_config_beside_the_weights_must_match_the_model(tmp_path, model):
    out = export_hf(model, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    config["backbone_config"]["out_indices"] = [1, 2, 3, 3]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=r"config\.json.*out_indices \[1, 2, 3, 3\]"):
        load_weights(create_model(NAME), out)
    config["backbone_config"]["out_indices"] = [1, 2, 3, 4]
    config["depth_estimation_type"] = "metric"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="metric"):
        load_weights(create_model(NAME), out / "model.safetensors")


def test_cli_exports_checks_and_names_a_missing_file(tmp_path, model, capsys):
    from dad_ray.models import save_weights

    job = _job()
    ckpt = save_weights(model, tmp_path / "student.safetensors")
    argv = ["--checkpoint", str(ckpt), "--format", "hf", "--out", str(tmp_path / "student-hf")]
    assert job.main(argv) == 0
    out = capsys.readouterr().out
    assert f"exported {NAME} (hf)" in out and "518x518: max relative error" in out and "ok" in out
    missing = tmp_path / "nope.safetensors"
    assert job.main(["--checkpoint", str(missing), "--format", "onnx", "--out", str(tmp_path / "x.onnx")]) == 2
    assert str(missing) in capsys.readouterr().err
    with pytest.raises(SystemExit):
        job.main(["--help"])
