"""Teacher placement: the student's step with the teacher inside (``model.teacher_placement: worker``) vs the teacher
in a Ray Data stage (``data``), at equal total compute; and the teacher-to-student GPU ratio that balances the two
sides at the paper's settings.

Two parts:

- **FLOPs** (``--flops-presets``, default the paper's ViT-L -> ViT-B and ViT-L -> ViT-S presets): per sample, the
  teacher's forward on the crop and the N local patches vs the student's forward + backward on the crop and the
  global view, counted with ``torch.utils.flop_counter`` on meta-device models (no weights, no compute). With the
  same GPU type and the same achieved FLOP rate on both sides, the pipeline is balanced with ``teacher / student``
  teacher GPUs per student GPU (inference in bf16 usually reaches a higher FLOP rate than training, so this ratio
  is an upper bound).
- **Throughput on CPU** (``--preset``, default ``smoke``): per-component timings, the same ``TrainStep``
  (:func:`dad_ray.train.step.build_plain_step`) both ways. Worker placement: images/s of the whole step (teacher
  inside) on ``--threads`` threads. Data placement: the teacher's forward alone on ``k`` threads and the student's
  step with the labels in its batch on ``threads - k`` threads, run concurrently as the stage and the worker do:
  images/s = min of the two rates, for the best ``k`` — equal total compute (``--threads`` cores either way).
  Per-component timing, not a Ray run: on a shared 2-core machine a live Ray pipeline measures the scheduler's
  contention more than the placement. The GPU side (``jobs/benchmark.py gpu``) reports the same split per
  component (``teacher_ms`` vs the rest of the step) when a GPU exists.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from dad_ray.bench import add_json_arg, median_seconds, write_json
from dad_ray.bench.gpu import random_weights
from dad_ray.config import ExperimentConfig, build_config
from dad_ray.models import create_model
from dad_ray.train.step import build_plain_step, synthetic_batch

logger = logging.getLogger(__name__)


def _flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def count_sample_flops(cfg: ExperimentConfig) -> dict[str, float]:
    """Per-sample TFLOP of the first teacher's forward (crop (1, 3, C, C) + N local patches (N, 3, P, P), N = 0
    without L_lg) and of the student's forward + backward (crop and global view), on meta-device models."""
    c, (gh, gw), p = cfg.data.crop_size, cfg.data.global_size, cfg.data.local_patch_size
    n = cfg.data.local_grid[0] * cfg.data.local_grid[1] if cfg.loss.lambda_lg > 0 else 0
    meta = torch.device("meta")
    with meta:
        teacher = create_model(cfg.model.teachers[0].name).eval()
        student = create_model(cfg.model.student)

    def run_teacher() -> None:
        with torch.no_grad():
            teacher(torch.empty(1, 3, c, c, device=meta))
            if n:
                teacher(torch.empty(n, 3, p, p, device=meta))

    def run_student() -> None:
        for h, w in ((c, c), (gh, gw)):
            student(torch.empty(1, 3, h, w, device=meta)).sum().backward()

    t, s = _flops(run_teacher) / 1e12, _flops(run_student) / 1e12
    return {"teacher_tflop": t, "student_tflop": s, "teacher_share": t / (t + s), "teacher_per_student_gpu": t / s}


def component_times(cfg: ExperimentConfig, batch: int, threads: int, repeats: int) -> dict[str, float]:
    """Seconds per batch on ``threads`` CPU threads: the whole step (teacher inside), the teacher's forward alone,
    the student's step with the teacher's labels carried by the batch."""
    cpu = torch.device("cpu")
    torch.set_num_threads(threads)
    step = build_plain_step(cfg, cpu)
    plain = synthetic_batch(cfg, batch, cpu)
    local = plain["local_images"] if cfg.loss.lambda_lg > 0 else None

    def whole() -> None:
        step.micro(plain)
        step.optimizer_step()

    def teacher() -> None:
        step.teachers.predict(0, plain["crop_image"], local)

    with torch.inference_mode():
        _, feat, _ = step.teachers.predict(0, plain["crop_image"], local)
    carried = synthetic_batch(cfg, batch, cpu, carried=(0,))
    if step.use_feat:
        carried["teacher0_feat"] = feat.clone()

    def student() -> None:
        step.micro(carried)
        step.optimizer_step()

    out = {"whole_s": median_seconds(whole, repeats), "student_s": median_seconds(student, repeats)}
    with torch.inference_mode():
        out["teacher_s"] = median_seconds(teacher, repeats)
    return out


def placement_throughput(cfg: ExperimentConfig, batch: int, threads: int, repeats: int) -> dict[str, Any]:
    """Images/s, worker vs data placement, on ``threads`` threads in all (see the module docstring)."""
    worker = component_times(cfg, batch, threads, repeats)
    splits = {}
    for k in range(1, threads):
        t = component_times(cfg, batch, k, repeats)["teacher_s"]
        s = component_times(cfg, batch, threads - k, repeats)["student_s"]
        splits[k] = {"teacher_threads": k, "teacher_s": t, "student_s": s, "images_per_s": batch / max(t, s)}
    best = max(splits.values(), key=lambda r: r["images_per_s"]) if splits else None
    return {
        "threads": threads,
        "batch": batch,
        "worker": {**worker, "images_per_s": batch / worker["whole_s"]},
        "data_splits": list(splits.values()),
        "data": best,
        "ratio_data_over_worker": best["images_per_s"] / (batch / worker["whole_s"]) if best else None,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="smoke", help="the CPU throughput's preset (random weights)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads in all, either placement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--flops-presets", nargs="*", default=["nyu_vitl_to_vitb", "nyu_vitl_to_vits"])
    add_json_arg(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; returns the report (Markdown)."""
    args = parse_args(argv)
    flops = {p: count_sample_flops(build_config(p)) for p in args.flops_presets}
    base = build_config(args.preset)
    with tempfile.TemporaryDirectory() as tmp:  # random teacher weights: throughput does not depend on them
        weights = random_weights(base.model.teachers[0].name, Path(tmp))
        overrides = {"train.use_gpu": False, "train.compile": False, "model.teachers.0.weights": weights}
        cpu = placement_throughput(
            build_config(args.preset, overrides=overrides), args.batch, args.threads, args.repeats
        )
    write_json(args.json, {"preset": args.preset, "flops": flops, "cpu": cpu})
    lines = ["| preset | teacher TFLOP/sample | student TFLOP/sample | teacher share | teacher GPUs per student GPU |"]
    lines.append("|---|---|---|---|---|")
    for p, f in flops.items():
        lines.append(
            f"| {p} | {f['teacher_tflop']:.2f} | {f['student_tflop']:.2f} | {100 * f['teacher_share']:.0f} % "
            f"| {f['teacher_per_student_gpu']:.2f} |"
        )
    w, d = cpu["worker"], cpu["data"]
    lines.append(f"\nCPU, {args.preset}, batch {args.batch}, {args.threads} threads in all:")
    lines.append(f"- worker placement: {w['images_per_s']:.2f} images/s (step {1e3 * w['whole_s']:.0f} ms)")
    if d is not None:
        lines.append(
            f"- data placement: {d['images_per_s']:.2f} images/s (teacher {1e3 * d['teacher_s']:.0f} ms on "
            f"{d['teacher_threads']} thread(s), student {1e3 * d['student_s']:.0f} ms on the rest); "
            f"ratio data / worker = {cpu['ratio_data_over_worker']:.2f}"
        )
    return "\n".join(lines)
