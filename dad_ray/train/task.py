"""The distillation task: a frozen teacher pool and the trainable student (plus feature projections).

``StudentTask`` is the module DDP wraps: one ``forward`` runs the student on the shared-context crop (with features)
and, when the local-global loss is on, on the global view — so DDP sees a single forward per step.
``TeacherPool`` owns the frozen teachers and the multi-teacher "select" draw.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Sequence

import torch
from torch import nn

from dad_ray.config import ExperimentConfig, ModelConfig, TeacherConfig
from dad_ray.losses import distill_losses, resample_tokens, supervised_losses
from dad_ray.models import create_model, load_weights

logger = logging.getLogger(__name__)


class StudentTask(nn.Module):
    """Student plus what L_feat needs (``loss.feat_target``, see :func:`build_task`).

    Target "teacher": one linear projection per distinct teacher feature width that differs from the student's maps
    student patch tokens (B, N, C_s) to the teacher width C_t; it is trained with the decoder lr and is not part of
    the saved student weights. Students whose token grid differs from the teacher's (timm students: another patch
    size or a CNN's stride-32 map) are first resampled to the teacher's grid (:func:`token_layout`,
    :func:`~dad_ray.losses.resample_tokens`); when the grids match nothing is done.

    Target "initial" (``initial`` given: a copy of the student as initialised): forward also returns
    ``"feat_target"``, that frozen copy's tokens on the same crop (no grad). The copy is held outside the module tree
    (not a submodule): not in ``parameters()`` / ``state_dict()``, so neither in the optimizer, DDP's parameters nor
    the checkpoint; ``.to()`` moves it along (:meth:`_apply`). No projection, no resampling: same model, same grid.
    """

    def __init__(self, student: nn.Module, teacher_dims: Sequence[int] = (), initial: nn.Module | None = None) -> None:
        super().__init__()
        self.student = student
        self.feat_proj = nn.ModuleDict(
            {str(d): nn.Linear(student.embed_dim, d) for d in sorted(set(teacher_dims)) if d != student.embed_dim}
        )
        if initial is not None:
            initial.eval().requires_grad_(False)
        self._initial = (initial,) if initial is not None else ()  # a tuple: never registered as a submodule
        self.teacher_dims = tuple(teacher_dims)  # the widths L_feat projects to (empty for the "initial" target)
        self.use_feat = bool(teacher_dims) or initial is not None

    @property
    def initial(self) -> nn.Module | None:
        """The frozen initial student ("initial" feature target) or None."""
        return self._initial[0] if self._initial else None

    def _apply(self, fn, recurse: bool = True):  # .to() / .cuda() / .float() move the hidden frozen copy too
        super()._apply(fn, recurse)
        if self._initial:
            self._initial[0]._apply(fn, recurse)
        return self

    def project(self, features: torch.Tensor, teacher_dim: int) -> torch.Tensor:
        """(B, N, C_s) → (B, N, teacher_dim)."""
        key = str(teacher_dim)
        return self.feat_proj[key](features) if key in self.feat_proj else features

    def forward(
        self,
        crop: torch.Tensor,
        global_view: torch.Tensor | None = None,
        teacher_dim: int | None = None,
        teacher_grid: tuple[int, int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """crop (B, 3, C, C), global_view (B, 3, Gh, Gw) or None → {"crop": (B, C, C), "features": (B, N_t, C_t),
        "global": (B, Gh, Gw)}; features (when ``teacher_dim`` is given) on ``teacher_grid`` (the student's own grid
        when None). With the "initial" target: student tokens as they are, plus "feat_target" (B, N_s, C_s)."""
        out: dict[str, torch.Tensor] = {}
        if teacher_dim is None:
            out["crop"] = self.student(crop)
        else:
            disparity, features = self.student(crop, return_features=True)
            out["crop"] = disparity
            if self._initial:  # "initial" target: the frozen copy's tokens on the same crop, nothing to map
                with torch.no_grad():
                    out["feat_target"] = self._initial[0](crop, return_features=True)[1].float()
                out["features"] = features
            else:
                if teacher_grid is not None:
                    grid, extent = token_layout(self.student, *crop.shape[-2:])
                    features = resample_tokens(features, grid, extent, teacher_grid)  # (B, N_t, C_s)
                out["features"] = self.project(features, teacher_dim)
        if global_view is not None:
            out["global"] = self.student(global_view)
        return out


def feat_target(cfg: ExperimentConfig) -> str:
    """``loss.feat_target`` with "auto" resolved: "initial" when the student starts from pretrained weights
    (``model.student_init`` full/encoder, or ``model.student_pretrained``), else "teacher" (see LossConfig)."""
    if cfg.loss.feat_target != "auto":
        return cfg.loss.feat_target
    return "initial" if cfg.model.student_init != "none" or cfg.model.student_pretrained else "teacher"


def build_task(student: nn.Module, cfg: ExperimentConfig, teacher_dims: Sequence[int]) -> StudentTask:
    """The run's :class:`StudentTask`. Call it right after :func:`build_student`, before any checkpoint is loaded:
    the "initial" feature target is a deep copy of ``student`` as it is now, so a resumed run rebuilds the same copy
    from the same initialisation. ``teacher_dims``: the teachers' feature widths (distillation), empty otherwise.
    L_feat is off (no features computed) when ``loss.lambda_feat`` is 0 or there is no teacher."""
    if cfg.loss.mode != "distill" or cfg.loss.lambda_feat <= 0 or not teacher_dims:
        return StudentTask(student)
    if feat_target(cfg) == "initial":
        return StudentTask(student, initial=copy.deepcopy(student))
    return StudentTask(student, teacher_dims)


def token_layout(model: nn.Module, height: int, width: int) -> tuple[tuple[int, int], tuple[float, float]]:
    """(grid, extent) of the tokens ``model(x, return_features=True)`` returns for an H x W input: the grid (gh, gw)
    and how many of its cells the image covers from the top-left (H / s, W / s for the model's token stride s:
    ``feature_stride``, else ``patch_size``; less than the grid where a CNN student pads its input)."""
    stride = getattr(model, "feature_stride", None) or model.patch_size
    return (math.ceil(height / stride), math.ceil(width / stride)), (height / stride, width / stride)


class TeacherPool:
    """Frozen teachers and the multi-teacher "select" draw with the configured probabilities.

    Teachers live on ``device`` in ``dtype`` — bf16 on a GPU (:func:`dad_ray.train.step.teacher_dtype`): the weights
    themselves, not only autocast, which halves their memory and their weight reads — in eval mode without grad, and
    run under ``torch.inference_mode``. :meth:`draw` is called once per optimizer step by the step function
    (:class:`dad_ray.train.step.TrainStep`); ``seed`` must be the same on every rank (the run's seed, never the rank's)
    so that every rank draws the same teacher at every step; the generator's state is checkpointed.
    """

    def __init__(
        self,
        teachers: Sequence[TeacherConfig],
        device: torch.device,
        seed: int,
        dtype: torch.dtype = torch.float32,
        compile_models: bool = False,
        live: Sequence[bool] | None = None,
    ) -> None:
        self.configs = tuple(teachers)
        self.dtype = dtype
        self.live = tuple(live) if live is not None else tuple(not t.column for t in teachers)
        # models[i]: the loaded model of a live teacher, None for one whose labels arrive as batch columns
        self.models: list[nn.Module | None] = []
        # layouts[i]: a weightless (meta-device) instance of a registry teacher that is not loaded here — its width
        # and token grid, which L_feat needs — or None for an external precomputed teacher (no features)
        self.layouts: list[nn.Module | None] = []
        for t, is_live in zip(teachers, self.live):
            if not is_live:
                self.models.append(None)
                self.layouts.append(_layout_model(t))
                continue
            model = create_model(t.name)
            report = load_weights(model, t.weights)
            logger.info("teacher %s loaded from %s (%s), stored as %s", t.name, t.weights, report, dtype)
            model.eval().requires_grad_(False).to(device=device, dtype=dtype)
            if compile_models:
                model.compile()  # in place: the module (and its state_dict keys) stay as they are
            self.models.append(model)
            self.layouts.append(model)
        self.probs = torch.tensor([t.probability for t in teachers], dtype=torch.float64)
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def dims(self) -> list[int]:
        """Feature width of each teacher that has features (live or run in the data stage); teachers without any
        (external precomputed columns) are left out."""
        return [m.embed_dim for m in self.layouts if m is not None]

    def dim(self, index: int) -> int | None:
        """Teacher ``index``'s feature width, None when it has no features."""
        layout = self.layouts[index]
        return layout.embed_dim if layout is not None else None

    def token_grid(self, index: int, height: int, width: int) -> tuple[int, int] | None:
        """Teacher ``index``'s token grid for an H x W input (:func:`token_layout`), None without features."""
        layout = self.layouts[index]
        return token_layout(layout, height, width)[0] if layout is not None else None

    def draw(self) -> int:
        """Index of this step's teacher (always 0 for a single teacher; the draw is still consumed for determinism).
        A CPU generator: no device synchronisation."""
        return int(torch.multinomial(self.probs, 1, generator=self.generator).item())

    def predict(
        self, index: int, crop: torch.Tensor, local: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Teacher ``index`` on the shared-context crop (B, 3, C, C) and the local patches (B, N, 3, P, P) or None →
        (crop disparity (B, C, C), crop features (B, N_tok, D), local disparities (B, N, P, P) or None), float32.

        One forward pass for crop and patches when their sizes are equal (C == P), else one per size. The outputs
        are fresh float32 tensors made outside inference mode, so the losses may save them for backward.
        """
        model = self.models[index]
        if model is None:
            raise RuntimeError(
                f"teacher {index} ({self.configs[index].name}) is not loaded on this worker and the batch carries no "
                f"teacher{index}_crop column: its pseudo-labels must come from the data pipeline"
            )
        b = crop.shape[0]
        with torch.inference_mode(), self._autocast(crop.device):
            if local is not None and local.shape[-2:] == crop.shape[-2:]:
                both = torch.cat([crop, local.flatten(0, 1)]).to(self.dtype)  # (B + B*N, 3, C, C)
                disparity, features = model(both, return_features=True)
                t_crop, t_feat, t_local = disparity[:b], features[:b], disparity[b:]
            else:
                t_crop, t_feat = model(crop.to(self.dtype), return_features=True)
                t_local = model(local.flatten(0, 1).to(self.dtype)) if local is not None else None
            if t_local is not None:
                t_local = t_local.view(*local.shape[:2], *t_local.shape[-2:])  # (B, N, P, P)
        return _fresh(t_crop), _fresh(t_feat), _fresh(t_local) if t_local is not None else None

    def _autocast(self, device: torch.device):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()  # whatever the caller chose (fp32 on CPU by default)
        return torch.autocast(device_type=device.type, dtype=self.dtype)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def _layout_model(teacher: TeacherConfig) -> nn.Module | None:
    """A weightless instance (meta device, no memory) of a registry teacher run elsewhere (its labels and features
    arrive as batch columns); None for a precomputed column, which carries no features."""
    if teacher.column:
        return None
    with torch.device("meta"):
        return create_model(teacher.name)


def batch_teacher(
    batch: dict[str, torch.Tensor], index: int, use_lg: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor | None] | None:
    """Teacher ``index``'s pseudo-labels carried by the batch, or None when it carries none (a live teacher).

    Columns (B leading): ``teacher{i}_crop`` (B, C, C) disparity on the shared-context crop; ``teacher{i}_local``
    (B, N, P, P) on the local patches (needed when the local-global loss is on); optional ``teacher{i}_feat``
    (B, N_tok, D) last-layer tokens on the crop; optional bool ``teacher{i}_crop_mask`` / ``teacher{i}_local_mask``
    (default: every pixel valid). Any float dtype (float16 / bfloat16 in transport); returned as float32.
    Returns (crop, feat or None, local or None, crop mask, local mask or None)."""
    prefix = f"teacher{index}_"
    if prefix + "crop" not in batch:
        return None
    crop = batch[prefix + "crop"].float()
    local = batch[prefix + "local"].float() if use_lg else None
    if use_lg and local is None:
        raise KeyError(f"the batch carries {prefix}crop but not {prefix}local, which the local-global loss needs")
    feat = batch[prefix + "feat"].float() if prefix + "feat" in batch else None
    crop_mask = batch.get(prefix + "crop_mask")
    crop_mask = crop_mask.bool() if crop_mask is not None else torch.ones_like(crop, dtype=torch.bool)
    local_mask = None
    if local is not None:
        local_mask = batch.get(prefix + "local_mask")
        local_mask = local_mask.bool() if local_mask is not None else torch.ones_like(local, dtype=torch.bool)
    return crop, feat, local, crop_mask, local_mask


def _fresh(t: torch.Tensor) -> torch.Tensor:
    """A float32 copy that is a normal tensor (an inference tensor cannot be saved for backward)."""
    return t.to(torch.float32, copy=True)


def build_student(cfg: ModelConfig) -> nn.Module:
    """The student from the registry, optionally initialised from a checkpoint (whole model or encoder only) or, for
    timm students, from timm's pretrained backbone weights in the local cache (``model.student_pretrained``)."""
    student = create_model(cfg.student, **({"pretrained_backbone": True} if cfg.student_pretrained else {}))
    if cfg.student_init != "none":
        report = load_weights(student, cfg.student_weights, encoder_only=cfg.student_init == "encoder")
        logger.info(
            "student %s initialised (%s) from %s: %s", cfg.student, cfg.student_init, cfg.student_weights, report
        )
    if cfg.activation_checkpointing:
        student.set_grad_checkpointing(True)
    return student


def compute_losses(
    model: nn.Module,
    teachers: TeacherPool | None,
    batch: dict[str, torch.Tensor],
    cfg: ExperimentConfig,
    *,
    use_feat: bool,
    teacher_index: int = 0,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor | None]:
    """One micro-batch's loss parts (call under autocast). ``model`` is the (DDP-wrapped) :class:`StudentTask`;
    ``teacher_index`` is the optimizer step's teacher (drawn once per step by :class:`dad_ray.train.step.TrainStep`).

    distill: teacher pseudo-labels (no grad) on the shared-context crop and on the N local patches; the student on
    the crop (+ features) and the global view → L_sc, L_lg, L_feat, L_grad. supervised: the student on the crop vs
    ground truth. Returns (parts with "total", the student outputs, the teacher's crop prediction or None).
    """
    if teachers is None:
        out = model(batch["crop_image"])
        return supervised_losses(out["crop"], batch["crop_depth"], batch["crop_mask"], cfg.loss), out, None
    use_lg = cfg.loss.lambda_lg > 0
    t_idx = teacher_index
    carried = batch_teacher(batch, t_idx, use_lg)
    if carried is None:  # a live teacher on this worker: crop and patches in one pass when their sizes match
        t_crop, t_feat, t_local = teachers.predict(
            t_idx, batch["crop_image"], batch["local_images"] if use_lg else None
        )
        m_crop = torch.ones_like(t_crop, dtype=torch.bool)  # pseudo-labels are dense
        m_local = torch.ones_like(t_local, dtype=torch.bool) if t_local is not None else None
    else:  # made before the step: a precomputed column or the data pipeline's teacher stage
        t_crop, t_feat, t_local, m_crop, m_local = carried
    crop_hw = batch["crop_image"].shape[-2:]
    # L_feat on this step: the "initial" target needs nothing of the teacher; the "teacher" target needs its tokens
    initial = getattr(getattr(model, "module", model), "initial", None) is not None
    feat_now = use_feat and (initial or t_feat is not None)
    if use_feat and not feat_now:
        raise ValueError(
            f"teacher {t_idx} ({teachers.configs[t_idx].name}) brings no features but loss.feat_target is "
            "'teacher': use loss.feat_target=initial or loss.lambda_feat=0 with precomputed teachers"
        )
    out = model(
        batch["crop_image"],
        batch["global_image"] if use_lg else None,
        (teachers.dim(t_idx) or 0) if feat_now else None,
        teachers.token_grid(t_idx, *crop_hw) if feat_now else None,
    )
    parts = distill_losses(
        student_crop=out["crop"],
        teacher_crop=t_crop.float(),
        mask_crop=m_crop,
        student_global=out.get("global"),
        teacher_local=t_local,
        boxes=batch["local_boxes"] if use_lg else None,
        mask_local=m_local,
        feat_student=out.get("features"),
        feat_teacher=out.get("feat_target", t_feat.float() if t_feat is not None else None) if feat_now else None,
        cfg=cfg.loss,
    )
    return parts, out, t_crop
