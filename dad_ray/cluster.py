"""Cluster-config checks that need no cloud account: Ray's own schema validation of ``cluster.yaml``, whether its
node types can host an experiment's Train workers (CPU/GPU counts and GPU memory), and security lint.

    python -m dad_ray.cluster cluster.yaml --preset nyu_vitl_to_vitb --set train.num_workers=16

GPU memory needs come from :func:`estimate_gpu_memory_gib`, an analytical **estimate** (no measured figure exists
yet); its constants and assumptions are documented next to it.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from dad_ray.config import ExperimentConfig, build_config
from dad_ray.models.registry import get_spec

logger = logging.getLogger(__name__)

GIB = 1024**3

# Values cluster.yaml leaves to the user (docs/cluster.md, "One-time set-up", says how to create each).
PLACEHOLDERS = ("REPLACE_ME_AMI", "REPLACE_ME_SECURITY_GROUP", "REPLACE_ME_HEAD_PROFILE", "REPLACE_ME_WORKER_PROFILE")


class ClusterConfigError(ValueError):
    """A cluster config that Ray would reject, that cannot host an experiment, or that is insecure."""


@dataclass(frozen=True)
class InstanceType:
    """An EC2 instance type as Ray sees it: vCPUs, GPUs and the memory of each GPU (GiB as CUDA reports it)."""

    vcpus: int
    ram_gib: int
    gpus: int = 0
    gpu_name: str = ""
    gpu_mem_gib: float = 0.0
    nvme_gb: int = 0  # instance-store NVMe, total


# GPU memory = the total nvidia-smi reports (MiB / 1024): A10G 23028 MiB, L40S 46068 MiB, A100-40GB 40960 MiB,
# H100-SXM 81559 MiB. CPU/RAM/NVMe from the EC2 instance-type pages.
INSTANCE_TYPES: dict[str, InstanceType] = {
    "m6i.2xlarge": InstanceType(8, 32),
    "m6id.2xlarge": InstanceType(8, 32, nvme_gb=474),
    "g5.xlarge": InstanceType(4, 16, 1, "A10G", 22.5, 250),
    "g5.12xlarge": InstanceType(48, 192, 4, "A10G", 22.5, 3800),
    "g5.48xlarge": InstanceType(192, 768, 8, "A10G", 22.5, 7600),
    "g6.12xlarge": InstanceType(48, 192, 4, "L4", 22.0, 3760),
    "g6e.xlarge": InstanceType(4, 32, 1, "L40S", 45.0, 250),
    "g6e.12xlarge": InstanceType(48, 384, 4, "L40S", 45.0, 3800),
    "g6e.48xlarge": InstanceType(192, 1536, 8, "L40S", 45.0, 7600),
    "p4d.24xlarge": InstanceType(96, 1152, 8, "A100-40GB", 40.0, 8000),
    "p4de.24xlarge": InstanceType(96, 1152, 8, "A100-80GB", 80.0, 8000),
    "p5.48xlarge": InstanceType(192, 2048, 8, "H100-80GB", 79.6, 30720),
}


@dataclass(frozen=True)
class NodeType:
    """A node type of a cluster config with the resources it offers to Ray."""

    name: str
    instance_type: str
    cpus: float
    gpus: float
    gpu_mem_gib: float  # per GPU
    max_workers: int


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak GPU memory of one Train worker, in GiB, with its parts (an estimate, see estimate_gpu_memory_gib)."""

    total_gib: float
    parts_gib: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Placement:
    """How an experiment's workers fit on one node type."""

    node_type: str
    workers_per_node: int
    nodes_needed: int
    fits_count: bool  # nodes_needed <= the node type's max_workers
    fits_memory: bool  # the memory estimate fits one worker's share of a GPU
    memory_gib: float  # GPU memory available to one worker

    @property
    def ok(self) -> bool:
        return self.fits_count and self.fits_memory


# ----------------------------------------------------------------------------------------------------------------
# Loading and Ray's validation


def load_cluster_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a cluster YAML file (a mapping), with errors that name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ClusterConfigError(f"{path}: no such cluster config") from None
    except yaml.YAMLError as err:
        raise ClusterConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ClusterConfigError(f"{path}: a cluster config must be a mapping, got {type(data).__name__}")
    return data


