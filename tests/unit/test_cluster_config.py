"""cluster.yaml, offline: Ray's own schema/validation, node types that can host the GPU presets, image/versions,
security (no world-open ports, token auth, no credentials), and the GPU memory estimate's behaviour."""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest
import ray
import yaml

from dad_ray.cluster import (
    INSTANCE_TYPES,
    PLACEHOLDERS,
    ClusterConfigError,
    check_hostable,
    estimate_gpu_memory_gib,
    load_cluster_config,
    node_types,
    placeholders,
    placements,
    security_findings,
    validate_with_ray,
)
from dad_ray.config import build_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
GPU_PRESETS = (
    "nyu_vitl_to_vitb",
    "nyu_vitl_to_vits",
    "nyu_vitl_dav2b_assistant_to_vitb",
    "nyu_vitl_precomputed_assistant_to_vitb",
    "nyu_vitl_to_convnext_atto",
)


@pytest.fixture(scope="module")
def raw() -> dict:
    return load_cluster_config(CLUSTER_YAML)


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    return validate_with_ray(copy.deepcopy(raw), str(CLUSTER_YAML))


# ----------------------------------------------------------------------------------------------------------------
# Ray's validation


def test_cluster_yaml_passes_rays_own_validation(prepared):
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] == "head"
    # prepare_config merged the common setup commands into the head/worker lists
    assert any("pip install -q -e ~/dad_ray" in c for c in prepared["worker_setup_commands"])
    assert any("pip install -q -e ~/dad_ray" in c for c in prepared["head_setup_commands"])


def _mutations():
    def unknown_top_level_key(c):
        c["max_wokers"] = 3

    def head_type_missing(c):
        c["head_node_type"] = "no_such_type"

    def min_workers_exceed_global_max(c):
        c["available_node_types"]["gpu_student_a10g"]["min_workers"] = 50

    def max_workers_not_an_int(c):
        c["max_workers"] = "twelve"

    def unknown_docker_key(c):
        c["docker"]["imagee"] = "rayproject/ray:2.60.0-py311-cu128"

    def node_type_without_node_config(c):
        del c["available_node_types"]["gpu_large_h100"]["node_config"]

    return [
        unknown_top_level_key,
        head_type_missing,
        min_workers_exceed_global_max,
        max_workers_not_an_int,
        unknown_docker_key,
        node_type_without_node_config,
    ]


@pytest.mark.parametrize("mutate", _mutations(), ids=lambda f: f.__name__)
def test_broken_config_fails_rays_validation(raw, mutate):
    broken = copy.deepcopy(raw)
    mutate(broken)
    with pytest.raises(ClusterConfigError, match="cluster.yaml"):
        validate_with_ray(broken, str(CLUSTER_YAML))


def test_unreadable_config_names_the_file(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("cluster_name: [unclosed\n")
    with pytest.raises(ClusterConfigError, match="c.yaml"):
        load_cluster_config(bad)
    with pytest.raises(ClusterConfigError, match="no such cluster config"):
        load_cluster_config(tmp_path / "missing.yaml")


# ----------------------------------------------------------------------------------------------------------------
# Image, versions, install, disks


def _pyproject_ray_pin() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'"ray\[[^\]]*\](>=[\d.]+,<[\d.]+)"', text)
    assert match, "pyproject.toml: no ray[...] pin found"
    return match.group(1)


def test_image_matches_ray_python_and_torch_cuda(raw):
    image = raw["docker"]["image"]
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-cu(\d+)", image)
    assert match, f"docker.image {image!r} is not rayproject/ray:<ray>-py<XY>-cu<NNN>"
    ray_version, py_major, py_minor, cuda = match.groups()
    assert ray_version == ray.__version__  # the version the tests (and the pinned pyproject) use
    low, high = re.fullmatch(r">=([\d.]+),<([\d.]+)", _pyproject_ray_pin()).groups()
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(low) <= as_tuple(ray_version) < as_tuple(high)
    requires = re.search(r'requires-python = ">=(\d+)\.(\d+)"', (ROOT / "pyproject.toml").read_text()).groups()
    assert (int(py_major), int(py_minor)) >= tuple(int(x) for x in requires)
    assert (int(py_major), int(py_minor)) == sys.version_info[:2], "image Python differs from the tested Python"
    # the torch wheel comes from the PyTorch index of the same CUDA version as the image
    indexes = re.findall(r"download\.pytorch\.org/whl/cu(\d+)", " ".join(raw["setup_commands"]))
    assert indexes == [cuda]
    assert "head_image" not in raw["docker"] and "worker_image" not in raw["docker"]


