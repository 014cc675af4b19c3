"""The training step: one function for the Ray Train worker, the plain PyTorch loop, the GPU benchmark and the
``batch_size: auto`` probe, so that they cannot drift apart. Imports no Ray (the GPU benchmark runs where Ray is
not installed).

Per optimizer step (:class:`TrainStep`): draw the step's teacher once (the same on every rank) → ``grad_accum``
micro-batches of :func:`forward_backward` (teacher pseudo-labels, student, loss parts, backward of the loss divided
by ``grad_accum``; DDP all-reduces only on the last one) → clip → AdamW → schedule. Nothing in it reads a value back
to the host: loss parts, scale statistics and the gradient norm stay device tensors (read every ``train.log_every``
steps by the worker's monitor), so a GPU's queue never drains mid-step.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from dad_ray.config import ExperimentConfig
from dad_ray.train.schedule import build_optimizer
from dad_ray.train.task import TeacherPool, build_student, build_task, compute_losses


def autocast_context(cfg: ExperimentConfig, device: torch.device):
    """bf16 autocast on GPU ('auto' or 'bf16'), on CPU only when asked for ('bf16'); else a no-op."""
    if uses_bf16(cfg, device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def uses_bf16(cfg: ExperimentConfig, device: torch.device) -> bool:
    precision = cfg.train.precision
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def teacher_dtype(cfg: ExperimentConfig, device: torch.device) -> torch.dtype:
    """The dtype the frozen teachers' weights are stored in: bf16 whenever the step runs under bf16 autocast (their
    matmuls run in bf16 anyway; the weights then take half the memory and half the reads), else float32."""
    return torch.bfloat16 if uses_bf16(cfg, device) else torch.float32


def build_teachers(cfg: ExperimentConfig, device: torch.device) -> TeacherPool | None:
    """The run's teacher pool (None for supervised training). Its draw generator is seeded with ``train.seed``
    alone — the same on every rank — so that every rank draws the same teacher at every optimizer step."""
    if cfg.loss.mode != "distill":
        return None
    # loaded here: the live teachers of the worker placement; precomputed columns and the data placement's teachers
    # arrive as batch columns (the pool keeps only their layout)
    live = [not t.column and cfg.model.teacher_placement == "worker" for t in cfg.model.teachers]
    return TeacherPool(
        cfg.model.teachers,
        device,
        seed=cfg.train.seed,
        dtype=teacher_dtype(cfg, device),
        compile_models=cfg.train.compile,
        live=live,
    )


def compile_student(task: nn.Module, cfg: ExperimentConfig) -> None:
    """``train.compile``: compile the student in place (``nn.Module.compile``; its parameters, state_dict keys and
    checkpoints stay those of the plain module). DDP then wraps the task as usual."""
    if cfg.train.compile:
        task.student.compile()


def synthetic_batch(
    cfg: ExperimentConfig, batch_size: int, device: torch.device, seed: int = 0, carried: tuple[int, ...] = ()
) -> dict[str, torch.Tensor]:
    """A training batch of the config's shapes with random content (what ``dad_ray.data.train_batches`` yields):
    crop_image (B, 3, C, C), crop_depth (B, C, C) metres, crop_mask (B, C, C), global_image (B, 3, Gh, Gw),
    local_images (B, N, 3, P, P), local_boxes (B, N, 4) normalised (y0, x0, y1, x1). For benchmarks and the
    batch-size probe; its own generator, so no global RNG is consumed. ``carried``: teacher indices whose
    pseudo-labels the batch carries (``teacher{i}_crop`` (B, C, C), ``teacher{i}_local`` (B, N, P, P)), as a
    precomputed teacher's do."""
    g = torch.Generator().manual_seed(seed)
    c, (gh, gw), p = cfg.data.crop_size, cfg.data.global_size, cfg.data.local_patch_size
    rows, cols = cfg.data.local_grid
    n = rows * cols
    cells = [(r, q) for r in range(rows) for q in range(cols)]  # overlapping patches on a (rows+1, cols+1) lattice
    h, w = rows + 1, cols + 1
    boxes = torch.tensor([[r / h, q / w, (r + 2) / h, (q + 2) / w] for r, q in cells])
    batch = {
        "crop_image": torch.randn(batch_size, 3, c, c, generator=g),
        "crop_depth": torch.rand(batch_size, c, c, generator=g) * 9 + 0.5,
        "crop_mask": torch.ones(batch_size, c, c, dtype=torch.bool),
        "global_image": torch.randn(batch_size, 3, gh, gw, generator=g),
        "local_images": torch.randn(batch_size, n, 3, p, p, generator=g),
        "local_boxes": boxes.expand(batch_size, n, 4).contiguous(),
    }
    for i in carried:
        batch[f"teacher{i}_crop"] = torch.rand(batch_size, c, c, generator=g)
        batch[f"teacher{i}_local"] = torch.rand(batch_size, n, p, p, generator=g)
    return {k: v.to(device) for k, v in batch.items()}


class PhaseTimer:
    """Where the step's time goes, by named phase. This base class records nothing (the training loop's timer);
    :class:`EventTimer` measures."""

    def start(self, name: str) -> None:
        pass

    def stop(self, name: str) -> None:
        pass

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def attach(self, module: nn.Module, name: str) -> None:
        """Time every forward call of ``module`` as phase ``name`` (forward hooks; the module is not changed)."""


