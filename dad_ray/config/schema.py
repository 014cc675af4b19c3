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

    train_samples: int = 0  # labeled scenes of the training split (or of data.bootstrap_split when set)
    val_samples: int = 0  # labeled scenes of the validation split (and of the test split when test_samples is 0)
    test_samples: int = 0  # labeled scenes of data.test_split when it differs from data.val_split (0 = val_samples)
    # > 0: data.train_split holds this many UNLABELED scenes (depth-less shards, scenes of their own) for the student
    # to distil on, and the labeled train_samples go to data.bootstrap_split (the teacher's bootstrap)
    unlabeled_samples: int = 0
    height: int = 480
    width: int = 640
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("train_samples", "val_samples", "test_samples", "unlabeled_samples"):
            check(getattr(self, name) >= 0, f"data.synthetic.{name}", "must be >= 0")
        check(self.height >= 32 and self.width >= 32, "data.synthetic.height", "height and width must be >= 32")


@dataclass(frozen=True)
class TrainSource:
    """One shard set of a training mixture (``data.train_sources``)."""

    root: str = ""  # directory or pyarrow URI holding <split>/manifest.json
    split: str = "train"
    weight: float = 1.0  # share of the training rows drawn from it, relative to the other sources' weights

    def __post_init__(self) -> None:
        check(self.root != "", "data.train_sources.root", "must name a shard root (directory or URI)")
        check(self.weight > 0, "data.train_sources.weight", f"must be > 0, got {self.weight}")


@dataclass(frozen=True)
class DataConfig:
    """Where the shards are and how a training batch is cut from a sample (the paper's augmentations)."""

    root: str = "data/synthetic"  # directory or pyarrow URI holding one shard directory per split
    train_split: str = "train"
    # several shard sets mixed by weight, e.g. [{root: data/sa1b, split: train, weight: 0.9}, {root: data/nyu,
    # split: train, weight: 0.1}]; empty = data.root + data.train_split alone. Depth-less (unlabeled) sets are
    # fine for distillation; supervised training refuses them
    train_sources: tuple[TrainSource, ...] = ()
    # validation (best-K checkpoints, Tune's metric): a LABELED set that is not the one the final numbers are
    # reported on; val_root "" = data.root
    val_root: str = ""
    val_split: str = "test"
    # the final evaluation's set (the run's final_metrics.json); test_root "" = data.root
    test_root: str = ""
    test_split: str = "test"
    # validation on the test set (same root and split): "warn" logs a warning, "error" refuses the config (the
    # paper presets: model selection must not see the numbers it reports)
    holdout: Literal["warn", "error"] = "warn"
    # labeled split under data.root that bootstrap trains missing teachers on ("" = the training sources); the
    # embedded default bootstraps on labeled scenes and distils the student on different, unlabeled ones
    bootstrap_split: str = ""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    batch_size: int | Literal["auto"] = 8  # per worker; "auto" (GPU only) finds the largest that fits
    crop_size: int = 560  # shared-context crop, resized to crop_size x crop_size (multiple of 14)
    min_crop: int = 644  # smallest side of the random square crop in source pixels (clipped to the short side)
    global_size: tuple[int, int] = (518, 686)  # student's global view (H, W), multiples of 14
    local_patch_size: int = 518  # teacher resolution of each local patch (multiple of 14)
    local_grid: tuple[int, int] = (2, 2)  # rows x cols of overlapping local patches (N = rows * cols)
    local_overlap: float = 0.25  # fraction of a patch's side shared with its neighbour
    # Where the local patches are cut (both readings keep the boxes in the coordinates of the student's global view,
    # the whole image at global_size): "image" = a grid over the whole image (the reading before the paper's
    # implementation section was followed); "crop" = the paper's implementation: a grid over the shared-context
    # crop's source pixels, each patch resized to local_patch_size (560 in the paper) for the teacher.
    local_source: Literal["image", "crop"] = "image"
    # false = Table 2's baseline without random crop: the shared-context view is the whole image resized to
    # crop_size x crop_size (aspect not kept; student and teacher still see the same view)
    random_crop: bool = True
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

    @property
    def training_sources(self) -> tuple[TrainSource, ...]:
        """``train_sources``, or data.root + data.train_split as a single source."""
        return self.train_sources or (TrainSource(self.root, self.train_split, 1.0),)

    @property
    def val_location(self) -> tuple[str, str]:
        """(root, split) of the validation set."""
        return self.val_root or self.root, self.val_split

    @property
    def test_location(self) -> tuple[str, str]:
        """(root, split) of the final evaluation's set."""
        return self.test_root or self.root, self.test_split


