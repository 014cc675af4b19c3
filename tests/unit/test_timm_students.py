"""The student zoo: depth models on timm backbones (``timm:<name>``), their sizes, features, weights and L_feat."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from dad_ray.config import ConfigError, OptimConfig, build_config
from dad_ray.losses import feature_loss, resample_tokens
from dad_ray.models import (
    ZOO,
    PretrainedNotCachedError,
    WeightsError,
    create_model,
    is_model,
    list_models,
    list_zoo,
    load_weights,
    read_state_dict,
    save_weights,
)
from dad_ray.models.weights import infer_model_name
from dad_ray.train.schedule import param_groups
from dad_ray.train.task import StudentTask, build_student, token_layout


@pytest.fixture(scope="module")
def zoo_models():
    torch.manual_seed(0)
    return {name: create_model(name).eval() for name in ZOO}


@pytest.mark.parametrize("name", ZOO)
def test_zoo_student_outputs_disparity_at_input_size_and_features(zoo_models, name):
    model = zoo_models[name]
    x = torch.randn(2, 3, 70, 98)  # multiples of 14 (dad_ray's sizes), not of a CNN's stride 32
    with torch.no_grad():
        disparity, tokens = model(x, return_features=True)
        assert torch.equal(model(x), disparity)
    assert disparity.shape == (2, 70, 98) and (disparity >= 0).all() and torch.isfinite(disparity).all()
    gh, gw = model.token_grid(70, 98)
    assert tokens.shape == (2, gh * gw, model.embed_dim)
    assert model.model_name == name and name in list_zoo() and is_model(name)


def test_bad_sizes_are_rejected_naming_the_multiple(zoo_models):
    vit = zoo_models["timm:vit_small_patch14_dinov2"]
    with pytest.raises(ValueError, match="70x99 is not a multiple of the patch size 14"):
        vit(torch.randn(1, 3, 70, 99))
    strict = create_model("timm:convnext_atto", pad_input=False)
    assert strict.size_multiple == 32 and zoo_models["timm:convnext_atto"].size_multiple == 1
    with pytest.raises(ValueError, match="70x96 is not a multiple of the total stride.*32"):
        strict(torch.randn(1, 3, 70, 96))
    assert strict(torch.randn(1, 3, 64, 96)).shape == (1, 64, 96)
    with pytest.raises(ValueError, match=r"expected input \(B, 3, H, W\)"):
        strict(torch.randn(1, 1, 64, 64))


def test_padding_keeps_the_image_content_aligned():
    """A CNN student pads bottom/right and crops back: the top-left output does not depend on the amount of padding
    beyond the receptive field, and a size that needs no padding gives exactly the unpadded model's output."""
    torch.manual_seed(0)
    padded = create_model("timm:mobilenetv4_conv_small").eval()
    strict = create_model("timm:mobilenetv4_conv_small", pad_input=False).eval()
    strict.load_state_dict(padded.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(padded(x), strict(x))


def test_a_zoo_student_has_fewer_than_5m_parameters():
    with torch.device("meta"):
        sizes = {name: sum(p.numel() for p in create_model(name).parameters()) for name in ZOO}
    assert min(sizes.values()) < 1e6
    assert sizes["timm:convnext_atto"] < 5e6 and sizes["timm:mobilenetv4_conv_small"] < 5e6


def test_registry_names_and_errors():
    assert list_models() == ["dav2_vits", "dav2_vitb", "dav2_vitl", "dav2_vitg", "dav2_tiny", "dav2_micro"]
    assert is_model("timm:resnet18") and not is_model("timm:no_such_net") and not is_model("resnet18")
    with pytest.raises(ValueError, match="unknown override.*depth"):
        create_model("timm:convnext_atto", depth=3)
    with pytest.raises(ValueError, match="unknown timm model 'no_such_net'"):
        create_model("timm:no_such_net")


def test_backbone_is_the_encoder_lr_group(zoo_models):
    model = zoo_models["timm:convnext_atto"]
    encoder = {id(p) for p in model.encoder_parameters()}
    assert encoder == {id(p) for n, p in model.named_parameters() if n.startswith("pretrained.")}
    assert 0 < len(encoder) < len(list(model.parameters()))
    cfg = OptimConfig(lr=1e-3, encoder_lr_mult=0.1)
    groups = param_groups(StudentTask(model, [64]).named_parameters(), cfg)
    in_encoder = {id(p) for g in groups if g["name"].startswith("encoder") for p in g["params"]}
    assert in_encoder == encoder
    assert {g["lr"] for g in groups if g["name"].startswith("encoder")} == {1e-4}


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = create_model("timm:vit_small_patch14_dinov2", features=32)
    x = torch.randn(1, 3, 28, 28)
    params = [p for p in model.parameters() if p.requires_grad]
    model(x).sum().backward()
    expected = [p.grad.clone() for p in params]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for a, b in zip(expected, (p.grad for p in params)):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------------------------------------------
# Feature alignment across grids and widths


def test_resample_tokens_is_a_no_op_on_matching_grids():
    tokens = torch.randn(2, 64, 8)
    assert resample_tokens(tokens, (8, 8), (8.0, 8.0), (8, 8)) is tokens


def test_resample_tokens_pools_a_finer_grid_and_interpolates_a_coarser_one():
    maps = torch.randn(2, 5, 8, 8)
    tokens = maps.flatten(2).transpose(1, 2)  # (2, 64, 5)
    pooled = resample_tokens(tokens, (8, 8), (8.0, 8.0), (4, 4))
    expected = torch.nn.functional.avg_pool2d(maps, 2).flatten(2).transpose(1, 2)
    torch.testing.assert_close(pooled, expected)
    constant = torch.full((1, 4, 3), 2.5)  # a constant 2x2 map stays constant on any grid
    torch.testing.assert_close(resample_tokens(constant, (2, 2), (2.0, 2.0), (5, 7)), torch.full((1, 35, 3), 2.5))
    # padding excluded: the image covers 1 of 2 columns, so the padded column never reaches the output
    padded = torch.tensor([[[1.0], [100.0], [1.0], [100.0]]])  # 2x2 grid, right column = padding
    torch.testing.assert_close(resample_tokens(padded, (2, 2), (2.0, 0.5), (2, 2)), torch.ones(1, 4, 1))


def test_token_layout_of_padded_and_patch_students(zoo_models):
    assert token_layout(zoo_models["timm:convnext_atto"], 112, 154) == ((4, 5), (3.5, 154 / 32))
    assert token_layout(create_model("dav2_micro"), 112, 154) == ((8, 11), (8.0, 11.0))


def test_feature_loss_with_another_grid_and_width_backpropagates():
    torch.manual_seed(0)
    student = create_model("timm:efficientvit_b0")  # tokens: stride 32, width 128
    task = StudentTask(student, teacher_dims=[96])  # a dav2_micro teacher: 8x8 tokens of width 96 at 112 px
    out = task(torch.randn(2, 3, 112, 112), teacher_dim=96, teacher_grid=(8, 8))
    assert out["features"].shape == (2, 64, 96) and out["crop"].shape == (2, 112, 112)
    loss = feature_loss(out["features"], torch.randn(2, 64, 96), margin=0.85)
    loss.backward()
    assert loss > 0
    assert task.feat_proj["96"].weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in student.encoder_parameters())


