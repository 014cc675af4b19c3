"""Training checkpoints: everything needed to resume at the same step, written as a directory.

Layout of one checkpoint directory (Ray merges the files every rank writes into one directory):

    student.safetensors     the student in the official DAv2 key layout (loads into the official class); its
                            metadata records the architecture and how it is evaluated (eval input size, ...)
    trainer_state.pt        optimizer, scheduler, step, epoch, feature projections, teacher draw state
    config.yaml             the resolved experiment config
    rng_rank{R}.pt          each rank's torch / CUDA / NumPy / Python RNG states
    data_position.json      {"step", "epoch", "epoch_batches"}: where in the data the run stands (also in
                            trainer_state.pt), read before the workers start to build the resumed epoch's dataset.
                            Written by rank 0 into the stored checkpoint only once Ray Train has committed it
                            (:func:`mark_committed`): an uploaded but uncommitted checkpoint — its node died
                            between the upload and the controller's registration — has none, so the dataset is
                            never built for a checkpoint no worker resumes from.

``trainer_state.pt`` and ``rng_rank*.pt`` hold only tensors and plain Python containers, so they load with
``torch.load(weights_only=True)``. A worker names what it checkpoints once, as :class:`Checkpointed`, and saves and
restores that same unit.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from dad_ray.config import ExperimentConfig, save_config
from dad_ray.data import storage
from dad_ray.models import load_weights, save_weights
from dad_ray.models.weights import EvalSettings

STUDENT_FILE = "student.safetensors"
STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "config.yaml"
DATA_POSITION_FILE = "data_position.json"


@dataclass
class TrainState:
    """Counters that travel with a checkpoint. ``step`` = optimizer steps completed; ``epoch`` = passes over the
    data completed; ``epoch_batches`` = micro-batches each worker has taken from the current epoch (the data
    position: a resumed run skips them, so it sees what the uninterrupted run saw)."""

    step: int = 0
    epoch: int = 0
    epoch_batches: int = 0
    val_round: int = 0
    best_abs_rel: float = float("inf")
    extra: dict[str, Any] = field(default_factory=dict)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    directory: str | Path,
    *,
    rank: int,
    student: torch.nn.Module,
    extra_modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainState,
    cfg: ExperimentConfig,
    extra_state: dict[str, Any] | None = None,
) -> Path:
    """Write this rank's part of a checkpoint into ``directory`` (rank 0 writes the model and trainer state)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), directory / f"rng_rank{rank}.pt")
    if rank == 0:
        save_weights(student, directory / STUDENT_FILE, EvalSettings.from_config(cfg.eval))  # how to evaluate it
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "modules": {k: m.state_dict() for k, m in extra_modules.items()},
                "step": state.step,
                "epoch": state.epoch,
                "epoch_batches": state.epoch_batches,
                "val_round": state.val_round,
                "best_abs_rel": state.best_abs_rel,
                "extra": extra_state or {},
            },
            directory / STATE_FILE,
        )
        save_config(cfg, directory / CONFIG_FILE)
    return directory


def checkpoint_dir_name(step: int) -> str:
    """The directory name of the checkpoint at ``step`` in Ray Train's run directory (sorts by step)."""
    return f"checkpoint_step{step:07d}"


def mark_committed(checkpoints: str, state: TrainState) -> None:
    """Write ``data_position.json`` into the stored checkpoint of ``state.step`` under ``checkpoints`` (local or
    URI), once Ray Train has committed it: from then on :func:`latest_data_position` builds resumed data for it."""
    position = {"step": state.step, "epoch": state.epoch, "epoch_batches": state.epoch_batches}
    storage.write_path(
        storage.join(checkpoints, checkpoint_dir_name(state.step), DATA_POSITION_FILE), json.dumps(position)
    )


