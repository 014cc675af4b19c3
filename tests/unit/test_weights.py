"""Strict weights I/O: official layouts in, official layout out, every mismatch named."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dad_ray.models import WeightsError, create_model, load_weights, save_weights
from dad_ray.models.weights import infer_model_name

NAME = "dav2_micro"


def _random(seed: int):
    torch.manual_seed(seed)
    model = create_model(NAME).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


@pytest.fixture(scope="module")
def source():
    return _random(0)


@pytest.fixture(scope="module")
def x():
    return torch.randn(1, 3, 42, 56, generator=torch.Generator().manual_seed(0))


def _assert_same_model(a, b, x):
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_save_load_round_trip_is_exact(tmp_path, source, x):
    path = save_weights(source, tmp_path / "sub" / "model.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "arch": NAME}
        assert set(f.keys()) == set(source.state_dict())
    assert not [p for p in path.parent.iterdir() if p.name != "model.safetensors"]  # no temp files left
    target = _random(1)
    report = load_weights(target, path)
    assert report.layout == "official" and report.loaded == len(source.state_dict()) and report.unloaded == ()
    _assert_same_model(source, target, x)


def test_saved_file_loads_into_a_plain_state_dict_consumer(tmp_path, source):
    """The official class does ``model.load_state_dict(load_file(path))``: same keys, shapes, dtypes."""
    path = save_weights(source, tmp_path / "m.safetensors")
    plain = load_file(str(path))
    target = create_model(NAME)
    assert target.load_state_dict(plain, strict=True) is not None
    assert {k: (v.shape, v.dtype) for k, v in plain.items()} == {
        k: (v.shape, v.dtype) for k, v in source.state_dict().items()
    }


def test_official_pth_and_wrappers_load(tmp_path, source, x):
    sd = source.state_dict()
    for i, obj in enumerate([sd, {"model": sd}, {"state_dict": sd, "epoch": 3}]):
        path = tmp_path / f"ckpt{i}.pth"
        torch.save(obj, path)
        target = _random(1)
        load_weights(target, path)
        _assert_same_model(source, target, x)
    torch.save({"weights": sd, "epoch": 3}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match=r"other\.pth.*wrapper"):
        load_weights(_random(1), tmp_path / "other.pth")


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: a weights_only load must refuse it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pth_with_arbitrary_objects_is_refused(tmp_path, source):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"model": source.state_dict(), "payload": _Payload(str(marker))}, path)
    with pytest.raises(WeightsError, match=r"evil\.pth.*refused"):
        load_weights(_random(1), path)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_missing_unexpected_and_mismatched_keys_are_named(tmp_path, source, suffix):
    sd = {k: v.clone() for k, v in source.state_dict().items()}
    missing = "depth_head.scratch.refinenet2.out_conv.bias"
    del sd[missing]
    sd["pretrained.blocks.9.attn.qkv.weight"] = torch.zeros(3, 3)
    wrong = "pretrained.blocks.1.mlp.fc1.weight"
    sd[wrong] = torch.zeros(5, 96)
    path = tmp_path / f"bad{suffix}"
    save_file(sd, str(path)) if suffix == ".safetensors" else torch.save(sd, path)
    with pytest.raises(WeightsError) as err:
        load_weights(_random(1), path)
    message = str(err.value)
    assert str(path) in message
    assert re.search(rf"missing keys \(1\):\n\s+{re.escape(missing)} \[24\]", message)
    assert re.search(r"unexpected keys \(1\):\n\s+pretrained\.blocks\.9\.attn\.qkv\.weight \[3, 3\]", message)
    assert re.search(rf"shape mismatch \(1\):\n\s+{re.escape(wrong)}: file \[5, 96\] vs model \[384, 96\]", message)


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_each_single_mismatch_fails_alone(tmp_path, source, change):
    sd = {k: v.clone() for k, v in source.state_dict().items()}
    key = "pretrained.norm.weight"
    if change == "missing":
        del sd[key]
    elif change == "unexpected":
        key = "depth_head.extra.weight"
        sd[key] = torch.zeros(1)
    else:
        sd[key] = torch.zeros(97)
    save_file(sd, str(tmp_path / "x.safetensors"))
    target = _random(1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(WeightsError, match=re.escape(key)):
        load_weights(target, tmp_path / "x.safetensors")
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())  # nothing half-loaded


def test_ddp_prefix_and_dad_large_chunked_layouts_load(tmp_path, source, x):
    sd = source.state_dict()
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "ddp.pth")
    report = load_weights(target := _random(1), tmp_path / "ddp.pth")
    assert report.layout == "module."
    _assert_same_model(source, target, x)

    def dad_key(k: str) -> str:  # Distill-Any-Depth Large: backbone.*, blocks in one chunk keeping global indices
        k = re.sub(r"^pretrained\.blocks\.(\d+)\.", r"backbone.blocks.0.\1.", k)
        return re.sub(r"^pretrained\.", "backbone.", k)

    dad = {dad_key(k): v.contiguous() for k, v in sd.items()}
    assert "backbone.blocks.0.3.attn.qkv.weight" in dad and "depth_head.projects.0.weight" in dad
    save_file(dad, str(tmp_path / "model.safetensors"))
    report = load_weights(target := _random(2), tmp_path / "model.safetensors")
    assert report.layout == "dad_large+chunked_blocks"
    _assert_same_model(source, target, x)


def test_encoder_only_leaves_exactly_the_head(tmp_path, source, x):
    path = save_weights(source, tmp_path / "full.safetensors")
    target = _random(1)
    head_before = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("depth_head.")}
    report = load_weights(target, path, encoder_only=True)
    assert set(report.unloaded) == set(head_before) and set(report.ignored) == set(head_before)
    for key, value in target.state_dict().items():
        expected = head_before[key] if key.startswith("depth_head.") else source.state_dict()[key]
        assert torch.equal(value, expected), key
    encoder_file = tmp_path / "encoder.safetensors"
    save_file({k: v for k, v in source.state_dict().items() if k.startswith("pretrained.")}, str(encoder_file))
    report = load_weights(_random(1), encoder_file, encoder_only=True)
    assert report.ignored == () and set(report.unloaded) == set(head_before)
    with pytest.raises(WeightsError, match="missing keys"):
        load_weights(_random(1), encoder_file)  # the full model needs the head


def test_missing_file_and_unknown_format_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.pth"))):
        load_weights(_random(1), tmp_path / "nope.pth")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(WeightsError, match=r"w\.onnx"):
        load_weights(_random(1), tmp_path / "w.onnx")


def test_ddp_wrapped_model_saves_and_loads_without_prefix(tmp_path, source, x):
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(_random(3))
        path = save_weights(ddp, tmp_path / "ddp.safetensors")
        assert not any(k.startswith("module.") for k in load_file(str(path)))
        load_weights(ddp, save_weights(source, tmp_path / "src.safetensors"))
        _assert_same_model(source, ddp.module, x)
    finally:
        dist.destroy_process_group()


def test_infer_model_name_from_metadata_and_shapes(tmp_path, source):
    assert infer_model_name(save_weights(source, tmp_path / "a.safetensors")) == NAME
    torch.save(source.state_dict(), tmp_path / "b.pth")
    assert infer_model_name(tmp_path / "b.pth") == NAME
    with torch.device("meta"):
        vitl = create_model("dav2_vitl")
    fake = {k: torch.empty(0) for k in vitl.state_dict()}
    fake["pretrained.pos_embed"] = torch.zeros(1, 2, 1024)
    fake["depth_head.scratch.layer1_rn.weight"] = torch.zeros(256, 1, 1, 1)
    torch.save(fake, tmp_path / "c.pth")
    assert infer_model_name(tmp_path / "c.pth") == "dav2_vitl"


def test_transformers_layout_round_trip_through_load_weights(tmp_path, source, x):
    """ours → transformers' DepthAnythingForDepthEstimation directory → load_weights → the same tensors."""
    from dad_ray.models.export import export_hf

    out = export_hf(source, tmp_path / "hf")
    assert any(k.startswith("neck.") for k in load_file(str(out / "model.safetensors")))
    for path in (out, out / "model.safetensors"):  # the directory or its weights file
        target = _random(1)
        report = load_weights(target, path)
        assert report.layout == "transformers" and report.loaded == len(source.state_dict())
        _assert_same_model(source, target, x)
    assert infer_model_name(out) == NAME