@dataclass(frozen=True)
class TeacherConfig:
    """A frozen teacher: registry name, weights file, and its probability under multi-teacher 'select'.

    ``column`` non-empty: a *precomputed* teacher — its pseudo-labels are a column of the training shards (made by
    ``jobs/predict.py`` or attached from an external model's outputs), not a model run during training; ``name``
    then only labels it in logs and journals, ``weights`` must be empty. Whatever the source, the training step
    reads a teacher's pseudo-labels from the batch columns ``teacher{i}_crop`` / ``teacher{i}_local`` (and
    ``teacher{i}_feat``) when the batch carries them (precomputed teachers, or live teachers run in the data
    pipeline: ``model.teacher_placement: data``), else runs the live model (see :mod:`dad_ray.train.task`).
    """

    name: str = "dav2_vitl"
    weights: str = ""  # official .pth / .safetensors; "" only allowed when bootstrap trains it
    probability: float = 1.0
    column: str = ""  # precomputed teacher: the shard column holding its pseudo-labels ("" = a live model)

    def __post_init__(self) -> None:
        check(self.probability > 0.0, "model.teachers.probability", f"must be > 0, got {self.probability}")
        if self.column:
            check(
                not self.weights,
                "model.teachers.weights",
                f"a precomputed teacher (column {self.column!r}) runs no model: leave weights empty, "
                f"got {self.weights!r}",
            )