def test_setup_installs_the_synced_checkout_idempotently(raw):
    mounts = raw["file_mounts"]
    assert mounts["~/dad_ray"] == "."
    commands = raw["setup_commands"]
    assert "pip install -q -e ~/dad_ray" in commands
    for excluded in (".venv", "runs", "data"):
        assert excluded in raw["rsync_exclude"]
    assert ".gitignore" in raw["rsync_filter"]
    # downloads are guarded (a second `ray up` does not fetch again)
    downloads = [c for c in commands if "wget" in c]
    assert downloads and all("test -s" in c for c in downloads)
    assert all(c.startswith("mountpoint -q /mnt/local_nvme ||") for c in raw["initialization_commands"])


def test_spilling_goes_to_the_mounted_nvme(raw):
    assert "-v /mnt/local_nvme:/mnt/local_nvme" in raw["docker"]["run_options"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "--object-spilling-directory=/mnt/local_nvme/ray_spill" in " ".join(raw[key])


def test_head_runs_no_workloads(prepared):
    head = prepared["available_node_types"]["head"]
    assert head["resources"] == {"CPU": 0}
    assert head["max_workers"] == 0
    assert INSTANCE_TYPES[head["node_config"]["InstanceType"]].gpus == 0


def test_gpu_node_types_cover_students_and_large_teachers(prepared):
    types = node_types(prepared)
    families = {n.instance_type.split(".")[0] for n in types.values() if n.gpus > 0}
    assert {"g5", "g6e"} <= families and {"p4d", "p5"} <= families
    for node in types.values():
        assert node.max_workers >= 0
        assert node.gpus == INSTANCE_TYPES[node.instance_type].gpus  # resources agree with the instance type
    assert sum(n.max_workers for n in types.values()) >= prepared["max_workers"] >= 1


def test_resources_that_contradict_the_instance_type_are_rejected(prepared):
    broken = copy.deepcopy(prepared)
    broken["available_node_types"]["gpu_student_a10g"]["resources"]["GPU"] = 8
    with pytest.raises(ClusterConfigError, match="gpu_student_a10g.resources.GPU"):
        node_types(broken)
    broken = copy.deepcopy(prepared)
    broken["available_node_types"]["gpu_student_a10g"]["node_config"]["InstanceType"] = "x9.huge"
    with pytest.raises(ClusterConfigError, match="x9.huge"):
        node_types(broken)


# ----------------------------------------------------------------------------------------------------------------
# The presets fit


@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_gpu_presets_fit_some_node_type(prepared, preset):
    cfg = build_config(preset)
    assert cfg.train.use_gpu and cfg.train.output.startswith("s3://")
    ok = check_hostable(prepared, cfg)
    # the student node types are meant for these presets: they must fit there, not only on p4d/p5
    assert {"gpu_student_a10g", "gpu_student_l40s"} & {p.node_type for p in ok}


def test_documented_16_worker_run_fits(prepared):
    cfg = build_config("nyu_vitl_to_vitb", overrides={"train.num_workers": 16})
    by_type = {p.node_type: p for p in placements(prepared, cfg)}
    a10g = by_type["gpu_student_a10g"]
    assert (a10g.workers_per_node, a10g.nodes_needed, a10g.ok) == (4, 4, True)
    assert by_type["gpu_large_h100"].nodes_needed == 2


def test_too_many_workers_cannot_be_hosted(prepared):
    cfg = build_config("nyu_vitl_to_vitb", overrides={"train.num_workers": 100})
    with pytest.raises(ClusterConfigError, match=r"nyu_vitl_to_vitb.*100 workers.*too few nodes"):
        check_hostable(prepared, cfg)


def test_too_much_gpu_memory_cannot_be_hosted(prepared):
    cfg = build_config("nyu_vitl_to_vitb", overrides={"data.batch_size": 64, "data.crop_size": 1022})
    assert estimate_gpu_memory_gib(cfg).total_gib > max(t.gpu_mem_gib for t in INSTANCE_TYPES.values())
    with pytest.raises(ClusterConfigError, match="too small"):
        check_hostable(prepared, cfg)


def test_cpu_experiments_are_not_placed(prepared):
    with pytest.raises(ClusterConfigError, match="train.use_gpu"):
        placements(prepared, build_config("smoke"))


# ----------------------------------------------------------------------------------------------------------------
# GPU memory estimate


def test_memory_estimate_matches_its_documented_example():
    documented = re.search(r"about ([\d.]+) GiB", estimate_gpu_memory_gib.__doc__.replace("\n", " "))
    assert documented
    est = estimate_gpu_memory_gib(build_config("nyu_vitl_to_vitb"))
    assert est.total_gib == pytest.approx(float(documented.group(1)), abs=0.05)
    assert set(est.parts_gib) == {
        "student_state",
        "student_activations",
        "teacher_weights",
        "teacher_forward_peak",
        "fixed_overhead",
    }


def test_memory_estimate_moves_the_right_way():
    base = build_config("nyu_vitl_to_vitb")
    est = lambda **o: estimate_gpu_memory_gib(build_config("nyu_vitl_to_vitb", overrides=o)).total_gib  # noqa: E731
    ref = estimate_gpu_memory_gib(base).total_gib
    assert est(**{"data.batch_size": 8}) > ref
    assert est(**{"data.crop_size": 700}) > ref
    assert est(**{"model.activation_checkpointing": True}) < ref
    assert est(**{"model.student": "dav2_vits"}) < ref
    assert (
        estimate_gpu_memory_gib(build_config("nyu_vitl_dav2b_assistant_to_vitb")).total_gib > ref
    )  # a second teacher resident
    # supervised fine-tuning loads no teacher
    supervised = estimate_gpu_memory_gib(build_config("nyu_vitl_to_vitb", overrides={"loss.mode": "supervised"}))
    assert "teacher_weights" not in supervised.parts_gib and supervised.total_gib < ref
    # the student's training state is 20 bytes per parameter of ViT-B (97.5 M parameters, METHOD.md)
    assert estimate_gpu_memory_gib(base).parts_gib["student_state"] == pytest.approx(97.47e6 * 20 / 2**30, abs=0.01)


# ----------------------------------------------------------------------------------------------------------------
# Security and placeholders


def test_cluster_yaml_has_no_security_findings(raw):
    assert security_findings(raw, CLUSTER_YAML.read_text()) == []


def _insecure():
    def default_security_group(c):
        del c["available_node_types"]["gpu_student_l40s"]["node_config"]["SecurityGroupIds"]

    def world_open_dashboard_rule(c):
        c["provider"]["security_group"] = {
            "IpPermissions": [
                {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
            ]
        }

    def dashboard_on_all_interfaces(c):
        c["head_start_ray_commands"] = [x.replace("127.0.0.1", "0.0.0.0") for x in c["head_start_ray_commands"]]

    def no_token_auth(c):
        c["worker_start_ray_commands"] = [x.replace("RAY_AUTH_MODE=token ", "") for x in c["worker_start_ray_commands"]]

    return [default_security_group, world_open_dashboard_rule, dashboard_on_all_interfaces, no_token_auth]


@pytest.mark.parametrize("mutate", _insecure(), ids=lambda f: f.__name__)
def test_insecure_variants_are_flagged(raw, mutate):
    insecure = copy.deepcopy(raw)
    mutate(insecure)
    assert len(security_findings(insecure)) == 1


def test_credentials_in_the_file_are_flagged(raw):
    text = CLUSTER_YAML.read_text() + "\n# aws_secret_access_key: x\n# AKIAABCDEFGHIJKLMNOP\n"
    assert len(security_findings(raw, text)) == 2


def test_placeholders_are_the_documented_ones():
    text = CLUSTER_YAML.read_text()
    assert placeholders(text) == sorted(PLACEHOLDERS)
    docs = (ROOT / "docs" / "cluster.md").read_text()
    for name in PLACEHOLDERS:
        assert name in docs, f"docs/cluster.md does not explain {name}"
    filled = text
    for name in PLACEHOLDERS:
        filled = filled.replace(name, "x")
    assert placeholders(filled) == []
    assert yaml.safe_load(filled)["cluster_name"] == "dad-ray"


def test_a_precomputed_assistant_costs_no_teacher_memory():
    """The ViT-B assistant run live adds its weights to every worker; as a precomputed column it adds nothing."""
    from dad_ray.cluster import estimate_gpu_memory_gib
    from dad_ray.config import build_config

    live = estimate_gpu_memory_gib(build_config("nyu_vitl_dav2b_assistant_to_vitb"))
    column = estimate_gpu_memory_gib(build_config("nyu_vitl_precomputed_assistant_to_vitb"))
    alone = estimate_gpu_memory_gib(build_config("nyu_vitl_to_vitb"))
    assert column.total_gib == pytest.approx(alone.total_gib)
    assert live.total_gib > column.total_gib


def test_a_teacher_inference_node_type_offers_the_stage_accelerator(prepared):
    """model.teacher_placement: data with teacher_stage.accelerator_type L4 lands on the L4 node type only."""
    spec = prepared["available_node_types"]["gpu_teacher_l4"]
    assert spec["resources"]["accelerator_type:L4"] == 1 and spec["resources"]["GPU"] == 4  # Ray: 1 per node
    assert INSTANCE_TYPES[spec["node_config"]["InstanceType"]].gpu_name == "L4"
    others = [n for n, s in prepared["available_node_types"].items() if n != "gpu_teacher_l4"]
    assert not any("accelerator_type:L4" in prepared["available_node_types"][n].get("resources", {}) for n in others)