def validate_with_ray(config: dict[str, Any], source: str = "cluster config") -> dict[str, Any]:
    """Run Ray's own offline checks (``prepare_config`` then ``validate_config``) and return the prepared config.

    These are private Ray APIs, reached through :func:`dad_ray.runtime.private_api` (pyproject.toml pins ray 2.60.x
    for that reason). Nothing here contacts a cloud provider.
    """
    import jsonschema

    from dad_ray.runtime import private_api

    prepare_config = private_api("prepare_cluster_config")
    validate_config = private_api("validate_cluster_config")

    try:
        prepared = prepare_config(config)
        validate_config(prepared)
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "<top level>"
        raise ClusterConfigError(f"{source}: Ray's schema rejects '{where}': {err.message}") from None
    except (ValueError, KeyError, AssertionError, RuntimeError) as err:
        raise ClusterConfigError(f"{source}: Ray rejects the config: {err}") from None
    return prepared


def node_types(config: dict[str, Any], source: str = "cluster config") -> dict[str, NodeType]:
    """The node types of a (prepared) config, with CPU/GPU counts cross-checked against :data:`INSTANCE_TYPES`.

    A node type's explicit ``resources`` win (they are what Ray schedules on); if they are absent the table supplies
    them, as Ray's AWS provider would detect them. A GPU count that disagrees with the instance type is an error.
    """
    out: dict[str, NodeType] = {}
    for name, spec in config.get("available_node_types", {}).items():
        key = f"{source}: available_node_types.{name}"
        itype = spec.get("node_config", {}).get("InstanceType", "")
        known = INSTANCE_TYPES.get(itype)
        if known is None:
            raise ClusterConfigError(
                f"{key}.node_config.InstanceType: '{itype}' is not in dad_ray.cluster.INSTANCE_TYPES "
                f"(known: {', '.join(sorted(INSTANCE_TYPES))}); add its vCPUs, GPUs and GPU memory there"
            )
        resources = spec.get("resources", {})
        cpus = float(resources.get("CPU", known.vcpus))
        gpus = float(resources.get("GPU", known.gpus))
        if gpus > known.gpus:
            raise ClusterConfigError(f"{key}.resources.GPU: {gpus:g} but {itype} has {known.gpus} GPU(s)")
        if cpus > known.vcpus:
            raise ClusterConfigError(f"{key}.resources.CPU: {cpus:g} but {itype} has {known.vcpus} vCPUs")
        out[name] = NodeType(name, itype, cpus, gpus, known.gpu_mem_gib, int(spec.get("max_workers", 0)))
    return out


# ----------------------------------------------------------------------------------------------------------------
# GPU memory estimate

# Bytes per parameter of the trained student: fp32 weight + fp32 grad + AdamW m and v (fp32) + DDP's gradient bucket.
BYTES_PER_TRAINED_PARAM = 4 + 4 + 8 + 4
# Frozen teachers: bf16 weights under bf16 precision (dad_ray.train.step.teacher_dtype; the GPU default), else fp32;
# no grads, no optimizer state. The frozen initial copy of the student (L_feat target "initial") stays fp32.
BYTES_PER_FROZEN_PARAM = 4
BYTES_PER_BF16_PARAM = 2
# Activations a ViT block keeps for backward, per token and per unit of embedding width: 34 bytes in bf16 with a
# fused attention kernel (Korthikanti et al. 2022, "Reducing activation recomputation", no s^2 term with SDPA) plus
# ~12 for the fp32 residual stream / LayerNorm inputs that autocast keeps in fp32.
VIT_ACT_BYTES_PER_TOKEN_DIM = 46
# The DPT head's saved activations, per output pixel, as channels: the full-resolution tail (features/2 + 32 + 32 +
# 2), path_1 at (8/14)^2 of the pixels (~9.5 x features) and path_2 at (4/14)^2 (~9 x features): ~4.4 x features + 66
# channels, 2 bytes each under autocast.
DPT_TRAIN_CHANNELS = (4.4, 66.0)
# Fixed per-process cost: CUDA context, cuBLAS/cuDNN workspaces, NCCL buffers.
FIXED_OVERHEAD_GIB = 1.5
# Allocator fragmentation / cached blocks.
FRAGMENTATION = 1.15


@cache
def _num_params(model_name: str) -> int:
    """Exact parameter count of a registry model, built on the meta device (no memory, no weights)."""
    import torch

    from dad_ray.models import create_model

    with torch.device("meta"):
        model = create_model(model_name)
    return sum(p.numel() for p in model.parameters())