@dataclass(frozen=True)
class TeacherStageConfig:
    """The teacher stage of ``model.teacher_placement: data``: a Ray Data actor pool after the augmentation that runs
    the live teachers on each row's crop and local patches and adds their pseudo-labels as columns
    (:mod:`dad_ray.train.teacher_stage`)."""

    actors: int = 1  # actors in the pool (each holds every live teacher once)
    num_gpus: float = 0.0  # per actor (0 = CPU, fp32 weights; on a GPU bf16 weights under bf16 autocast)
    num_cpus: float = 1.0  # per actor
    # the GPU type the actors need (Ray's accelerator_type, e.g. "L4"): teacher inference on another node type than
    # the training GPUs ("" = any node with the resources)
    accelerator_type: str = ""
    batch_size: int = 4  # rows per teacher forward
    # back-pressure: tasks queued per actor (with Ray Data's streaming object-store budget, this bounds what a fast
    # pool can put ahead of the trainer)
    max_tasks_in_flight: int = 2
    max_restarts: int = 3  # a killed teacher actor is restarted this many times (its in-flight batches are retried)
    transport: Literal["float16", "float32"] = "float16"  # dtype of the label and feature columns

    def __post_init__(self) -> None:
        check(self.actors >= 1, "model.teacher_stage.actors", f"must be >= 1, got {self.actors}")
        check(self.num_gpus >= 0, "model.teacher_stage.num_gpus", f"must be >= 0, got {self.num_gpus}")
        check(self.num_cpus > 0, "model.teacher_stage.num_cpus", f"must be > 0, got {self.num_cpus}")
        check(self.batch_size >= 1, "model.teacher_stage.batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.max_tasks_in_flight >= 1, "model.teacher_stage.max_tasks_in_flight", "must be >= 1")
        check(self.max_restarts >= 0, "model.teacher_stage.max_restarts", "must be >= 0")


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
    # where the live teachers run: "worker" = inside every training worker's step (each worker holds them);
    # "data" = in a Ray Data actor pool after the augmentation (teacher_stage), on resources of their own, the
    # pseudo-labels streamed to the workers as columns (README "Teacher placement")
    teacher_placement: Literal["worker", "data"] = "worker"
    teacher_stage: TeacherStageConfig = TeacherStageConfig()

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
    # L_Dis normalisations (paper: hybrid). ``normalization`` is the shorthand that sets both terms;
    # ``normalization_sc`` (shared-context term, and the L_grad residual: per-image global, or raw for none) and
    # ``normalization_lg`` (local-global term) set one each (Table 1 varies them independently). A term's
    # normalisation is its own key when given, else the shorthand, else hybrid; giving the shorthand AND an own key
    # with a different value is an error (set one of them to null). Read the result from ``sc_normalization`` /
    # ``lg_normalization``.
    normalization: Normalization | None = None
    normalization_sc: Normalization | None = None
    normalization_lg: Normalization | None = None
    lambda_sc: float = 1.0  # weight of L_sc (0 = Table 2's "LG only": no shared-context depth term)
    lambda_lg: float = 0.5  # λ1, local-global
    # λ2, feature alignment: 1 − cos between the student's last-layer tokens on the shared-context crop and a
    # target chosen by ``feat_target``.
    lambda_feat: float = 1.0
    # L_feat target. "initial": a frozen copy of the student's own encoder as it was initialised (Depth Anything's
    # convention: the student keeps the semantics of its pretrained encoder); same width and grid, no projection;
    # kept outside the trained module (not saved with the student, not in DDP's parameters), rebuilt from the same
    # initialisation on resume. "teacher": the teacher's last-layer tokens; when the student's token grid differs
    # (timm students: another patch size, or a CNN's stride-32 map) its tokens are resampled to the teacher's grid
    # over the same image area (mean of bilinear samples per teacher cell), and when the widths differ a linear
    # projection (trained, decoder lr, checkpointed but not saved with the student) maps them to the teacher's width
    # — a module no source describes, which can absorb part of the alignment. "auto" (default) = "initial" when the
    # student starts from pretrained weights (model.student_init full/encoder, or model.student_pretrained), else
    # "teacher". Why: the paper's students start from a DAv2 encoder and it follows Depth Anything's L_feat, whose
    # target is the frozen pretrained encoder; for its best student (initialised from DAv2-L, the teacher) both
    # targets are the same encoder. A randomly initialised student has no meaningful initial encoder.
    feat_target: Literal["auto", "initial", "teacher"] = "auto"
    lambda_grad: float = 2.0  # λ3, gradient matching
    feat_margin: float = 0.85  # α: tokens whose cosine similarity exceeds it are ignored
    grad_scales: int = 4
    supervised_loss: Literal["ssi", "silog"] = "ssi"
    supervised_grad_weight: float = 0.5  # gradient-matching weight added to SSI
    silog_lambda: float = 0.5

    def __post_init__(self) -> None:
        for name in ("lambda_sc", "lambda_lg", "lambda_feat", "lambda_grad", "supervised_grad_weight"):
            value = getattr(self, name)
            check(value >= 0.0, f"loss.{name}", f"must be >= 0, got {value}")
        for name in ("normalization_sc", "normalization_lg"):
            own = getattr(self, name)
            check(
                self.normalization is None or own is None or own == self.normalization,
                f"loss.{name}",
                f"{own!r} contradicts the shorthand loss.normalization={self.normalization!r}; give one of them "
                "(set the other to null)",
            )
        check(-1.0 <= self.feat_margin <= 1.0, "loss.feat_margin", "must be a cosine in [-1, 1]")
        check(1 <= self.grad_scales <= 8, "loss.grad_scales", "must be in [1, 8]")
        check(0.0 <= self.silog_lambda <= 1.0, "loss.silog_lambda", "must be in [0, 1]")

    @property
    def sc_normalization(self) -> Normalization:
        """The shared-context term's normalisation: ``normalization_sc``, else ``normalization``, else hybrid."""
        return self.normalization_sc or self.normalization or "hybrid"

    @property
    def lg_normalization(self) -> Normalization:
        """The local-global term's normalisation: ``normalization_lg``, else ``normalization``, else hybrid."""
        return self.normalization_lg or self.normalization or "hybrid"


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 5e-5  # decoder learning rate
    encoder_lr_mult: float = 0.1  # encoder lr = lr * encoder_lr_mult (DAv2 convention)
    weight_decay: float = 0.01  # AdamW, on every parameter unless decay_exclude
    # true: no weight decay on biases and norm/scale parameters (ndim <= 1) and on position/class/mask tokens (a
    # common ViT recipe); false (the paper's and DAv2's training code: AdamW over all parameters): decay everything
    decay_exclude: bool = False
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
    # auto = bf16 autocast on GPU, fp32 on CPU; under bf16 the frozen teachers' weights are stored in bf16 too
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # torch.compile the student and the teachers (nn.Module.compile, in place: checkpoint keys unchanged). Off by
    # default: not yet measured on a GPU (jobs/benchmark.py gpu --compile measures it), and on CPU it costs minutes
    # of compilation for small models
    compile: bool = False
    seed: int = 0
    val_every: int = 500  # optimizer steps between validations (and checkpoints)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2  # best K by validation AbsRel
    max_failures: int = 2
    # optimizer steps between log lines: loss sums and scale statistics stay on the device and are read (one host
    # sync) only then; the journal's per-step lines are written then too
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


# the names of dad_ray.metrics.PROTOCOLS (a test keeps them equal)
ProtocolName = Literal["nyu", "kitti", "kitti_garg", "diode", "eth3d", "scannet"]


@dataclass(frozen=True)
class EvalConfig:
    """Zero-shot evaluation (training validation, the final evaluation, ``jobs/evaluate.py``). A saved student
    records these values in its metadata, and ``jobs/evaluate.py`` / ``jobs/predict.py`` default to them."""

    # valid depth range and crop (dad_ray.metrics.PROTOCOLS): nyu 1e-3–10 m + Eigen crop; kitti 1e-5–80 m + Eigen
    # crop (Marigold's and Distill-Any-Depth's configs), kitti_garg the same with the Garg crop; diode 0.6–350 m;
    # eth3d 1e-5 m – inf; scannet 1e-3–10 m
    protocol: ProtocolName = "nyu"
    # least-squares space: disparity (fit s·pred + t to 1/gt; Depth Anything models) or depth (fit to gt)
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
        pretrained = self.model.student_init != "none" or self.model.student_pretrained
        check(
            not (self.loss.mode == "distill" and self.loss.lambda_feat > 0 and self.loss.feat_target == "initial")
            or pretrained,
            "loss.feat_target",
            "'initial' aligns to the student's initial encoder, but the student starts from random weights (set "
            "model.student_init/student_weights or model.student_pretrained, or use 'teacher' / 'auto')",
        )
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
