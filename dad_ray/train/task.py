"""The distillation task: a frozen teacher pool and the trainable student (plus feature projections).

``StudentTask`` is the module DDP wraps: one ``forward`` runs the student on the shared-context crop (with features)
and, when the local-global loss is on, on the global view — so DDP sees a single forward per step.
``TeacherPool`` owns the frozen teachers and the multi-teacher "select" draw.
"""

from __future__ import annotations

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
    """Student plus one linear projection per distinct teacher feature width that differs from the student's.

    The projection maps student patch tokens (B, N, C_s) to the teacher width C_t for L_feat (the paper's students
    are narrower than their ViT-L teacher, so cosine alignment needs it); it is trained with the decoder lr and is
    not part of the saved student weights. Students whose token grid differs from the teacher's (timm students:
    another patch size or a CNN's stride-32 map) are first resampled to the teacher's grid (:func:`token_layout`,
    :func:`~dad_ray.losses.resample_tokens`); when the grids match nothing is done.
    """

    def __init__(self, student: nn.Module, teacher_dims: Sequence[int] = ()) -> None:
        super().__init__()
        self.student = student
        self.feat_proj = nn.ModuleDict(
            {str(d): nn.Linear(student.embed_dim, d) for d in sorted(set(teacher_dims)) if d != student.embed_dim}
        )

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
        "global": (B, Gh, Gw)}; features on ``teacher_grid`` (the student's own grid when None)."""
        out: dict[str, torch.Tensor] = {}
        if teacher_dim is None:
            out["crop"] = self.student(crop)
        else:
            disparity, features = self.student(crop, return_features=True)
            out["crop"] = disparity
            if teacher_grid is not None:
                grid, extent = token_layout(self.student, *crop.shape[-2:])
                features = resample_tokens(features, grid, extent, teacher_grid)  # (B, N_t, C_s)
            out["features"] = self.project(features, teacher_dim)
        if global_view is not None:
            out["global"] = self.student(global_view)
        return out


def token_layout(model: nn.Module, height: int, width: int) -> tuple[tuple[int, int], tuple[float, float]]:
    """(grid, extent) of the tokens ``model(x, return_features=True)`` returns for an H x W input: the grid (gh, gw)
    and how many of its cells the image covers from the top-left (H / s, W / s for the model's token stride s:
    ``feature_stride``, else ``patch_size``; less than the grid where a CNN student pads its input)."""
    stride = getattr(model, "feature_stride", None) or model.patch_size
    return (math.ceil(height / stride), math.ceil(width / stride)), (height / stride, width / stride)


class TeacherPool:
    """Frozen teachers (eval mode, no grad) and the per-step "select" draw with the configured probabilities."""

    def __init__(self, teachers: Sequence[TeacherConfig], device: torch.device, seed: int) -> None:
        self.configs = tuple(teachers)
        self.models: list[nn.Module] = []
        for t in teachers:
            model = create_model(t.name)
            report = load_weights(model, t.weights)
            logger.info("teacher %s loaded from %s (%s)", t.name, t.weights, report)
            model.eval().requires_grad_(False).to(device)
            self.models.append(model)
        self.probs = torch.tensor([t.probability for t in teachers], dtype=torch.float64)
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def dims(self) -> list[int]:
        return [m.embed_dim for m in self.models]

    def draw(self) -> int:
        """Index of this step's teacher (always 0 for a single teacher; the draw is still consumed for determinism)."""
        return int(torch.multinomial(self.probs, 1, generator=self.generator).item())

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


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
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor | None]:
    """One micro-batch's loss parts (call under autocast). ``model`` is the (DDP-wrapped) :class:`StudentTask`.

    distill: teacher pseudo-labels (no grad) on the shared-context crop and on the N local patches; the student on
    the crop (+ features) and the global view → L_sc, L_lg, L_feat, L_grad. supervised: the student on the crop vs
    ground truth. Returns (parts with "total", the student outputs, the teacher's crop prediction or None).
    """
    if teachers is None:
        out = model(batch["crop_image"])
        return supervised_losses(out["crop"], batch["crop_depth"], batch["crop_mask"], cfg.loss), out, None
    use_lg = cfg.loss.lambda_lg > 0
    t_idx = teachers.draw()
    teacher = teachers.models[t_idx]
    with torch.no_grad():
        t_crop, t_feat = teacher(batch["crop_image"], return_features=True)
        t_local = None
        if use_lg:
            local = batch["local_images"]  # (B, N, 3, P, P)
            t_local = teacher(local.flatten(0, 1)).view(*local.shape[:2], *local.shape[-2:]).float()
    crop_hw = batch["crop_image"].shape[-2:]
    out = model(
        batch["crop_image"],
        batch["global_image"] if use_lg else None,
        teachers.dims[t_idx] if use_feat else None,
        token_layout(teacher, *crop_hw)[0] if use_feat else None,
    )
    parts = distill_losses(
        student_crop=out["crop"],
        teacher_crop=t_crop.float(),
        mask_crop=torch.ones_like(t_crop, dtype=torch.bool),  # pseudo-labels are dense
        student_global=out.get("global"),
        teacher_local=t_local,
        boxes=batch["local_boxes"] if use_lg else None,
        mask_local=torch.ones_like(t_local, dtype=torch.bool) if t_local is not None else None,
        feat_student=out.get("features"),
        feat_teacher=t_feat.float() if use_feat else None,
        cfg=cfg.loss,
    )
    return parts, out, t_crop