def test_dav2_student_features_and_loss_are_unchanged():
    """With a DAv2 student the teacher grid equals the student's: the same tensor goes to the projection and the
    loss, bit for bit, as before grids were taken into account (``teacher_grid=None``)."""
    torch.manual_seed(0)
    task = StudentTask(create_model("dav2_micro"), teacher_dims=[192])
    crop = torch.randn(2, 3, 56, 56)
    teacher = torch.randn(2, 16, 192)
    old = task(crop, teacher_dim=192)
    new = task(crop, teacher_dim=192, teacher_grid=(4, 4))
    assert torch.equal(old["features"], new["features"]) and torch.equal(old["crop"], new["crop"])
    assert torch.equal(feature_loss(old["features"], teacher), feature_loss(new["features"], teacher))


# ----------------------------------------------------------------------------------------------------------------
# Weights: timm's pretrained ones from the local cache, our checkpoints

TIMM_NAME = "efficientvit_b0"
REPO_DIR = "models--timm--efficientvit_b0.r224_in1k"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def _write_hub_cache(cache, state) -> None:
    """The real huggingface_hub cache layout: refs/main names the snapshot that holds the file."""
    repo = cache / REPO_DIR
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    (repo / "snapshots" / REVISION).mkdir(parents=True)
    save_file(state, str(repo / "snapshots" / REVISION / "model.safetensors"))


