"""Exactly-once data after a restart: a run whose worker dies mid-epoch and resumes from its last checkpoint sees
what the uninterrupted run saw — the same epoch's block order and augmentations (the dataset is built again at the
checkpoint's epoch: Ray Data's own epoch counter restarts at 0 with every worker group) and the rest of that epoch
only (the checkpoint carries how many batches of it were taken; the resumed worker skips them). Proof: the per-step
loss journal of the two runs, equal to the last bit, on CPU with one worker."""

from __future__ import annotations

import json

from dad_ray.runtime import ray_session
from dad_ray.train.monitor import read_journal
from dad_ray.train.trainer import CHECKPOINT_DIR, fit, run_dir

# smoke data: 48 training scenes, batches of 8 -> 6 batches an epoch. Checkpoints at 4 and 8 (2 batches into
# epoch 1; all kept), the worker dies after step 10, the run resumes at 8 and ends at 12.
STEPS = {
    "optim.max_steps": 12,
    "data.batch_size": 8,
    "train.val_every": 4,
    "train.checkpoint_every": 4,
    "train.keep_checkpoints": 4,
    "train.image_every": 0,
}
KILL_AT, RESUMED_AT, MAX_STEPS = 10, 8, 12


def _steps(journal: list[dict]) -> list[tuple[int, int, float]]:
    return [(e["step"], e["epoch"], e["loss"]) for e in journal if "step" in e]


def test_a_run_killed_mid_epoch_resumes_on_the_data_the_uninterrupted_run_saw(tmp_path, smoke_assets):
    whole = smoke_assets.config(tmp_path, "whole", **STEPS)
    killed = smoke_assets.config(
        tmp_path, "killed", **STEPS, **{"train.fail_at_step": KILL_AT, "train.max_failures": 1}
    )
    with ray_session(num_cpus=4):
        fit(whole)
        result = fit(killed)
    assert result.metrics["step"] == MAX_STEPS

    reference = _steps(read_journal(f"{run_dir(whole)}/progress.jsonl"))
    assert [s for s, _, _ in reference] == list(range(1, MAX_STEPS + 1))
    epochs = {s: e for s, e, _ in reference}
    assert (epochs[6], epochs[7]) == (0, 1)  # the run crosses into a second epoch before the checkpoint

    journal = read_journal(f"{run_dir(killed)}/progress.jsonl")
    starts = [e["attempt_start"] for e in journal if "attempt_start" in e]
    assert starts == [0, RESUMED_AT]  # one restart, from the checkpoint 2 batches into epoch 1
    position = json.loads(
        open(f"{run_dir(killed)}/{CHECKPOINT_DIR}/checkpoint_step{RESUMED_AT:07d}/data_position.json").read()
    )
    assert position == {"step": RESUMED_AT, "epoch": 1, "epoch_batches": 2}

    resumed_from = max(i for i, e in enumerate(journal) if e.get("attempt_start") == RESUMED_AT)
    first_attempt, second_attempt = _steps(journal[:resumed_from]), _steps(journal[resumed_from:])
    assert [s for s, _, _ in first_attempt] == list(range(1, KILL_AT + 1))
    assert [s for s, _, _ in second_attempt] == list(range(RESUMED_AT + 1, MAX_STEPS + 1))
    # every step's loss, exactly: before the failure, the steps redone after it, and the rest of the run
    assert first_attempt == reference[:KILL_AT]
    assert second_attempt == reference[RESUMED_AT:]
