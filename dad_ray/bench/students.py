"""The student zoo side by side: size, compute, CPU latency and distilled accuracy on the embedded synthetic task.

    python jobs/benchmark.py students [--students timm:efficientvit_b0 dav2_micro ...] [--steps 120]
        [--size 518] [--repeats 5] [--threads N] [--skip-onnx] [--skip-distill] [--json PATH]
        [--preset zoo_cpu] [--set key=value ...]

For each student (default: the zoo, :data:`dad_ray.models.ZOO`, and ``dav2_micro``, the default run's student, as the
reference): parameters (meta device), GFLOPs of one 518 x 518 forward at batch 1 (``FlopCounterMode``: matmuls and
convolutions, 2 FLOPs per multiply-add; interpolation, norms and activations are not counted), CPU latency at batch
1 and 518 x 518 (median of ``--repeats`` after one warm-up, fp32, random weights) in PyTorch (``inference_mode``)
and in ONNX Runtime (the graph of :func:`dad_ray.models.export.export_onnx`, fixed size, CPU provider, the same
thread count), and the AbsRel / δ1 of the student distilled with :func:`dad_ray.train.run_experiment` from the
preset's teacher on its data for ``--steps`` optimizer steps (every student: the same teacher, data, losses,
optimiser and steps; the preset's other settings), evaluated on the held-out synthetic scenes. Returns a Markdown
table; ``--json`` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from dad_ray.bench import median_seconds
from dad_ray.config import ExperimentConfig, add_config_args, config_from_args, config_to_yaml
from dad_ray.models import ZOO, create_model

logger = logging.getLogger(__name__)

REFERENCE = "dav2_micro"  # the embedded default's student


def count_parameters(name: str) -> int:
    with torch.device("meta"):
        model = create_model(name)
    return sum(p.numel() for p in model.parameters())


def count_gflops(model: torch.nn.Module, size: int) -> float:
    """GFLOPs of one (1, 3, size, size) forward, counted by ``torch.utils.flop_counter.FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def torch_latency_ms(model: torch.nn.Module, size: int, repeats: int) -> float:
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        return 1e3 * median_seconds(lambda: model(x), repeats)


def onnx_latency_ms(model: torch.nn.Module, size: int, repeats: int, workdir: Path) -> float:
    """Export with :func:`dad_ray.models.export.export_onnx` (fixed size) and time ONNX Runtime's CPU provider."""
    import numpy as np
    import onnxruntime as ort

    from dad_ray.models.export import export_onnx

    path = workdir / f"{model.model_name.replace(':', '_')}.onnx"
    export_onnx(model, path, input_size=(size, size), dynamic=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, 3, size, size), np.float32)}
    return 1e3 * median_seconds(lambda: session.run(None, feed), repeats)


def distill(cfg: ExperimentConfig, student: str, steps: int, output: str) -> dict[str, Any]:
    """``run_experiment`` of ``cfg`` with ``student`` for ``steps`` steps (one validation, at the end)."""
    from dad_ray.train import run_experiment

    slug = student.replace(":", "_").replace("/", "_")
    run = replace(
        cfg,
        model=replace(cfg.model, student=student),
        optim=replace(cfg.optim, max_steps=steps, warmup_steps=min(cfg.optim.warmup_steps, steps - 1)),
        train=replace(
            cfg.train, name=f"{cfg.train.name}_{slug}_{steps}", output=output, val_every=steps, checkpoint_every=steps
        ),
    )
    start = time.perf_counter()
    metrics = run_experiment(run)
    metrics["_wall_s"] = time.perf_counter() - start
    return metrics


def benchmark_student(name: str, args: argparse.Namespace, cfg: ExperimentConfig, workdir: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    model = create_model(name).eval()
    row: dict[str, Any] = {"student": name, "params_m": count_parameters(name) / 1e6}
    row["gflops"] = count_gflops(model, args.size)
    row["torch_ms"] = torch_latency_ms(model, args.size, args.repeats)
    if not args.skip_onnx:
        row["onnx_ms"] = onnx_latency_ms(model, args.size, args.repeats, workdir)
    if not args.skip_distill:
        metrics = distill(cfg, name, args.steps, args.output)
        row.update(abs_rel=metrics["student"]["abs_rel"], d1=metrics["student"]["d1"])
        row.update(untrained_abs_rel=metrics["untrained_student"]["abs_rel"], distill_s=metrics["_wall_s"])
        row["teacher"] = {"name": cfg.model.teachers[0].name, **metrics.get("teacher", {})}
    logger.info("%s", {k: v for k, v in row.items() if k != "teacher"})
    return row


COLUMNS = (
    ("student", "student", "{}"),
    ("params_m", "params (M)", "{:.2f}"),
    ("gflops", "GFLOPs @{size}", "{:.1f}"),
    ("torch_ms", "CPU ms PyTorch", "{:.0f}"),
    ("onnx_ms", "CPU ms ONNX Runtime", "{:.0f}"),
    ("abs_rel", "AbsRel ↓", "{:.4f}"),
    ("d1", "δ1 ↑", "{:.4f}"),
    ("untrained_abs_rel", "AbsRel untrained", "{:.4f}"),
)


def markdown_report(rows: list[dict[str, Any]], args: argparse.Namespace, cfg: ExperimentConfig) -> str:
    columns = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    lines = ["| " + " | ".join(c[1].format(size=args.size) for c in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[k]) if k in r else "–" for k, _, fmt in columns) + " |")
    teacher = next((r["teacher"] for r in rows if "teacher" in r), None)
    if teacher:
        lines.append(
            f"\nTeacher {teacher['name']}: AbsRel {teacher.get('abs_rel', float('nan')):.4f}, "
            f"δ1 {teacher.get('d1', float('nan')):.4f}. Distillation: {args.steps} steps, batch "
            f"{cfg.data.batch_size}, crop {cfg.data.crop_size}, {cfg.data.root}; latency at batch 1, "
            f"{args.size}x{args.size}, {torch.get_num_threads()} threads, torch {torch.__version__}."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; returns the report (a Markdown table)."""
    parser = argparse.ArgumentParser(
        prog="benchmark.py students", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--students", nargs="+", default=[*ZOO, REFERENCE], help="registry names (timm:<name> ok)")
    parser.add_argument("--steps", type=int, default=120, help="distillation steps per student")
    parser.add_argument("--size", type=int, default=518, help="square input for GFLOPs and latency")
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards per student and runtime")
    parser.add_argument("--threads", type=int, default=0, help="torch / ONNX Runtime CPU threads (0 = torch's)")
    parser.add_argument("--output", default="runs/bench_students", help="where the distillation runs go")
    parser.add_argument("--skip-onnx", action="store_true", help="no ONNX Runtime latency")
    parser.add_argument("--skip-distill", action="store_true", help="sizes and latencies only")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args, default_preset="zoo_cpu")
    if args.print_config:  # the resolved config is the report; nothing runs
        return config_to_yaml(cfg)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dad_ray_students_") as tmp:
        for name in args.students:
            rows.append(benchmark_student(name, args, cfg, Path(tmp)))
            if args.json:  # after every student, so an interrupted run keeps what it measured
                args.json.write_text(json.dumps(rows, indent=2))
    return markdown_report(rows, args, cfg)
