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

from dad_ray.config import ExperimentConfig, add_config_args, config_from_args, from_dict, to_dict
from dad_ray.models import create_model, save_weights

logger = logging.getLogger(__name__)


def fixed_batch(cfg: ExperimentConfig, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    c, (gh, gw), p = cfg.data.crop_size, cfg.data.global_size, cfg.data.local_patch_size
    n = cfg.data.local_grid[0] * cfg.data.local_grid[1]
    boxes = torch.tensor([[0.0, 0.0, 0.6, 0.6]] * n).expand(batch_size, n, 4).contiguous()
    batch = {
        "crop_image": torch.randn(batch_size, 3, c, c, generator=g),
        "crop_depth": torch.rand(batch_size, c, c, generator=g) * 9 + 0.5,
        "crop_mask": torch.ones(batch_size, c, c, dtype=torch.bool),
        "global_image": torch.randn(batch_size, 3, gh, gw, generator=g),
        "local_images": torch.randn(batch_size, n, 3, p, p, generator=g),
        "local_boxes": boxes,
    }
    return {k: v.to(device) for k, v in batch.items()}


def timed_steps(cfg: ExperimentConfig, device: torch.device, steps: int, warmup: int, report=None) -> float:
    """images/s of ``steps`` optimizer steps of the real step function (after ``warmup``); ``report(i)`` is called
    every ``train.log_every`` steps (the Ray side passes ``ray.train.report``)."""
    from dad_ray.train.schedule import build_optimizer
    from dad_ray.train.task import StudentTask, TeacherPool, build_student, compute_losses
    from dad_ray.train.worker import autocast_context

    torch.manual_seed(0)
    teachers = TeacherPool(cfg.model.teachers, device, seed=0)
    use_feat = cfg.loss.lambda_feat > 0
    task = StudentTask(build_student(cfg.model), teachers.dims if use_feat else []).to(device)
    optimizer, scheduler = build_optimizer(task, cfg.optim)
    bs = int(cfg.data.batch_size)
    batch = fixed_batch(cfg, bs, device)

    def step() -> None:
        with autocast_context(cfg, device):
            parts, _, _ = compute_losses(task, teachers, batch, cfg, use_feat=use_feat)
        parts["total"].backward()
        torch.nn.utils.clip_grad_norm_(task.parameters(), cfg.optim.grad_clip or 1e9)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(1, steps + 1):
        step()
        if report is not None and i % cfg.train.log_every == 0:
            report(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * bs / (time.perf_counter() - start)


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
    args = parser.parse_args(argv)
    cfg = config_from_args(args, default_preset="default")
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