def test_transformers_layout_is_strict(tmp_path, source):
    from dad_ray.models.hf_layout import to_transformers

    state = to_transformers(source.state_dict())
    state["neck.extra.weight"] = torch.zeros(2)
    del state["backbone.encoder.layer.1.attention.attention.value.weight"]
    save_file(state, str(tmp_path / "hf.safetensors"))
    with pytest.raises(WeightsError) as err:
        load_weights(_random(1), tmp_path / "hf.safetensors")
    text = str(err.value)
    assert "hf.safetensors" in text and "neck.extra.weight" in text
    assert "pretrained.blocks.1.attn.qkv.weight" in text  # missing: the incomplete q / k / v group is named
    assert "backbone.encoder.layer.1.attention.attention.query.weight" in text  # ... and left as is


def _hub_cache(root, repo_id: str, files: dict[str, bytes], revision: str = "main", commit: str = "a" * 40):
    """A Hugging Face hub cache as huggingface_hub lays it out: models--org--repo/{refs/<rev>,snapshots/<commit>/}."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    for name, data in files.items():
        (repo / "snapshots" / commit / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / commit / name).write_bytes(data)
    return root


def test_hf_hub_path_loads_from_the_cache_offline(tmp_path, source, x, monkeypatch):
    weights = save_weights(source, tmp_path / "w.safetensors").read_bytes()
    cache = _hub_cache(tmp_path / "hub", "org/student", {"model.safetensors": weights, "ckpt/s.safetensors": weights})
    _hub_cache(cache, "org/student", {"model.safetensors": weights}, revision="v1", commit="b" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for path in (
        "hf://org/student/model.safetensors",
        "hf://org/student/ckpt/s.safetensors",
        "hf://org/student@v1/model.safetensors",
    ):
        target = _random(1)
        report = load_weights(target, path)
        assert report.path == path
        _assert_same_model(source, target, x)
        assert infer_model_name(path) == NAME


def test_hf_hub_path_not_cached_names_repo_file_and_fetch_command(tmp_path, monkeypatch):
    from dad_ray.models.hub import HubFileNotCachedError, parse_hub_path, weights_available

    cache = _hub_cache(tmp_path / "hub", "org/student", {"model.safetensors": b"x"})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    for path, repo, name in [
        ("hf://org/student/other.safetensors", "org/student", "other.safetensors"),
        ("hf://org/absent/model.safetensors", "org/absent", "model.safetensors"),
    ]:
        with pytest.raises(HubFileNotCachedError) as err:
            load_weights(_random(1), path)
        assert isinstance(err.value, FileNotFoundError)
        text = str(err.value)
        assert repo in text and name in text and str(cache) in text and f"hf download {repo} {name}" in text
        assert not weights_available(path)
    assert weights_available("hf://org/student/model.safetensors")
    with pytest.raises(ValueError, match="hf://<org>/<repo>"):
        parse_hub_path("hf://just-a-repo/file")


def test_create_model_with_pretrained_weights_from_a_path_or_the_hub_cache(tmp_path, source, x, monkeypatch):
    from dad_ray.models.hub import HubFileNotCachedError

    path = save_weights(source, tmp_path / "w.safetensors")
    _assert_same_model(create_model(source.model_name, pretrained=str(path)), source, x)
    cache = _hub_cache(tmp_path / "hub", "org/student", {"model.safetensors": path.read_bytes()})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    _assert_same_model(create_model(source.model_name, pretrained="hf://org/student/model.safetensors"), source, x)
    with pytest.raises(HubFileNotCachedError, match="file 'other.safetensors' of the Hugging Face repo 'org/student'"):
        create_model(source.model_name, pretrained="hf://org/student/other.safetensors")


def test_weights_on_a_storage_uri_are_fetched_once_per_version(tmp_path, source, x, monkeypatch):
    """A file:// weights URI (the path any s3:// URI takes, through dad_ray.data.storage): the model name comes from
    the header alone (a ranged read), load_weights fetches the file into the weights cache, a second load reuses it,
    and a rewritten file (a new version) is fetched again."""
    import os

    from dad_ray.models import weights as weights_module

    monkeypatch.setattr(weights_module, "weights_cache_dir", lambda: tmp_path / "cache")
    path = save_weights(source, tmp_path / "remote" / "student.safetensors")
    uri = path.as_uri()
    assert infer_model_name(uri) == NAME and not (tmp_path / "cache").exists()  # header only: nothing fetched
    loaded = create_model(NAME).eval()
    assert load_weights(loaded, uri).loaded == len(source.state_dict())
    _assert_same_model(source, loaded, x)
    assert len(list((tmp_path / "cache").iterdir())) == 1
    load_weights(create_model(NAME), uri)
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the same version: reused
    save_weights(_random(1), path)
    os.utime(path, ns=(1, 10**18))  # a different modification time even within the clock's resolution
    load_weights(create_model(NAME), uri)
    assert len(list((tmp_path / "cache").iterdir())) == 2
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_weights(create_model(NAME), (tmp_path / "missing.safetensors").as_uri())
    # the experiment's check of teacher / student weights accepts the URI (and still refuses a missing one)
    from dad_ray.models.hub import weights_available

    assert weights_available(uri) and not weights_available((tmp_path / "missing.safetensors").as_uri())