def test_pretrained_backbone_from_the_local_hub_cache(tmp_path, monkeypatch):
    import timm

    torch.manual_seed(1)
    source = {k: v.contiguous() for k, v in timm.create_model(TIMM_NAME).state_dict().items()}
    _write_hub_cache(tmp_path / "hub", source)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(2)
    model = create_model(f"timm:{TIMM_NAME}", pretrained_backbone=True)
    backbone = model.pretrained.state_dict()
    assert backbone and all(torch.equal(v, source[k]) for k, v in backbone.items())
    random = create_model(f"timm:{TIMM_NAME}")
    assert not torch.equal(random.pretrained.stem.in_conv.conv.weight, source["stem.in_conv.conv.weight"])
    # the config path: model.student_pretrained builds the same backbone
    cfg = build_config("zoo_cpu", overrides={"model.student": f"timm:{TIMM_NAME}", "model.student_pretrained": True})
    student = build_student(cfg.model)
    assert torch.equal(student.pretrained.stem.in_conv.conv.weight, source["stem.in_conv.conv.weight"])


def test_missing_pretrained_weights_name_what_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(PretrainedNotCachedError) as err:
        create_model(f"timm:{TIMM_NAME}", pretrained_backbone=True)
    message = str(err.value)
    for part in ("efficientvit_b0", "timm/efficientvit_b0.r224_in1k", "model.safetensors", str(tmp_path / "empty")):
        assert part in message, part
    from dad_ray.train import validate_experiment

    cfg = build_config("smoke", overrides={"model.student": f"timm:{TIMM_NAME}", "model.student_pretrained": True})
    with pytest.raises(ConfigError, match="model.student_pretrained: .*timm/efficientvit_b0.r224_in1k"):
        validate_experiment(cfg)


def test_student_pretrained_is_validated():
    with pytest.raises(ConfigError, match="model.student_pretrained: only timm students"):
        build_config("smoke", overrides={"model.student_pretrained": True})
    with pytest.raises(ConfigError, match="model.student_pretrained: choose one"):
        build_config(
            "smoke",
            overrides={
                "model.student": "timm:convnext_atto",
                "model.student_pretrained": True,
                "model.student_init": "full",
                "model.student_weights": "x.safetensors",
            },
        )


def test_timm_student_weights_round_trip_strictly(tmp_path):
    """MobileNetV4's ``blocks.<stage>.<block>`` keys look like DINOv2's chunked blocks: they must not be remapped."""
    torch.manual_seed(0)
    name = "timm:mobilenetv4_conv_small"
    model = create_model(name)
    model.pretrained.blocks[0][0].bn1.running_mean.add_(1.0)  # buffers travel too
    path = save_weights(model, tmp_path / "student.safetensors")
    assert infer_model_name(path) == name
    torch.manual_seed(1)
    other = create_model(name)
    report = load_weights(other, path)
    assert report.layout == "timm_student" and report.loaded == len(model.state_dict())
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in model.state_dict().items())
    fresh = create_model(name)
    encoder_report = load_weights(fresh, path, encoder_only=True)  # model.student_init=encoder
    assert encoder_report.unloaded and all(k.startswith("depth_head.") for k in encoder_report.unloaded)
    with pytest.raises(WeightsError, match="do not match timm:convnext_atto"):
        load_weights(create_model("timm:convnext_atto"), path)


def test_student_from_a_checkpoint_full_init(tmp_path):
    torch.manual_seed(0)
    name = "timm:efficientvit_b0"
    path = save_weights(create_model(name), tmp_path / "s.safetensors")
    overrides = {"model.student": name, "model.student_init": "full", "model.student_weights": str(path)}
    student = build_student(build_config("zoo_cpu", overrides=overrides).model)
    expected = read_state_dict(path)
    assert all(torch.equal(v, expected[k]) for k, v in student.state_dict().items())


def test_experiment_validation_of_timm_students():
    from dad_ray.train import validate_experiment

    validate_experiment(build_config("smoke", overrides={"model.student": "timm:mobilenetv4_conv_small"}))
    with pytest.raises(ConfigError, match="model.student: timm:vit_small_patch16_224 takes .* multiples of 16"):
        validate_experiment(build_config("smoke", overrides={"model.student": "timm:vit_small_patch16_224"}))
    with pytest.raises(ConfigError, match="model.student: unknown model 'timm:nope'.*timm:convnext_atto"):
        validate_experiment(build_config("smoke", overrides={"model.student": "timm:nope"}))
