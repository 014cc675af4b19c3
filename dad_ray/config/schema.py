"""The experiment config: one frozen dataclass per component, composed into :class:`ExperimentConfig`.

Every field is documented here, once. Presets (``dad_ray/config/presets/*.yaml``) and ``--set`` overrides address
fields by dotted path, e.g. ``loss.lambda_lg`` or ``model.teachers.0.weights``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dad_ray.config.core import check

PATCH = 14  # ViT patch size of every Depth Anything model

Normalization = Literal["global", "hybrid", "local", "none"]


def _mult14(key: str, value: int) -> None:
    check(value > 0 and value % PATCH == 0, key, f"must be a positive multiple of {PATCH}, got {value}")


@dataclass(frozen=True)
class SyntheticConfig:
    """Procedural NYU-like scenes generated into ``data.root`` when its shards are missing (0 = never generate)."""

    train_samples: int = 0
    val_samples: int = 0
    height: int = 480
    width: int = 640
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.train_samples >= 0, "data.synthetic.train_samples", "must be >= 0")
        check(self.val_samples >= 0, "data.synthetic.val_samples", "must be >= 0")
        check(self.height >= 32 and self.width >= 32, "data.synthetic.height", "height and width must be >= 32")


@dataclass(frozen=True)
class DataConfig:
    """Where the shards are and how a training batch is cut from a sample (the paper's augmentations)."""

    root: str = "data/synthetic"  # directory or pyarrow URI holding one shard directory per split
    train_split: str = "train"
    val_split: str = "test"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    batch_size: int | Literal["auto"] = 8  # per worker; "auto" (GPU only) finds the largest that fits
    crop_size: int = 560  # shared-context crop, resized to crop_size x crop_size (multiple of 14)
    min_crop: int = 644  # smallest side of the random square crop in source pixels (clipped to the short side)
    global_size: tuple[int, int] = (518, 686)  # student's global view (H, W), multiples of 14
    local_patch_size: int = 518  # teacher resolution of each local patch (multiple of 14)
    local_grid: tuple[int, int] = (2, 2)  # rows x cols of overlapping local patches (N = rows * cols)
    local_overlap: float = 0.25  # fraction of a patch's side shared with its neighbour
    hflip: bool = True
    color_jitter: float = 0.2  # strength of brightness/contrast/saturation jitter on RGB only (0 = off)
    shuffle_buffer: int = 64  # rows in Ray Data's local shuffle buffer (0 = no shuffle)
    data_cpus: float = 1.0  # num_cpus of each Ray Data decode/augment task
    prefetch_batches: int = 2
    max_val_samples: int = 0  # 0 = the whole validation split

    def __post_init__(self) -> None:
        if self.batch_size != "auto":
            check(self.batch_size >= 1, "data.batch_size", f"must be >= 1 or 'auto', got {self.batch_size}")
        _mult14("data.crop_size", self.crop_size)
        _mult14("data.local_patch_size", self.local_patch_size)
        _mult14("data.global_size[0]", self.global_size[0])
        _mult14("data.global_size[1]", self.global_size[1])
        check(self.min_crop >= 1, "data.min_crop", "must be >= 1")
        check(self.local_grid[0] >= 1 and self.local_grid[1] >= 1, "data.local_grid", "must be >= 1 x 1")
        check(0.0 <= self.local_overlap < 1.0, "data.local_overlap", f"must be in [0, 1), got {self.local_overlap}")
        check(0.0 <= self.color_jitter <= 1.0, "data.color_jitter", f"must be in [0, 1], got {self.color_jitter}")
        check(self.shuffle_buffer >= 0, "data.shuffle_buffer", "must be >= 0")
        check(self.data_cpus > 0, "data.data_cpus", "must be > 0 (Ray rejects 0)")
        check(self.prefetch_batches >= 0, "data.prefetch_batches", "must be >= 0")
        check(self.max_val_samples >= 0, "data.max_val_samples", "must be >= 0")


@dataclass(frozen=True)
class TeacherConfig:
    """A frozen teacher: registry name, weights file, and its probability under multi-teacher 'select'."""

    name: str = "dav2_vitl"
    weights: str = ""  # official .pth / .safetensors; "" only allowed when bootstrap trains it
    probability: float = 1.0

    def __post_init__(self) -> None:
        check(self.probability > 0.0, "model.teachers.probability", f"must be > 0, got {self.probability}")


@dataclass(frozen=True)
class ModelConfig:
    # A registry name: "dav2_<encoder>" (Depth Anything V2 layout) or "timm:<timm model>", a DPT-style head on any
    # timm backbone with multi-scale features (dad_ray.models.ZOO lists recommended ones, e.g. timm:convnext_atto)
    student: str = "dav2_vits"
    student_weights: str = ""  # initialise the student from this checkpoint ...
    student_init: Literal["none", "full", "encoder"] = "none"  # ... as a whole model or encoder only
    # timm students only: initialise the backbone from timm's pretrained weights found in the local Hugging Face
    # cache (HF_HUB_CACHE / HF_HOME; never downloaded), head random; not there → an error naming the repo and file
    student_pretrained: bool = False
    teachers: tuple[TeacherConfig, ...] = (TeacherConfig(),)
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        check(len(self.teachers) >= 1, "model.teachers", "at least one teacher is required")
        check(
            (self.student_init == "none") == (self.student_weights == ""),
            "model.student_init",
            "student_init 'full'/'encoder' needs model.student_weights, and student_weights needs one of them",
        )
        if self.student_pretrained:
            check(
                self.student.startswith("timm:"),
                "model.student_pretrained",
                f"only timm students ('timm:<name>') have timm pretrained weights, got student {self.student!r}",
            )
            check(
                self.student_init == "none",
                "model.student_pretrained",
                "choose one initialisation: timm's pretrained backbone or model.student_weights, not both",
            )


@dataclass(frozen=True)
class LossConfig:
    mode: Literal["distill", "supervised"] = "distill"
    normalization: Normalization = "hybrid"  # L_Dis normalisation (paper: hybrid)
    lambda_lg: float = 0.5  # λ1, local-global
    # λ2, feature alignment: cosine between the student's and the teacher's last-layer tokens on the shared-context
    # crop. When the student's token grid differs from the teacher's (timm students: another patch size, or a CNN's
    # deepest map, stride 32), its tokens are resampled to the teacher's grid over the same image area (mean of
    # bilinear samples per teacher cell: pooled when finer, interpolated when coarser; padding excluded); when the
    # widths differ a linear projection (trained, decoder lr, not saved with the student) maps them to the
    # teacher's width. Matching grids and widths (DAv2 students) use the tokens as they are.
    lambda_feat: float = 1.0
    lambda_grad: float = 2.0  # λ3, gradient matching
    feat_margin: float = 0.85  # α: tokens whose cosine similarity exceeds it are ignored
    grad_scales: int = 4
    supervised_loss: Literal["ssi", "silog"] = "ssi"
    supervised_grad_weight: float = 0.5  # gradient-matching weight added to SSI
    silog_lambda: float = 0.5

    def __post_init__(self) -> None:
        for name in ("lambda_lg", "lambda_feat", "lambda_grad", "supervised_grad_weight"):
            value = getattr(self, name)
            check(value >= 0.0, f"loss.{name}", f"must be >= 0, got {value}")
        check(-1.0 <= self.feat_margin <= 1.0, "loss.feat_margin", "must be a cosine in [-1, 1]")
        check(1 <= self.grad_scales <= 8, "loss.grad_scales", "must be in [1, 8]")
        check(0.0 <= self.silog_lambda <= 1.0, "loss.silog_lambda", "must be in [0, 1]")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 5e-5  # decoder learning rate
    encoder_lr_mult: float = 0.1  # encoder lr = lr * encoder_lr_mult (DAv2 convention)
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["poly", "cosine", "constant"] = "poly"
    poly_power: float = 0.9
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # floor of the decay as a fraction of the peak
    max_steps: int = 20000  # optimizer steps
    grad_clip: float = 1.0  # max global grad norm (0 = off)
    grad_accum: int = 1

    def __post_init__(self) -> None:
        check(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        check(self.encoder_lr_mult >= 0, "optim.encoder_lr_mult", "must be >= 0")
        check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        check(all(0.0 <= b < 1.0 for b in self.betas), "optim.betas", "must be in [0, 1)")
        check(self.poly_power > 0, "optim.poly_power", "must be > 0")
        check(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
        check(0.0 <= self.min_lr_ratio <= 1.0, "optim.min_lr_ratio", "must be in [0, 1]")
        check(self.max_steps >= 1, "optim.max_steps", "must be >= 1")
        check(self.warmup_steps < self.max_steps, "optim.warmup_steps", "must be < optim.max_steps")
        check(self.grad_clip >= 0, "optim.grad_clip", "must be >= 0")
        check(self.grad_accum >= 1, "optim.grad_accum", "must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    """Ray Train wiring, checkpoints, logging."""

    name: str = "default"  # run name; the same name + output continues the run
    output: str = "./runs"  # storage path (local dir or s3://...)
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # used when use_gpu
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"  # Train worker group
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast on GPU, fp32 on CPU
    seed: int = 0
    val_every: int = 500  # optimizer steps between validations (and checkpoints)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2  # best K by validation AbsRel
    max_failures: int = 2
    log_every: int = 20
    image_every: int = 500  # TensorBoard image grid period (0 = never)
    fail_at_step: int = -1  # testing: rank 0 hard-exits once at this step (first attempt only)

    def __post_init__(self) -> None:
        check(self.name != "" and "/" not in self.name, "train.name", "must be a non-empty name without '/'")
        check(self.num_workers >= 1, "train.num_workers", "must be >= 1")
        check(self.cpus_per_worker > 0, "train.cpus_per_worker", "must be > 0")
        check(self.gpus_per_worker > 0, "train.gpus_per_worker", "must be > 0")
        for name in ("val_every", "checkpoint_every", "log_every"):
            check(getattr(self, name) >= 1, f"train.{name}", "must be >= 1")
        check(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
        check(self.max_failures >= -1, "train.max_failures", "must be >= -1 (-1 = retry forever)")
        check(self.image_every >= 0, "train.image_every", "must be >= 0")


@dataclass(frozen=True)
class EvalConfig:
    protocol: Literal["nyu", "kitti", "eth3d", "scannet", "diode"] = "nyu"
    alignment: Literal["disparity", "depth"] = "disparity"
    input_size: int = 518  # short side of the model input (multiple of 14)
    batch_size: int = 4

    def __post_init__(self) -> None:
        _mult14("eval.input_size", self.input_size)
        check(self.batch_size >= 1, "eval.batch_size", "must be >= 1")


@dataclass(frozen=True)
class BootstrapConfig:
    """Embedded default: train the small teacher on ground truth when its weights file does not exist yet."""

    enabled: bool = False
    max_steps: int = 300
    lr: float = 1e-3
    batch_size: int = 8

    def __post_init__(self) -> None:
        check(self.max_steps >= 1, "bootstrap.max_steps", "must be >= 1")
        check(self.lr > 0, "bootstrap.lr", "must be > 0")
        check(self.batch_size >= 1, "bootstrap.batch_size", "must be >= 1")


@dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)

    def __post_init__(self) -> None:
        if self.loss.mode == "distill" and len(self.model.teachers) > 1:
            total = sum(t.probability for t in self.model.teachers)
            check(abs(total - 1.0) < 1e-6, "model.teachers", f"probabilities must sum to 1, got {total}")
        check(
            self.data.batch_size != "auto" or self.train.use_gpu,
            "data.batch_size",
            "'auto' needs train.use_gpu=true (it probes GPU memory)",
        )
        check(
            self.train.checkpoint_every % self.train.val_every == 0,
            "train.checkpoint_every",
            "must be a multiple of train.val_every (checkpoints are ranked by validation AbsRel)",
        )