class EventTimer(PhaseTimer):
    """Phase times from CUDA events on a GPU (recorded in the stream, read once by :meth:`totals_ms`, so the step
    is not synchronised), ``time.perf_counter`` on CPU. Phases may nest; a phase entered several times adds up."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._open: dict[str, object] = {}
        self._spans: dict[str, list[tuple[object, object]]] = defaultdict(list)

    def _mark(self) -> object:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self, name: str) -> None:
        self._open[name] = self._mark()

    def stop(self, name: str) -> None:
        self._spans[name].append((self._open.pop(name), self._mark()))

    def attach(self, module: nn.Module, name: str) -> None:
        module.register_forward_pre_hook(lambda *_: self.start(name))
        module.register_forward_hook(lambda *_: self.stop(name))

    def reset(self) -> None:
        self._open.clear()
        self._spans.clear()

    def totals_ms(self) -> dict[str, float]:
        """Milliseconds per phase, summed over its spans since the last :meth:`reset` (synchronises the GPU)."""
        if self.cuda:
            torch.cuda.synchronize()
            return {k: sum(a.elapsed_time(b) for a, b in v) for k, v in self._spans.items()}
        return {k: 1e3 * sum(b - a for a, b in v) for k, v in self._spans.items()}


@dataclass(frozen=True)
class MicroStep:
    """What one micro-batch left behind: the batch, its loss parts (with ``"total"``, before the division by
    ``grad_accum``; device tensors), the student outputs (``"crop"`` (B, C, C), …), the teacher's crop prediction
    (B, C, C) or None (supervised), the step's teacher index (None when supervised), and ``sync``: whether it is the
    last micro-batch of an optimizer step."""

    batch: dict[str, torch.Tensor]
    parts: dict[str, torch.Tensor]
    out: dict[str, torch.Tensor]
    teacher_crop: torch.Tensor | None
    teacher_index: int | None
    sync: bool


def forward_backward(
    model: nn.Module,
    teachers: TeacherPool | None,
    batch: dict[str, torch.Tensor],
    cfg: ExperimentConfig,
    *,
    use_feat: bool,
    teacher_index: int,
    grad_accum: int = 1,
    timer: PhaseTimer | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor | None]:
    """The micro-batch: :func:`~dad_ray.train.task.compute_losses` under the run's autocast (phase ``forward``:
    teacher, student, losses), then backward of ``total / grad_accum`` (phase ``backward``). Returns what
    compute_losses returns."""
    timer = timer or PhaseTimer()
    device = batch["crop_image"].device
    with timer.phase("forward"), autocast_context(cfg, device):
        parts, out, t_crop = compute_losses(model, teachers, batch, cfg, use_feat=use_feat, teacher_index=teacher_index)
    with timer.phase("backward"):
        (parts["total"] / grad_accum).backward()
    return parts, out, t_crop


class TrainStep:
    """The optimizer step, micro-batch by micro-batch. ``model`` is the :class:`~dad_ray.train.task.StudentTask`,
    DDP-wrapped or not; ``teachers`` None for supervised training; ``timer`` (optional) records the phases
    ``forward``, ``teacher``, ``student_forward``, ``backward`` and ``optimizer``."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        model: nn.Module,
        teachers: TeacherPool | None,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        *,
        grad_accum: int,
        use_feat: bool,
        timer: PhaseTimer | None = None,
    ) -> None:
        self.cfg, self.model, self.teachers = cfg, model, teachers
        self.optimizer, self.scheduler = optimizer, scheduler
        self.grad_accum, self.use_feat = grad_accum, use_feat
        self.timer = timer or PhaseTimer()
        self.teacher_index: int | None = None
        self._micro = 0  # micro-batches done (the accumulation phase)
        self.timer.attach(getattr(model, "module", model), "student_forward")
        for teacher in teachers.models if teachers is not None else []:
            if teacher is not None:  # None: labels carried by the batch (nothing runs here)
                self.timer.attach(teacher, "teacher")

    def micro(self, batch: dict[str, torch.Tensor]) -> MicroStep:
        """Forward and backward of one micro-batch; its first micro-batch draws the optimizer step's teacher."""
        first = self._micro % self.grad_accum == 0
        sync = (self._micro + 1) % self.grad_accum == 0
        if first and self.teachers is not None:
            self.teacher_index = self.teachers.draw()  # once per optimizer step, the same draw on every rank
        no_sync = self.model.no_sync() if (hasattr(self.model, "no_sync") and not sync) else contextlib.nullcontext()
        with no_sync:
            parts, out, t_crop = forward_backward(
                self.model,
                self.teachers,
                batch,
                self.cfg,
                use_feat=self.use_feat,
                teacher_index=self.teacher_index or 0,
                grad_accum=self.grad_accum,
                timer=self.timer,
            )
        self._micro += 1
        return MicroStep(batch, parts, out, t_crop, self.teacher_index, sync)

    def optimizer_step(self) -> torch.Tensor | None:
        """Clip (``optim.grad_clip`` > 0), AdamW, schedule, zero the gradients. Returns the gradient norm before
        clipping as a device tensor (None without clipping); no host synchronisation."""
        grad_norm = None
        with self.timer.phase("optimizer"):
            if self.cfg.optim.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return grad_norm


def build_plain_step(cfg: ExperimentConfig, device: torch.device, timer: PhaseTimer | None = None) -> TrainStep:
    """A :class:`TrainStep` outside Ray (the plain PyTorch loop, the benchmarks): student, teachers, task (with its
    L_feat target), fused AdamW on CUDA and the schedule, built in the Ray Train worker's order, seeded with 0."""
    torch.manual_seed(0)
    student = build_student(cfg.model)
    teachers = build_teachers(cfg, device)
    task = build_task(student, cfg, teachers.dims if teachers is not None else []).to(device)
    compile_student(task, cfg)
    optimizer, scheduler = build_optimizer(task, cfg.optim)
    accum = cfg.optim.grad_accum
    return TrainStep(cfg, task, teachers, optimizer, scheduler, grad_accum=accum, use_feat=task.use_feat, timer=timer)