def load_checkpoint(
    directory: str | Path,
    *,
    rank: int,
    student: torch.nn.Module,
    extra_modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[TrainState, dict[str, Any]]:
    """Restore everything :func:`save_checkpoint` wrote; strict everywhere. Returns the counters and extra state."""
    directory = Path(directory)
    for name in (STUDENT_FILE, STATE_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"checkpoint {directory} has no {name}: not a dad_ray training checkpoint")
    load_weights(student, directory / STUDENT_FILE)
    blob = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    for key, module in extra_modules.items():
        module.load_state_dict(blob["modules"][key], strict=True)
    rng_file = directory / f"rng_rank{rank}.pt"
    if rng_file.is_file():  # a run resumed with more workers than it was saved with has no state for the new ranks
        set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True))
    state = TrainState(
        step=blob["step"],
        epoch=blob["epoch"],
        # checkpoints written before the data position was recorded resume at their epoch's start, as they did
        epoch_batches=blob.get("epoch_batches", 0),
        val_round=blob["val_round"],
        best_abs_rel=blob["best_abs_rel"],
    )
    return state, blob["extra"]


def latest_data_position(checkpoints: str) -> dict[str, int] | None:
    """``{"step", "epoch", "epoch_batches"}`` of the newest committed checkpoint (``checkpoint_step<7 digits>`` with
    its :func:`mark_committed` marker) in Ray Train's run directory ``checkpoints`` (local or URI) — the one Ray
    Train resumes from; None without one."""
    names = sorted((n for n in storage.children(checkpoints) if re.fullmatch(r"checkpoint_step\d+", n)), reverse=True)
    for name in names:
        path = storage.join(checkpoints, name, DATA_POSITION_FILE)
        if storage.is_file(path):
            return json.loads(storage.read_path(path))
    return None


def check_data_position(state: TrainState, checkpoints: str, rank: int = 0) -> None:
    """A resumed worker's check that the dataset was built for its checkpoint's epoch (Ray Train built it from
    :func:`latest_data_position` just before): a mismatch would replay another epoch's data, so it is an error.

    One mismatch is repairable: the checkpoint Ray Train resumed from was committed, but its node died in the
    milliseconds before rank 0 marked it. Rank 0 marks it now and the error (a worker failure) makes Ray Train start
    the workers again, with the dataset built for this checkpoint."""
    position = latest_data_position(checkpoints)
    built_for = position["epoch"] if position else 0
    if built_for == state.epoch:
        return
    unmarked = state.step > (position["step"] if position else 0)
    if unmarked and rank == 0:
        mark_committed(checkpoints, state)
    raise RuntimeError(
        f"{checkpoints}: resumed from a checkpoint at step {state.step} (epoch {state.epoch}), but the training "
        f"data was built for epoch {built_for} (the newest committed checkpoint there, {position}); "
        + (
            "it is marked committed now: the workers restart on the right data"
            if unmarked
            else "the run cannot continue on the data the uninterrupted run would have seen"
        )
    )


class Stateful(Protocol):
    """Anything with ``state_dict``/``load_state_dict`` of plain containers (e.g. the teacher pool's draw state)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Checkpointed:
    """The parts of a worker that a checkpoint carries, named once for both directions (save and resume).

    ``extra_modules`` land under ``trainer_state.pt["modules"]``, ``extra_state`` (e.g. ``{"teachers": pool}``) under
    ``["extra"]`` as each object's ``state_dict()``; the on-disk layout is :func:`save_checkpoint`'s.
    """

    student: torch.nn.Module
    extra_modules: Mapping[str, torch.nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    extra_state: Mapping[str, Stateful] = field(default_factory=dict)

    def save(self, directory: str | Path, *, rank: int, state: TrainState, cfg: ExperimentConfig) -> Path:
        """This rank's part of a checkpoint of these parts at ``state`` (see :func:`save_checkpoint`)."""
        return save_checkpoint(
            directory,
            rank=rank,
            student=self.student,
            extra_modules=dict(self.extra_modules),
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            state=state,
            cfg=cfg,
            extra_state={key: obj.state_dict() for key, obj in self.extra_state.items()},
        )

    def load(self, directory: str | Path, *, rank: int) -> TrainState:
        """Restore these parts (and this rank's RNG) from a checkpoint; returns its counters. An ``extra_state``
        entry the checkpoint lacks keeps its current state."""
        state, extra = load_checkpoint(
            directory,
            rank=rank,
            student=self.student,
            extra_modules=dict(self.extra_modules),
            optimizer=self.optimizer,
            scheduler=self.scheduler,
        )
        for key, obj in self.extra_state.items():
            if key in extra:
                obj.load_state_dict(extra[key])
        return state
