"""Ray Train's overhead: the same distillation step in a plain PyTorch loop and inside a 1-worker TorchTrainer.

    python jobs/benchmark.py train [--preset default] [--steps 30] [--use-gpu] [--set key=value ...]

Both sides build the same student, teacher (random weights saved to a temporary file), optimizer and a fixed batch
of the preset's shapes (so the input pipeline is not part of the comparison), then time ``--steps`` optimizer steps
after ``--warmup`` steps; the Ray side also calls ``ray.train.report`` every ``train.log_every`` steps as the real
loop does. Prints images/s of both and their ratio (goal >= 0.97), plus the Ray side's start-up time.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from dad_ray.bench import add_json_arg, write_json
from dad_ray.config import ExperimentConfig, add_config_args, config_from_args, config_to_yaml, from_dict, to_dict
from dad_ray.models import create_model, save_weights
from dad_ray.train.step import TrainStep, build_plain_step, synthetic_batch

logger = logging.getLogger(__name__)


def run_steps(step: TrainStep, batch: dict[str, torch.Tensor], steps: int) -> None:
    """``steps`` optimizer steps of ``step`` on the same ``batch`` (every micro-batch)."""
    for _ in range(steps):
        for _ in range(step.grad_accum):
            step.micro(batch)
        step.optimizer_step()


def timed_steps(cfg: ExperimentConfig, device: torch.device, steps: int, warmup: int, report=None) -> float:
    """images/s of ``steps`` optimizer steps of the real step function (after ``warmup``); ``report(i)`` is called
    every ``train.log_every`` steps (the Ray side passes ``ray.train.report``)."""
    step = build_plain_step(cfg, device)
    bs = int(cfg.data.batch_size)
    batch = synthetic_batch(cfg, bs, device)
    run_steps(step, batch, warmup)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(1, steps + 1):
        run_steps(step, batch, 1)
        if report is not None and i % cfg.train.log_every == 0:
            report(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * bs * step.grad_accum / (time.perf_counter() - start)


def _ray_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    cfg = from_dict(ExperimentConfig, config["experiment"])
    device = ray.train.torch.get_device()
    ips = timed_steps(cfg, device, config["steps"], config["warmup"], report=lambda i: ray.train.report({"step": i}))
    # Train V2 keeps in Result.metrics only what was reported together with a checkpoint
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "images_per_s.txt").write_text(f"{ips}\n")
        metrics = {"step": config["steps"], "images_per_s": ips}
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def run_ray(cfg: ExperimentConfig, steps: int, warmup: int) -> tuple[float, float]:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from dad_ray.runtime import init_ray

    init_ray()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as storage:
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config={"experiment": to_dict(cfg), "steps": steps, "warmup": warmup},
            scaling_config=ray.train.ScalingConfig(
                num_workers=1,
                use_gpu=cfg.train.use_gpu,
                resources_per_worker={"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if cfg.train.use_gpu else {})},
            ),
            run_config=ray.train.RunConfig(name="bench", storage_path=storage),
        )
        result = trainer.fit()
    if result.error:
        raise result.error
    return result.metrics["images_per_s"], time.perf_counter() - start


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; returns the report (a Markdown table and the ratio)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    add_config_args(parser, {"--use-gpu": ("train.use_gpu", bool, "run both sides on the GPU")})
    add_json_arg(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args, default_preset="default")
    if args.print_config:  # the resolved config is the report; nothing runs
        return config_to_yaml(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        teachers = []
        for i, t in enumerate(cfg.model.teachers):
            path = f"{tmp}/teacher{i}.safetensors"
            save_weights(create_model(t.name), path)
            teachers.append(replace(t, weights=path))
        cfg = replace(cfg, model=replace(cfg.model, teachers=tuple(teachers)))
        device = torch.device("cuda" if cfg.train.use_gpu else "cpu")
        if device.type == "cpu":
            from dad_ray.train.worker import torch_threads

            torch.set_num_threads(torch_threads(cfg))  # the Ray worker gets the same threads
        plain = timed_steps(cfg, device, args.steps, args.warmup)
        ray_ips, ray_wall = run_ray(cfg, args.steps, args.warmup)
    ratio = ray_ips / plain
    write_json(
        args.json,
        {
            "student": cfg.model.student,
            "teachers": [t.name for t in cfg.model.teachers],
            "batch": cfg.data.batch_size,
            "crop": cfg.data.crop_size,
            "device": device.type,
            "steps": args.steps,
            "plain_images_per_s": plain,
            "ray_images_per_s": ray_ips,
            "ratio": ratio,
            "ray_wall_s": ray_wall,
        },
    )
    return "\n".join(
        [
            f"| loop | images/s ({cfg.model.student} student, {cfg.model.teachers[0].name} teacher, "
            f"batch {cfg.data.batch_size}, crop {cfg.data.crop_size}, {device.type}) |",
            "|---|---|",
            f"| plain PyTorch | {plain:.2f} |",
            f"| Ray Train (1 worker) | {ray_ips:.2f} |",
            f"ratio Ray / plain = {ratio:.3f} (goal >= 0.97); Ray wall time incl. start-up {ray_wall:.1f} s",
        ]
    )
