"""The distillation step on one GPU, at the paper's sizes: throughput, where the time goes, memory, MFU.

    PYTHONPATH=. python3 jobs/benchmark.py gpu --json OUT.json      # ViT-L → ViT-B, ViT-L → ViT-S (≤ 8 min, H100)
    python jobs/benchmark.py gpu --device cpu --tiny --json OUT.json  # the CPU dry run the tests make

Runs where only PyTorch, timm, safetensors, numpy, pyarrow and tensorboard are installed: it imports no Ray (a test
imports it with Ray blocked) and needs no weights (random initialisation at the real sizes; the time does not depend
on the values). For each teacher → student pair, at crop ``--crop`` (560) with the local-global patches (2 x 2,
``--patch`` 560, so the teacher runs the crop and the patches in one pass) and the global view 518 x 686, batch
``--batch`` (8, the paper's), bf16 autocast with bf16 teacher weights, fused AdamW:

- images/s per GPU over ``--steps`` optimizer steps after ``--warmup`` (wall clock, synchronised at both ends), each
  step :class:`dad_ray.train.step.TrainStep` — the function the Ray Train worker calls — on synthetic batches held in
  (pinned) host memory;
- the step split from CUDA events (:class:`~dad_ray.train.step.EventTimer`): data (the host → device copy of the
  in-memory batch), teacher forward, student forward, losses (the rest of the forward), backward (the student's, with
  the losses' backward), optimizer (clip + AdamW + schedule), and what is left of the wall time (host overhead);
- peak allocated / reserved memory beside ``dad_ray.cluster.estimate_gpu_memory_gib``'s estimate for the same config;
- FLOPs of one step counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention;
  2 per multiply-add), the teacher's separately; MFU of the whole step and of the student's forward + backward
  against the GPU's dense bf16 peak (:data:`PEAK_BF16_TFLOPS`; an unknown GPU gets none);
- synchronising CUDA calls in one step (``torch.cuda.set_sync_debug_mode``; goal 0);
- the largest per-GPU micro-batch ``data.batch_size: auto`` finds (:func:`dad_ray.train.autobatch.probe_fits`, the
  real step), capped at ``--auto-limit``, and the micro-batch x accumulation ``auto`` would then use;
- the loss share of the step: ``distill_losses`` forward + backward alone on tensors of the step's shapes, over the
  step time (goal <= 5 %); and L_Dis (hybrid) vectorised vs the per-image loop of :mod:`dad_ray.losses.reference`
  on the crop maps.

``--compile`` also measures images/s with ``train.compile`` (compilation time reported apart). After ``--budget-s``
(360 s) the optional parts (auto batch, compile, L_Dis) are skipped and listed as such, so the run stays within its
8 minutes. ``--json`` writes every figure (after each pair, so an interrupted run keeps what it measured).
"""

from __future__ import annotations

import argparse
import gc
import logging
import re
import statistics
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from dad_ray.bench import add_json_arg, write_json
from dad_ray.config import ExperimentConfig, TeacherConfig, build_config
from dad_ray.losses import dis_loss, distill_losses
from dad_ray.losses.reference import loop_dis_loss
from dad_ray.models import create_model, save_weights
from dad_ray.train.autobatch import AUTO_TARGET_BATCH, largest_fitting, probe_fits, split_effective_batch
from dad_ray.train.step import EventTimer, PhaseTimer, TrainStep, build_plain_step, forward_backward, synthetic_batch

logger = logging.getLogger(__name__)

# Dense (no sparsity) bf16 tensor-core peak per GPU, TFLOP/s, from NVIDIA's data sheets; the first pattern that
# matches torch.cuda.get_device_name() wins (more specific names first). None: known, but no figure we trust.
PEAK_BF16_TFLOPS: tuple[tuple[str, float | None], ...] = (
    (r"H100.*PCIe", 756.0),
    (r"H100.*NVL", 835.0),
    (r"H100", 989.4),  # SXM5 ("NVIDIA H100 80GB HBM3")
    (r"GH200|H200", 989.4),
    (r"B200", 2250.0),
    (r"A100", 312.0),
    (r"L40S", 362.0),
    (r"\bL4\b", 121.0),
    (r"A10G", None),  # AWS's A10 variant: no published bf16 figure
    (r"\bA10\b", 125.0),
)

