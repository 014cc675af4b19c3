"""What a person watches during training: the console progress line and TensorBoard (rank 0 only)."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dad_ray.data.storage import download_file, is_uri, read_path, upload_file, upload_tree
from dad_ray.viz import colorize, make_grid

logger = logging.getLogger(__name__)

JOURNAL_FILE = "progress.jsonl"

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def denormalize(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) ImageNet-normalised float → (H, W, 3) uint8."""
    rgb = image.detach().float().cpu().numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def scale_stats(disparity: torch.Tensor, prefix: str) -> dict[str, torch.Tensor]:
    """Median and mean absolute deviation of a batch of predictions (B, H, W), averaged over the batch — watches
    scale drift. 0-d device tensors: nothing is read back to the host here (see :meth:`Monitor.add`)."""
    flat = disparity.detach().float().flatten(1)
    median = flat.median(dim=1).values
    mad = (flat - median[:, None]).abs().mean(dim=1)
    return {f"{prefix}/median": median.mean(), f"{prefix}/mad": mad.mean()}


class Monitor:
    """Averages scalars over the logging window, prints a progress line, writes TensorBoard on rank 0.

    Scalars may be Python numbers or 0-d tensors on the training device: tensors are summed on the device (float64)
    and read back together, in one transfer, at :meth:`flush` — the only host synchronisation of a logging window.

    ``tb_dir`` may be a URI (``s3://…/tensorboard``): events are then written to a local directory and uploaded
    at every validation (:meth:`sync`) and at :meth:`close`.
    """

    def __init__(self, tb_dir: str | None, rank: int, max_steps: int, start_step: int) -> None:
        self.rank = rank
        self.max_steps = max_steps
        self.writer = None
        self._remote = None
        if rank == 0 and tb_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            if is_uri(tb_dir):
                self._remote, tb_dir = tb_dir, tempfile.mkdtemp(prefix="dad_ray_tensorboard_")
            Path(tb_dir).mkdir(parents=True, exist_ok=True)
            # purge_step drops events a crashed attempt wrote after the checkpoint we resumed from
            self.writer = SummaryWriter(tb_dir, purge_step=start_step if start_step > 0 else None)
        self._sums: dict[str, float | torch.Tensor] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self._window_start = time.perf_counter()
        self._window_images = 0
        self._window_wait = 0.0
        self._start_time = time.perf_counter()
        self._start_step = start_step

    def add(self, scalars: dict[str, float | torch.Tensor]) -> None:
        for key, value in scalars.items():
            if isinstance(value, torch.Tensor):
                value = value.detach().to(torch.float64)  # stays on its device: no sync
            else:
                value = float(value)
            self._sums[key] = self._sums[key] + value
            self._counts[key] += 1

    def _means(self) -> dict[str, float]:
        """The window's means, with every device sum read in one transfer."""
        keys = sorted(self._sums)
        tensors = [k for k in keys if isinstance(self._sums[k], torch.Tensor)]
        read = dict(zip(tensors, torch.stack([self._sums[k] for k in tensors]).tolist())) if tensors else {}
        return {k: read.get(k, self._sums[k]) / self._counts[k] for k in keys}

    def step_done(self, images: int, data_wait_s: float) -> None:
        self._window_images += images
        self._window_wait += data_wait_s

    def flush(self, step: int, lrs: dict[str, float], world_size: int) -> dict[str, float]:
        """Log the window's means at ``step``; returns them (with images/s and data-wait share)."""
        elapsed = max(time.perf_counter() - self._window_start, 1e-9)
        scalars = self._means()
        scalars["perf/images_per_s"] = self._window_images * world_size / elapsed
        scalars["perf/data_wait_share"] = min(1.0, self._window_wait / elapsed)
        for name, lr in lrs.items():
            scalars[f"lr/{name}"] = lr
        if self.rank == 0:
            done = step - self._start_step
            rate = done / max(time.perf_counter() - self._start_time, 1e-9)
            eta = (self.max_steps - step) / rate if rate > 0 else float("nan")
            losses = " ".join(
                f"{k.split('/', 1)[1]}={v:.4f}" for k, v in sorted(scalars.items()) if k.startswith("loss/")
            )
            logger.info(
                "step %d/%d  %s  %.1f img/s  data-wait %.0f%%  ETA %s",
                step,
                self.max_steps,
                losses,
                scalars["perf/images_per_s"],
                100 * scalars["perf/data_wait_share"],
                time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "?",
            )
            self.scalars(step, scalars)
        self._sums.clear()
        self._counts.clear()
        self._window_start = time.perf_counter()
        self._window_images = 0
        self._window_wait = 0.0
        return scalars

    def scalars(self, step: int, scalars: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, step)

    def sync(self) -> None:
        """Upload the event files when TensorBoard goes to a URI (no-op for a local directory)."""
        if self.writer is not None and self._remote is not None:
            self.writer.flush()
            upload_tree(self.writer.log_dir, self._remote)

    def image_grid(
        self,
        step: int,
        image: torch.Tensor,
        maps: list[torch.Tensor | None],
        tag: str = "images/rgb_teacher_student_gt",
    ) -> None:
        """One row per sample: RGB | each map in ``maps`` colour-mapped (None → blank), e.g. teacher, student, GT."""
        if self.writer is None:
            return
        rows = []
        for i in range(min(4, image.shape[0])):
            rgb = denormalize(image[i])
            row = [rgb]
            for m in maps:
                if m is None:
                    row.append(np.zeros_like(rgb))
                else:
                    row.append(colorize(m[i].detach().float().cpu().numpy()))
            rows.append(row)
        self.writer.add_image(tag, make_grid(rows), step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.sync()
            self.writer.close()


class Journal:
    """``<run>/progress.jsonl`` (rank 0): one JSON line per optimizer step — step, epoch, loss (the step's last
    micro-batch on rank 0), ``teachers`` (distillation: the index of the step's teacher on every rank, in rank
    order), wall time when the step was issued — and one
    ``{"attempt_start": step, "node_ids": [...]}`` line each time a worker group starts (fresh or resumed), with the
    Ray node of every rank and the start-up timestamps (:mod:`dad_ray.train.startup`), and a
    ``{"checkpoint": step}`` line once a checkpoint is committed. A run's history of restarts and placements can be
    read back from it, and tests use it to prove a resumed run neither repeats nor skips a step.

    ``path`` may be a URI: the journal is then appended to a local copy of the existing one and uploaded at every
    :meth:`sync` (each validation) and at :meth:`close`.

    Step lines are buffered with their loss as a device tensor and written by :meth:`flush` (every
    ``train.log_every`` steps, before a checkpoint line, at the end), which reads all pending losses in one
    transfer: a GPU step never waits for the host. A crash loses at most the lines since the last flush, steps that
    the restart from the last checkpoint redoes anyway."""

    def __init__(
        self,
        path: str | Path | None,
        attempt_start: int,
        node_ids: list[str] | None = None,
        startup: dict[str, Any] | None = None,
    ) -> None:
        self._file = None
        self._remote = None
        if path is not None:
            if is_uri(str(path)):
                self._remote = str(path)
                path = Path(tempfile.mkdtemp(prefix="dad_ray_journal_")) / JOURNAL_FILE
                download_file(self._remote, path)  # continue the run's journal
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._path = path
            self._file = open(path, "a", buffering=1)  # noqa: SIM115 - line-buffered for the whole run
            start = {"attempt_start": attempt_start, "node_ids": node_ids or [], "time": time.time()}
            if startup is not None:
                start["startup"] = startup  # dad_ray.train.startup: where the start-up went
            self._file.write(json.dumps(start) + "\n")
        self._pending: list[tuple[int, int, float | torch.Tensor, int | None, float]] = []

    def write(self, step: int, epoch: int, loss: float | torch.Tensor, teacher: int | None = None) -> None:
        """Buffer the line of optimizer step ``step`` (every rank: the teacher indices are gathered at flush)."""
        loss = loss.detach() if isinstance(loss, torch.Tensor) else float(loss)
        self._pending.append((step, epoch, loss, teacher, time.time()))

    def pending_teachers(self) -> list[int | None]:
        """This rank's teacher index of every buffered step (what :meth:`flush` gathers across ranks)."""
        return [p[3] for p in self._pending]

    def flush(self, rank_teachers: list[list[int | None]] | None = None) -> None:
        """Write the buffered step lines; ``rank_teachers[r][i]``: rank r's teacher of the i-th buffered step
        (default: this rank's own)."""
        pending, self._pending = self._pending, []
        if self._file is None or not pending:
            return
        rank_teachers = rank_teachers or [[p[3] for p in pending]]
        tensors = [p[2] for p in pending if isinstance(p[2], torch.Tensor)]
        read = iter(torch.stack(tensors).tolist()) if tensors else iter(())
        for i, (step, epoch, loss, teacher, issued) in enumerate(pending):
            line = {"step": step, "epoch": epoch, "loss": next(read) if isinstance(loss, torch.Tensor) else loss}
            if teacher is not None:
                line["teachers"] = [per_rank[i] for per_rank in rank_teachers]
            line["time"] = issued
            self._file.write(json.dumps(line) + "\n")

    def checkpoint(self, step: int) -> None:
        """Record that the checkpoint of ``step`` is committed: a restart from now on resumes at ``step``. Call
        :meth:`flush` first (the step lines come before their checkpoint line)."""
        if self._file is not None:
            self._file.write(json.dumps({"checkpoint": step, "time": time.time()}) + "\n")

    def sync(self) -> None:
        if self._file is not None and self._remote is not None:
            self._file.flush()
            upload_file(self._path, self._remote)

    def close(self) -> None:
        """Write what is still buffered (this rank's teachers only: gather first for a multi-rank journal)."""
        self.flush()
        if self._file is not None:
            self.sync()
            self._file.close()


def read_journal(path: str | Path) -> list[dict]:
    """The journal's lines, from a local path or a URI."""
    return [json.loads(line) for line in read_path(str(path)).splitlines() if line.strip()]