def _tokens(height: int, width: int) -> int:
    return (height // 14) * (width // 14) + 1  # patches + class token


@cache
def _measured_activation_bytes(model_name: str, height: int, width: int) -> float:
    """Bytes one image's forward saves for backward, as bf16, counted with saved-tensor hooks in a meta-device
    forward (no memory; a tensor saved by two ops counts twice: an upper bound). For students without a formula
    (``timm:*``)."""
    import torch

    from dad_ray.models import create_model

    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * 2
        return t

    with torch.device("meta"):
        model = create_model(model_name)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.empty(1, 3, height, width, requires_grad=True))
    return float(total)


def _student_activation_bytes(model_name: str, images: int, height: int, width: int, checkpointing: bool) -> float:
    if model_name.startswith("timm:"):  # measured, without checkpointing (an upper bound with it)
        return images * _measured_activation_bytes(model_name, height, width)
    spec = get_spec(model_name)
    per_block = VIT_ACT_BYTES_PER_TOKEN_DIM * _tokens(height, width) * spec.embed_dim * images
    # With activation checkpointing a block keeps only its fp32 input; one block is recomputed at a time.
    encoder = (
        (4 * spec.depth / VIT_ACT_BYTES_PER_TOKEN_DIM + 1) * per_block if checkpointing else spec.depth * per_block
    )
    a, b = DPT_TRAIN_CHANNELS
    head = images * height * width * 2 * (a * spec.features + b)
    return encoder + head


def _teacher_peak_bytes(model_name: str, images: int, height: int, width: int, act_bytes: int = 4) -> float:
    """Transient peak of one no-grad teacher forward: the 4 intermediate layers kept for the DPT head plus one block's
    working set (MLP 4x width) at ``act_bytes`` per value (2 with bf16 weights, 4 with fp32 ones), and two
    full-resolution head maps of features/2 + 32 channels in bf16."""
    spec = get_spec(model_name)
    encoder = _tokens(height, width) * spec.embed_dim * act_bytes * (4 + 6)
    head = height * width * 2 * (spec.features + 32)
    return images * (encoder + head)


def _frozen_bytes(cfg: ExperimentConfig, batch: int) -> tuple[float, float]:
    """(frozen weights, largest teacher forward) in bytes for a distillation run (see estimate_gpu_memory_gib)."""
    from dad_ray.train.task import feat_target

    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and cfg.train.use_gpu)
    per_param = BYTES_PER_BF16_PARAM if bf16 else BYTES_PER_FROZEN_PARAM
    # the teachers this worker runs: a precomputed one (a shard column) costs only its batch columns, and with
    # model.teacher_placement "data" every teacher runs in the Ray Data stage, on its own resources
    teachers = sorted({t.name for t in cfg.model.teachers if not t.column and cfg.model.teacher_placement == "worker"})
    weights = sum(_num_params(t) * per_param for t in teachers)
    if cfg.loss.lambda_feat > 0 and feat_target(cfg) == "initial":
        weights += _num_params(cfg.model.student) * BYTES_PER_FROZEN_PARAM
    crop, local = cfg.data.crop_size, cfg.data.local_patch_size
    n_local = cfg.data.local_grid[0] * cfg.data.local_grid[1] if cfg.loss.lambda_lg > 0 else 0
    act = 2 if bf16 else 4

    def peak(t: str) -> float:
        if n_local and local == crop:  # one pass: the crop and every patch
            return _teacher_peak_bytes(t, batch * (1 + n_local), crop, crop, act)
        patches = _teacher_peak_bytes(t, batch * n_local, local, local, act) if n_local else 0.0
        return max(_teacher_peak_bytes(t, batch, crop, crop, act), patches)

    return weights, max((peak(t) for t in teachers), default=0.0)