PAIRS = (("dav2_vitl", "dav2_vitb"), ("dav2_vitl", "dav2_vits"))
TINY_PAIRS = (("dav2_tiny", "dav2_micro"),)
PHASES = ("data", "teacher", "student_forward", "losses", "backward", "optimizer")


def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU by its CUDA name (None when unknown)."""
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name):
            return tflops
    return None


def bench_config(pair: tuple[str, str], weights: tuple[str, str], args: argparse.Namespace) -> ExperimentConfig:
    """The paper preset (``nyu_vitl_to_vitb``: its losses, feature target, patches, optimizer) with this teacher →
    student pair, random weights files (teacher, student), and the benchmark's sizes."""
    g = args.global_size
    teacher, student = pair
    cfg = build_config(
        "nyu_vitl_to_vitb",
        overrides={
            "model.student": student,
            "model.student_weights": weights[1],
            "data.batch_size": args.batch,
            "data.crop_size": args.crop,
            "data.local_patch_size": args.patch,
            "data.global_size": [g[0], g[1]],
            "data.root": "unused",
            "optim.grad_accum": 1,
            "train.use_gpu": args.device == "cuda",
            "train.num_workers": 1,
        },
    )
    return replace(cfg, model=replace(cfg.model, teachers=(TeacherConfig(teacher, weights[0], 1.0),)))


