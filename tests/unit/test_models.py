"""Depth Anything V2 on timm: key layout, parameter counts, forward contract, exactness vs an independent reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from dad_ray.bench.models import count_parameters, markdown_table
from dad_ray.bench.models import main as bench_main
from dad_ray.models import create_model, get_spec, list_models
from dad_ray.models.dinov2 import interpolate_pos_embed
from tests.reference.dav2_reference import reference_forward

# Every key and shape of the official depth_anything_v2_{vits,vitb,vitl}.pth state dicts.
SHAPES_JSON = Path(__file__).resolve().parents[1] / "reference" / "dav2_state_dict_shapes.json"


def _shapes_reference() -> dict:
    return json.loads(SHAPES_JSON.read_text())


def _meta_model(name: str):
    with torch.device("meta"):
        return create_model(name)


def randomized(name: str, seed: int = 0):
    """A registry model with every parameter random and a positive, varied output (the final ReLUs stay active)."""
    torch.manual_seed(seed)
    model = create_model(name).eval()
    with torch.no_grad():
        for key, p in model.named_parameters():
            if "gamma" in key or "norm" in key:
                p.add_(torch.randn_like(p) * 0.5)
        model.pretrained.pos_embed.normal_(0.0, 1.0)
        model.pretrained.cls_token.normal_(0.0, 1.0)
        model.depth_head.scratch.output_conv2[2].weight.abs_().mul_(10.0)
        model.depth_head.scratch.output_conv2[2].bias.fill_(0.1)
    return model


@pytest.mark.parametrize("encoder", ["vits", "vitb", "vitl"])
def test_state_dict_keys_and_shapes_equal_official(encoder):
    model = _meta_model(f"dav2_{encoder}")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    official = _shapes_reference()[encoder]
    assert sorted(set(ours) ^ set(official)) == []
    assert ours == official


@pytest.mark.parametrize("encoder, millions", [("vits", 24.8), ("vitb", 97.5), ("vitl", 335.3)])
def test_parameter_counts_match_paper(encoder, millions):
    assert round(count_parameters(f"dav2_{encoder}") / 1e6, 1) == millions


def test_models_benchmark_reports_a_table():
    models = ["dav2_micro", "dav2_tiny"]
    lines = bench_main(["--models", *models, "--size", "28", "--repeats", "1"]).strip().splitlines()
    gpu = ["GPU fp32 ms", "GPU bf16 ms", "GPU peak GiB (bf16)"] if torch.cuda.is_available() else []
    header = ["model", "params (M)", "CPU s @28 (median)", "CPU s (min)", *gpu]
    assert lines[0] == "| " + " | ".join(header) + " |"
    assert lines[1] == "|" + "---|" * len(header)
    assert len(lines) == 2 + len(models)  # one row per model, in the order asked
    for name, line in zip(models, lines[2:]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(header)
        assert cells[0] == name
        assert cells[1] == f"{count_parameters(name) / 1e6:.1f}"  # the parameter count, in millions
        assert float(cells[2]) >= 0.0 and cells[3] == cells[2]  # one timed repeat: its median is its minimum
    assert lines[2].startswith("| dav2_micro | 0.9 | ")


def test_models_benchmark_table_formats_and_marks_missing_values():
    rows = [
        {"model": "a", "params_m": 24.79, "cpu_s": 1.234, "cpu_min_s": 1.1},
        {"model": "b", "params_m": 0.04, "cpu_s": 0.5, "cpu_min_s": 0.456, "gpu_fp32_ms": 3.04, "gpu_peak_gib": 0.125},
    ]
    assert markdown_table(rows, 518).splitlines() == [
        "| model | params (M) | CPU s @518 (median) | CPU s (min) | GPU fp32 ms | GPU peak GiB (bf16) |",
        "|---|---|---|---|---|---|",
        "| a | 24.8 | 1.23 | 1.10 | – | – |",  # a column only some rows have: "–" where missing
        "| b | 0.0 | 0.50 | 0.46 | 3.0 | 0.12 |",  # columns no row has (GPU bf16 ms) are left out
    ]


def test_vitg_uses_dinov2_swiglu_layout():
    sd = _meta_model("dav2_vitg").state_dict()
    assert list(sd["pretrained.blocks.0.mlp.w12.weight"].shape) == [8192, 1536]
    assert list(sd["pretrained.blocks.0.mlp.w3.weight"].shape) == [1536, 4096]
    assert not any(".mlp.fc1." in k for k in sd)
    assert 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("pretrained.blocks.")) == 40
    assert list(sd["depth_head.projects.0.weight"].shape) == [1536, 1536, 1, 1]


def test_registry_names_attributes_and_overrides():
    assert list_models() == ["dav2_vits", "dav2_vitb", "dav2_vitl", "dav2_vitg", "dav2_tiny", "dav2_micro"]
    tiny = get_spec("dav2_tiny")
    assert (tiny.embed_dim, tiny.depth, tiny.num_heads, tiny.features) == (192, 4, 3, 32)
    assert tiny.out_channels == (24, 48, 96, 192) and tiny.layers == (0, 1, 2, 3)
    micro = get_spec("dav2_micro")
    assert (micro.embed_dim, micro.features, micro.out_channels) == (96, 24, (12, 24, 48, 96))
    model = _meta_model("dav2_vitl")
    assert (model.embed_dim, model.patch_size, model.encoder_name, model.model_name) == (1024, 14, "vitl", "dav2_vitl")
    assert get_spec("dav2_tiny", depth=6, layers=[1, 2, 3, 5]).layers == (1, 2, 3, 5)
    with pytest.raises(ValueError, match="dav2_nope"):
        create_model("dav2_nope")
    with pytest.raises(ValueError, match="depht"):
        create_model("dav2_tiny", depht=3)
    with pytest.raises(ValueError, match="layers"):
        create_model("dav2_tiny", layers=(0, 1, 2, 7))


@pytest.mark.parametrize("size", [(14, 14), (70, 98), (126, 56)])
def test_forward_shapes_and_features(size):
    model = create_model("dav2_micro").eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        disparity = model(x)
        again, features = model(x, return_features=True)
    assert disparity.shape == (2, *size) and disparity.dtype == torch.float32
    assert (disparity >= 0).all()
    assert features.shape == (2, (size[0] // 14) * (size[1] // 14), 96)
    assert torch.equal(disparity, again)


def test_features_are_last_block_normed_patch_tokens():
    model = randomized("dav2_tiny")
    x = torch.randn(1, 3, 56, 70)
    with torch.no_grad():
        _, features = model(x, return_features=True)
        tokens = model.pretrained.forward_features(x)  # timm path: all blocks + final norm, (B, 1 + N, C)
    torch.testing.assert_close(features, tokens[:, 1:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [(70, 99), (100, 98)])
def test_non_multiple_of_14_is_rejected(size):
    model = create_model("dav2_micro")
    with pytest.raises(ValueError, match=f"{size[0]}x{size[1]}"):
        model(torch.randn(1, 3, *size))


@pytest.mark.parametrize("size", [(518, 518), (392, 532)])
def test_exact_vs_reference_small_model(size):
    model = randomized("dav2_tiny")
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(x)
        ref = reference_forward(model.state_dict(), x, list(model.spec.layers), model.spec.num_heads)
    assert ref.std() > 0.01 * ref.mean() > 0  # the output varies: the comparison is not between constants
    assert (ours - ref).abs().max() <= 1e-4 * ref.abs().max()


@pytest.mark.parametrize("size", [(392, 532)])  # the interpolated-position case; 518 x 518: see .notes/issue-3.md
def test_exact_vs_reference_vits(size):
    model = randomized("dav2_vits")
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(x)
        ref = reference_forward(model.state_dict(), x, list(model.spec.layers), model.spec.num_heads)
    assert ref.std() > 0.01 * ref.mean() > 0
    assert (ours - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_pos_embed_interpolation_is_dinov2s_not_size_based():
    pos = torch.randn(1, 1 + 37 * 37, 8, generator=torch.Generator().manual_seed(0))
    assert interpolate_pos_embed(pos, 37, 37) is pos  # stored grid: unchanged, as in DINOv2
    ours = interpolate_pos_embed(pos, 28, 38)
    assert ours.shape == (1, 1 + 28 * 38, 8)
    assert torch.equal(ours[:, 0], pos[:, 0])
    grid = pos[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, scale_factor=(28.1 / 37, 38.1 / 37), mode="bicubic", antialias=False)
    torch.testing.assert_close(ours[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, -1, 8), rtol=0, atol=0)
    timm_resampled = resample_abs_pos_embed(pos, new_size=(28, 38), old_size=(37, 37), num_prefix_tokens=1)
    assert (timm_resampled - ours).abs().max() > 1e-3  # timm's own resize would not be exact


def test_grad_checkpointing_gives_identical_gradients():
    x = torch.randn(1, 3, 42, 56, generator=torch.Generator().manual_seed(3))
    grads = []
    for enable in (False, True):
        model = randomized("dav2_micro").train()
        model.set_grad_checkpointing(enable)
        disparity, features = model(x, return_features=True)
        (disparity.mean() + features.pow(2).mean()).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=1e-5, atol=1e-7)


def test_every_trainable_parameter_gets_a_gradient():
    """No unused trainable parameters (DDP would need find_unused_parameters); the two that the official forward
    never uses (mask_token, refinenet4.resConfUnit1) are frozen."""
    model = randomized("dav2_micro").train()
    disparity = model(torch.randn(1, 3, 42, 42))
    disparity.mean().backward()
    frozen = sorted(k for k, p in model.named_parameters() if not p.requires_grad)
    assert frozen == [
        "depth_head.scratch.refinenet4.resConfUnit1.conv1.bias",
        "depth_head.scratch.refinenet4.resConfUnit1.conv1.weight",
        "depth_head.scratch.refinenet4.resConfUnit1.conv2.bias",
        "depth_head.scratch.refinenet4.resConfUnit1.conv2.weight",
        "pretrained.mask_token",
    ]
    no_grad = [k for k, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    encoder = {k for k, _ in model.named_parameters() if k.startswith("pretrained.")}
    assert len(encoder) == len(list(model.pretrained.parameters()))


@pytest.mark.parametrize("name", ["dav2_micro", "dav2_tiny"])
def test_fresh_model_starts_inside_the_final_relus_active_range(name):
    """A randomly initialised model (default init, no test tweaks) must give gradients to its head from step 0: with
    a dead final ReLU (output 0 everywhere) the scale-invariant loss is stuck at exactly 1 and nothing ever learns."""
    from dad_ray.losses import ssi_loss

    x = torch.randn(2, 3, 56, 70, generator=torch.Generator().manual_seed(0))
    depth = 1.0 + torch.rand(2, 56, 70, generator=torch.Generator().manual_seed(1)) * 5
    for seed in range(4):
        torch.manual_seed(seed)
        model = create_model(name).train()
        disparity = model(x)
        assert bool((disparity > 0).all()), seed
        ssi_loss(disparity, depth, depth > 0).backward()
        last = model.depth_head.scratch.output_conv2[2]
        assert last.weight.grad.abs().sum() > 0 and last.bias.grad is not None, seed