def estimate_gpu_memory_gib(cfg: ExperimentConfig) -> MemoryEstimate:
    """Estimated peak GPU memory of one distillation Train worker, in GiB (an ESTIMATE, not a measurement).

    Model: the student's training state (weights, grads, AdamW, DDP bucket) + the frozen models' weights (every
    teacher, bf16 under bf16 precision, fp32 otherwise; plus the fp32 initial copy of the student when L_feat's
    target is "initial") + the student's saved activations for its two forwards with grad (shared-context crop and
    global view, batch ``data.batch_size``) + the largest teacher forward (crop and ``batch x local_grid`` patches
    in one pass when their sizes match, as :meth:`dad_ray.train.task.TeacherPool.predict` runs them, else the larger
    of the two passes) + a fixed CUDA/NCCL overhead, times an allocator margin. Assumes bf16 autocast, SDPA attention
    and the teacher run while the student's activations are alive. ``batch_size: auto`` is estimated at batch 1.
    ``jobs/benchmark.py gpu`` prints this estimate beside measured peaks.

    Example (``nyu_vitl_to_vitb``: ViT-L teacher, ViT-B student, crop 560, global view 518x686, 2x2 local patches of
    560, batch 4): about 19.3 GiB — fits a 24 GB A10G; a measured figure should replace this once a GPU run exists.
    """
    batch = 1 if cfg.data.batch_size == "auto" else int(cfg.data.batch_size)
    crop, (gh, gw) = cfg.data.crop_size, cfg.data.global_size
    ckpt = cfg.model.activation_checkpointing
    parts = {
        "student_state": _num_params(cfg.model.student) * BYTES_PER_TRAINED_PARAM,
        "student_activations": _student_activation_bytes(cfg.model.student, batch, crop, crop, ckpt)
        + _student_activation_bytes(cfg.model.student, batch, gh, gw, ckpt),
    }
    if cfg.loss.mode == "distill":
        parts["teacher_weights"], parts["teacher_forward_peak"] = _frozen_bytes(cfg, batch)
    parts_gib = {k: v / GIB for k, v in parts.items()}
    parts_gib["fixed_overhead"] = FIXED_OVERHEAD_GIB
    total = sum(parts_gib.values()) * FRAGMENTATION
    return MemoryEstimate(round(total, 2), {k: round(v, 2) for k, v in parts_gib.items()})


# ----------------------------------------------------------------------------------------------------------------
# Placement


def placements(config: dict[str, Any], cfg: ExperimentConfig, source: str = "cluster config") -> list[Placement]:
    """For every GPU node type: how many of ``cfg``'s Train workers one node holds, how many nodes the run needs, and
    whether that is within the type's ``max_workers`` and the GPU memory estimate.

    A node keeps ``data.data_cpus`` free beside its Train workers so Ray Data's decode tasks can run there too.
    """
    if not cfg.train.use_gpu:
        raise ClusterConfigError("train.use_gpu: placements are computed for GPU runs; this config trains on CPU")
    t = cfg.train
    need = estimate_gpu_memory_gib(cfg).total_gib
    out = []
    for node in node_types(config, source).values():
        if node.gpus <= 0:
            continue
        per_node = min(
            math.floor((node.cpus - cfg.data.data_cpus) / t.cpus_per_worker), math.floor(node.gpus / t.gpus_per_worker)
        )
        per_node = max(per_node, 0)
        nodes = math.ceil(t.num_workers / per_node) if per_node else math.inf
        memory = node.gpu_mem_gib * min(t.gpus_per_worker, 1.0)
        out.append(Placement(node.name, per_node, nodes, nodes <= node.max_workers, need <= memory, memory))
    return out


def check_hostable(config: dict[str, Any], cfg: ExperimentConfig, source: str = "cluster config") -> list[Placement]:
    """The node types that can host ``cfg`` (raises :class:`ClusterConfigError`, naming the reason, if none can)."""
    found = placements(config, cfg, source)
    ok = [p for p in found if p.ok]
    if not ok:
        t = cfg.train
        need = estimate_gpu_memory_gib(cfg).total_gib
        detail = (
            "; ".join(
                f"{p.node_type}: {p.workers_per_node}/node x max_workers -> "
                f"{'fits' if p.fits_count else 'too few nodes'}, {p.memory_gib:.1f} GiB/worker "
                f"{'ok' if p.fits_memory else 'too small'}"
                for p in found
            )
            or "no GPU node types"
        )
        raise ClusterConfigError(
            f"{source}: no node type can host train '{t.name}': {t.num_workers} workers x "
            f"({t.cpus_per_worker:g} CPU, {t.gpus_per_worker:g} GPU), ~{need:.1f} GiB GPU memory each (estimate) "
            f"— {detail}"
        )
    return ok


# ----------------------------------------------------------------------------------------------------------------
# Security lint

_WORLD = ("0.0.0.0/0", "::/0")
_SECRET_PATTERNS = (
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"aws_secret_access_key|aws_access_key_id|AWS_SECRET_ACCESS_KEY", re.IGNORECASE),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"RAY_AUTH_TOKEN\s*="),
)