def host_batches(cfg: ExperimentConfig, batch: int, count: int, pin: bool) -> list[dict[str, torch.Tensor]]:
    """``count`` synthetic batches in host memory (pinned for asynchronous copies on a GPU)."""
    out = []
    for i in range(count):
        b = synthetic_batch(cfg, batch, torch.device("cpu"), seed=i)
        out.append({k: v.pin_memory() if pin else v for k, v in b.items()})
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_timed(step: TrainStep, batches: list, device: torch.device, steps: int, warmup: int) -> dict[str, Any]:
    """images/s and the per-step split (ms) of ``steps`` optimizer steps after ``warmup`` untimed ones."""
    timer = step.timer

    def one(i: int) -> None:
        with timer.phase("data"):
            batch = {k: v.to(device, non_blocking=True) for k, v in batches[i % len(batches)].items()}
        step.micro(batch)
        step.optimizer_step()

    for i in range(warmup):
        one(i)
    _sync(device)
    if isinstance(timer, EventTimer):
        timer.reset()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for i in range(steps):
        one(i)
    _sync(device)
    wall_ms = 1e3 * (time.perf_counter() - start) / steps
    out: dict[str, Any] = {"images_per_s": steps * batches[0]["crop_image"].shape[0] / (wall_ms * steps / 1e3)}
    out["step_ms"] = wall_ms
    if isinstance(timer, EventTimer):
        totals = {k: v / steps for k, v in timer.totals_ms().items()}
        split = {k: totals.get(k, 0.0) for k in ("data", "teacher", "student_forward", "backward", "optimizer")}
        split["losses"] = totals.get("forward", 0.0) - split["teacher"] - split["student_forward"]
        split["host_overhead"] = wall_ms - sum(split.values())
        out["split_ms"] = {k: split[k] for k in (*PHASES, "host_overhead")}
    if device.type == "cuda":
        out["peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 1024**3
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 1024**3
    return out


def host_syncs(step: TrainStep, batch: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    """Synchronising CUDA calls in one step (micro-batch + optimizer step), from PyTorch's sync debug mode (warnings;
    it sees what a CPU test cannot: ``.item()`` and also data-dependent shapes such as boolean indexing). None on CPU.
    The goal is 0: the host then never waits for the GPU inside a step."""
    if batch["crop_image"].device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step.micro(batch)
            step.optimizer_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # "called a synchronizing CUDA operation", one per call (not the mode's own "prototype feature" notice)
    syncs = [f"{w.filename}:{w.lineno}" for w in caught if "called a synchronizing" in str(w.message)]
    return {"count": len(syncs), "first": syncs[:3]}


def count_flops(step: TrainStep, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """FLOPs of one micro-step (teacher + student forward + backward + losses) and of its teacher forward alone;
    "student" is the rest: the student's forward and backward (with the frozen initial encoder's forward when
    L_feat's target is "initial")."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg, teachers = step.cfg, step.teachers
    whole = FlopCounterMode(display=False)
    with whole:
        forward_backward(step.model, teachers, batch, cfg, use_feat=step.use_feat, teacher_index=0)
    step.optimizer.zero_grad(set_to_none=True)
    teacher = FlopCounterMode(display=False)
    local = batch["local_images"] if cfg.loss.lambda_lg > 0 else None
    with teacher:
        teachers.predict(0, batch["crop_image"], local)
    total, t = float(whole.get_total_flops()), float(teacher.get_total_flops())
    return {"step_tflop": total / 1e12, "teacher_tflop": t / 1e12, "student_tflop": (total - t) / 1e12}


def mfu(result: dict[str, Any], flops: dict[str, float], peak: float | None) -> dict[str, float | None]:
    """Model FLOPs utilisation of the whole step and of the student's forward + backward (None without a peak)."""
    if peak is None or "split_ms" not in result:
        return {"step": None, "student_fwd_bwd": None}
    split = result["split_ms"]
    student_ms = split["student_forward"] + split["backward"]
    return {
        "step": flops["step_tflop"] / (result["step_ms"] / 1e3) / peak,
        "student_fwd_bwd": flops["student_tflop"] / (student_ms / 1e3) / peak if student_ms > 0 else None,
    }


def _median_ms(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def capture_loss_inputs(step: TrainStep, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The arguments the step passes to ``distill_losses`` (one micro-step, recorded), detached copies; the student
    maps and features require grad again, as in the step."""
    import dad_ray.train.task as task_module

    captured: dict[str, Any] = {}
    real = task_module.distill_losses

    def record(**kwargs):
        captured.update(kwargs)
        return real(**kwargs)

    task_module.distill_losses = record
    try:
        forward_backward(step.model, step.teachers, batch, step.cfg, use_feat=step.use_feat, teacher_index=0)
    finally:
        task_module.distill_losses = real
        step.optimizer.zero_grad(set_to_none=True)
    if not captured:
        raise RuntimeError("compute_losses no longer calls dad_ray.train.task.distill_losses (see capture_loss_inputs)")
    return {
        k: v.detach().clone().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) else v
        for k, v in captured.items()
    }


def loss_step_ms(step: TrainStep, batch: dict[str, torch.Tensor], repeats: int) -> float:
    """``distill_losses`` forward + backward alone, on the very tensors the step gives it (median ms)."""
    inputs = capture_loss_inputs(step, batch)
    return _median_ms(lambda: distill_losses(**inputs)["total"].backward(), batch["crop_image"].device, repeats)


def l_dis_loop_vs_vectorised(batch: int, size: int, device: torch.device, repeats: int) -> dict[str, float]:
    """Hybrid L_Dis forward + backward, vectorised vs per-image loop, (batch, size, size) maps, median ms."""
    g = torch.Generator(device=device).manual_seed(0)
    teacher = torch.rand(batch, size, size, generator=g, device=device) * 10
    student = (0.5 * teacher + torch.rand(batch, size, size, generator=g, device=device)).requires_grad_(True)
    mask = torch.rand(batch, size, size, generator=g, device=device) > 0.1
    vec = _median_ms(lambda: dis_loss(student, teacher, mask, "hybrid").backward(), device, repeats)
    loop = _median_ms(lambda: loop_dis_loss(student, teacher, mask, "hybrid").backward(), device, repeats)
    return {"batch": batch, "size": size, "vectorised_ms": vec, "loop_ms": loop, "ratio": loop / vec}


def auto_batch(step: TrainStep, device: torch.device, limit: int) -> dict[str, Any]:
    """The largest micro-batch the real-step probe fits (``data.batch_size: auto``), and what ``auto`` would use."""
    start = time.perf_counter()
    fits = probe_fits(step.cfg, step.model, device, step.teachers, step.optimizer)
    largest = largest_fitting(fits, limit=limit)
    out: dict[str, Any] = {"largest": largest, "limit": limit, "probe_s": time.perf_counter() - start}
    if largest:
        micro, accum = split_effective_batch(AUTO_TARGET_BATCH, max(1, int(largest * 0.85)))
        out.update(micro_batch=micro, grad_accum=accum)
    return out


def memory_estimate(cfg: ExperimentConfig) -> dict[str, Any]:
    from dad_ray.cluster import estimate_gpu_memory_gib

    est = estimate_gpu_memory_gib(cfg)
    return {"total_gib": est.total_gib, "parts_gib": est.parts_gib}


def attention_is_fused(model: torch.nn.Module) -> bool:
    """Every timm attention module of ``model`` takes the fused path (``F.scaled_dot_product_attention``)."""
    flags = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
    return bool(flags) and all(flags)


def bench_pair(pair: tuple[str, str], weights: tuple[str, str], args: argparse.Namespace, device: torch.device) -> dict:
    """Every figure of one teacher → student pair (weights: random weights files of teacher and student)."""
    teacher, student = pair
    cfg = bench_config(pair, weights, args)
    logger.info("%s → %s: batch %d, crop %d, patches %d", teacher, student, args.batch, args.crop, args.patch)
    step = build_plain_step(cfg, device, EventTimer(device))
    batches = host_batches(cfg, args.batch, 2, pin=device.type == "cuda")
    row: dict[str, Any] = {"teacher": teacher, "student": student, "batch": args.batch, "crop": args.crop}
    row["fused_attention"] = attention_is_fused(step.teachers.models[0]) and attention_is_fused(step.model)
    row["fused_adamw"] = bool(step.optimizer.defaults.get("fused"))
    row["teacher_dtype"] = str(step.teachers.dtype)
    row.update(run_timed(step, batches, device, args.steps, args.warmup))
    on_device = {k: v.to(device) for k, v in batches[0].items()}
    row["host_syncs_per_step"] = host_syncs(step, on_device)
    row["flops"] = count_flops(step, on_device)
    row["mfu"] = mfu(row, row["flops"], peak_bf16_tflops(args.device_name))
    row["loss_fwd_bwd_ms"] = loss_step_ms(step, on_device, args.repeats)
    row["loss_share"] = row["loss_fwd_bwd_ms"] / row["step_ms"]
    row["memory_estimate"] = memory_estimate(cfg)
    del on_device
    if not args.skip_auto and within_budget(args, "auto_batch", row):
        row["auto_batch"] = auto_batch(step, device, args.auto_limit)
    del step, batches
    _free(device)
    if args.compile and within_budget(args, "compiled", row):
        row["compiled"] = bench_compiled(cfg, args, device)
    logger.info("%s", {k: v for k, v in row.items() if k not in ("memory_estimate",)})
    return row


def bench_compiled(cfg: ExperimentConfig, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """images/s with ``train.compile`` (no split: hooks inside compiled modules would break the graphs)."""
    cfg = replace(cfg, train=replace(cfg.train, compile=True))
    step = build_plain_step(cfg, device, PhaseTimer())
    batches = host_batches(cfg, args.batch, 2, pin=device.type == "cuda")
    start = time.perf_counter()
    run_timed(step, batches, device, steps=1, warmup=args.warmup)  # compiles
    compile_s = time.perf_counter() - start
    out = run_timed(step, batches, device, args.steps, warmup=0)
    del step, batches
    _free(device)
    return {"images_per_s": out["images_per_s"], "step_ms": out["step_ms"], "compile_and_warmup_s": compile_s}


def within_budget(args: argparse.Namespace, part: str, record: dict) -> bool:
    """Whether the run is still inside ``--budget-s``; if not, ``part`` is skipped and recorded as skipped."""
    elapsed = time.perf_counter() - args.started
    if elapsed <= args.budget_s:
        return True
    logger.warning("%s skipped: %.0f s elapsed, over --budget-s %.0f", part, elapsed, args.budget_s)
    record.setdefault("skipped", []).append(part)
    return False


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def random_weights(name: str, workdir: Path) -> str:
    """A random initialisation of registry model ``name`` saved as safetensors (the teacher pool loads files)."""
    path = workdir / f"{name}_random.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        save_weights(create_model(name), path)
    return str(path)


def _fmt(value: float | None, spec: str = ".1f", scale: float = 1.0) -> str:
    return "–" if value is None else format(value * scale, spec)


def markdown_report(report: dict[str, Any]) -> str:
    """The step table (one row per pair), the memory table, and the L_Dis line."""
    lines = [
        f"GPU benchmark on {report['device_name']} (torch {report['torch']}, timm {report['timm']}; dense bf16 peak "
        f"{_fmt(report['peak_bf16_tflops'], '.0f')} TFLOP/s)",
        "",
        "| teacher → student | batch | img/s | step ms | data | teacher | student fwd | losses | backward | optimizer "
        "| host | loss share | MFU step | MFU student f+b | auto batch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["pairs"]:
        s = r.get("split_ms", {})
        auto = r.get("auto_batch", {})
        cells = [f"{r['teacher']} → {r['student']}", str(r["batch"]), _fmt(r["images_per_s"]), _fmt(r["step_ms"])]
        cells += [_fmt(s.get(k)) for k in (*PHASES, "host_overhead")]
        cells += [_fmt(r["loss_share"], ".1%"), _fmt(r["mfu"]["step"], ".1%"), _fmt(r["mfu"]["student_fwd_bwd"], ".1%")]
        cells.append(f"{auto['largest']} (≤ {auto['limit']})" if auto else "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| teacher → student | peak allocated GiB | peak reserved GiB | estimate GiB (dad_ray.cluster) "]
    lines[-1] += "| host syncs / step |"
    lines.append("|---|---|---|---|---|")
    for r in report["pairs"]:
        syncs = r.get("host_syncs_per_step")
        lines.append(
            f"| {r['teacher']} → {r['student']} | {_fmt(r.get('peak_allocated_gib'), '.2f')} | "
            f"{_fmt(r.get('peak_reserved_gib'), '.2f')} | {r['memory_estimate']['total_gib']:.2f} | "
            f"{'–' if syncs is None else syncs['count']} |"
        )
    d = report.get("l_dis")
    if d:
        lines.append(
            f"\nL_Dis hybrid fwd+bwd, B={d['batch']}, {d['size']}x{d['size']}: vectorised {d['vectorised_ms']:.2f} ms, "
            f"per-image loop {d['loop_ms']:.2f} ms ({d['ratio']:.1f}x)"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmark.py gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny models and sizes (the CPU dry run of the tests)")
    parser.add_argument("--batch", type=int, default=None, help="per-GPU batch (default 8; --tiny 2)")
    parser.add_argument("--crop", type=int, default=None, help="shared-context crop (default 560; --tiny 56)")
    parser.add_argument("--patch", type=int, default=None, help="local patch size (default 560; --tiny 56)")
    parser.add_argument("--global-size", type=int, nargs=2, default=None, help="student global view H W")
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps (default 10; --tiny 2)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the loss measurements")
    parser.add_argument("--auto-limit", type=int, default=None, help="largest batch the probe tries (64; --tiny 4)")
    parser.add_argument("--skip-auto", action="store_true", help="no batch-size probe")
    parser.add_argument("--compile", action="store_true", help="also measure train.compile (minutes of compilation)")
    parser.add_argument(
        "--budget-s", type=float, default=360.0, help="skip the optional parts (auto batch, compile, L_Dis) after this"
    )
    add_json_arg(parser)
    args = parser.parse_args(argv)
    tiny = args.tiny
    defaults = {
        "batch": 2 if tiny else 8,
        "crop": 56 if tiny else 560,
        "patch": 56 if tiny else 560,
        "global_size": [42, 56] if tiny else [518, 686],
        "steps": 2 if tiny else 10,
        "auto_limit": 4 if tiny else 64,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if tiny:
        args.warmup, args.repeats = min(args.warmup, 1), min(args.repeats, 1)
    return args


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; returns the report (Markdown)."""
    args = parse_args(argv)
    args.started = time.perf_counter()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmark.py gpu: no CUDA device here (use --device cpu --tiny for the dry run)")
    device = torch.device(args.device)
    import timm

    args.device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report: dict[str, Any] = {
        "device_name": args.device_name,
        "peak_bf16_tflops": peak_bf16_tflops(args.device_name),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "args": {k: v for k, v in vars(args).items() if k not in ("json", "started")},
        "pairs": [],
    }
    with tempfile.TemporaryDirectory(prefix="dad_ray_bench_gpu_") as tmp:
        for pair in TINY_PAIRS if args.tiny else PAIRS:
            weights = (random_weights(pair[0], Path(tmp)), random_weights(pair[1], Path(tmp)))
            report["pairs"].append(bench_pair(pair, weights, args, device))
            write_json(args.json, report)
    if within_budget(args, "l_dis", report):
        report["l_dis"] = l_dis_loop_vs_vectorised(args.batch, args.crop, device, args.repeats)
    write_json(args.json, report)
    return markdown_report(report)