def security_findings(config: dict[str, Any], raw_text: str = "") -> list[str]:
    """Problems that would expose the cluster or leak credentials (empty = none found).

    - a node type without ``SecurityGroupIds`` (on AWS Ray then creates a group with SSH open to 0.0.0.0/0);
    - extra ``provider.security_group.IpPermissions`` open to the world;
    - a start command that binds the dashboard to all interfaces;
    - a start command without token authentication;
    - credentials (AWS keys, private keys, Ray tokens) written in the file.
    """
    found = []
    if config.get("provider", {}).get("type") == "aws":
        for name, spec in config.get("available_node_types", {}).items():
            if not spec.get("node_config", {}).get("SecurityGroupIds"):
                found.append(
                    f"available_node_types.{name}.node_config.SecurityGroupIds: missing — Ray's default group opens "
                    "SSH to 0.0.0.0/0"
                )
    for i, rule in enumerate(config.get("provider", {}).get("security_group", {}).get("IpPermissions", [])):
        cidrs = [r.get("CidrIp") for r in rule.get("IpRanges", [])] + [
            r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])
        ]
        if any(c in _WORLD for c in cidrs):
            found.append(f"provider.security_group.IpPermissions[{i}]: open to the world ({rule})")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        commands = " ".join(config.get(key, []))
        if re.search(r"--dashboard-host[= ](0\.0\.0\.0|::)", commands):
            found.append(f"{key}: --dashboard-host binds the dashboard to all interfaces; use 127.0.0.1")
        if "ray start" in commands and "RAY_AUTH_MODE=token" not in commands:
            found.append(f"{key}: ray start without RAY_AUTH_MODE=token")
    for pattern in _SECRET_PATTERNS:
        if pattern.search(raw_text):
            found.append(f"credential-like text in the file: /{pattern.pattern}/")
    return found


def placeholders(raw_text: str) -> list[str]:
    """The REPLACE_ME_* values still present in a cluster config's text."""
    return sorted(set(re.findall(r"REPLACE_ME_[A-Z_]+", raw_text)))


# ----------------------------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dad_ray.cluster",
        description="Validate a Ray cluster config offline and show where an experiment's workers fit.",
    )
    parser.add_argument("cluster_yaml", nargs="?", default="cluster.yaml")
    parser.add_argument("--preset", default="nyu_vitl_to_vitb", help="experiment preset (default: nyu_vitl_to_vitb)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        raw = Path(args.cluster_yaml).read_text() if Path(args.cluster_yaml).is_file() else ""
        config = validate_with_ray(load_cluster_config(args.cluster_yaml), args.cluster_yaml)
        cfg = build_config(args.preset, overrides=args.set)
        issues = security_findings(config, raw)
        est = estimate_gpu_memory_gib(cfg)
        found = placements(config, cfg, args.cluster_yaml)
    except Exception as err:  # noqa: BLE001 - a CLI reports any error as one line
        logger.error("error: %s", err)
        return 2
    t = cfg.train
    logger.info("%s: valid for Ray %s (schema + prepare_config)", args.cluster_yaml, _ray_version())
    todo = placeholders(raw)
    if todo:
        logger.info("still to fill in before `ray up`: %s", ", ".join(todo))
    for issue in issues:
        logger.info("SECURITY: %s", issue)
    logger.info(
        "%s: %d workers x (%g CPU, %g GPU); GPU memory per worker ~%.1f GiB (estimate: %s)",
        t.name,
        t.num_workers,
        t.cpus_per_worker,
        t.gpus_per_worker,
        est.total_gib,
        ", ".join(f"{k} {v:.1f}" for k, v in est.parts_gib.items()),
    )
    logger.info("%-20s %12s %12s %12s %s", "node type", "workers/node", "nodes", "GiB/worker", "verdict")
    for p in found:
        verdict = "ok" if p.ok else ("too few nodes" if not p.fits_count else "GPU memory too small")
        nodes = "-" if p.nodes_needed == math.inf else str(p.nodes_needed)
        logger.info("%-20s %12d %12s %12.1f %s", p.node_type, p.workers_per_node, nodes, p.memory_gib, verdict)
    # 0 = ready for `ray up`: some node type hosts the run, no security finding, nothing left to fill in
    return 0 if any(p.ok for p in found) and not issues and not todo else 1


def _ray_version() -> str:
    import ray

    return ray.__version__


if __name__ == "__main__":
    sys.exit(main())
