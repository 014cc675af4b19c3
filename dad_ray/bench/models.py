"""Parameters and forward time per model at 518 x 518, batch 1.

    python jobs/benchmark.py models [--models dav2_vits dav2_tiny ...] [--size 518] [--repeats 3] [--threads N]

Parameters are counted on the meta device (no memory). CPU time: median and min of ``--repeats`` timed
``inference_mode`` forwards after one warm-up, fp32, random weights (the time does not depend on the values); on a
shared machine the min is the better estimate of the uncontended time. With CUDA: the same in
fp32 and bf16 autocast (median of ``--gpu-repeats`` after warm-up, synchronised) and the peak allocated memory of
the bf16 forward. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from dad_ray.bench import add_json_arg, write_json
from dad_ray.models import create_model, list_models

logger = logging.getLogger(__name__)

DEFAULT_MODELS = ("dav2_vits", "dav2_vitb", "dav2_vitl", "dav2_tiny", "dav2_micro")  # vitg: pass it explicitly


def count_parameters(name: str) -> int:
    """Number of parameters of a registry model, counted without allocating them."""
    with torch.device("meta"):
        model = create_model(name)
    return sum(p.numel() for p in model.parameters())


def _time_forward(
    model: torch.nn.Module, x: torch.Tensor, repeats: int, amp: torch.dtype | None
) -> tuple[float, float]:
    """(median, min) seconds per forward, after one warm-up."""
    cuda = x.device.type == "cuda"
    times = []
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
        for i in range(repeats + 1):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            if cuda:
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def benchmark(name: str, size: int, repeats: int, gpu_repeats: int, cpu: bool = True) -> dict[str, float | str]:
    row: dict[str, float | str] = {"model": name, "params_m": count_parameters(name) / 1e6}
    model = create_model(name).eval()
    x = torch.randn(1, 3, size, size)
    if cpu:
        row["cpu_s"], row["cpu_min_s"] = _time_forward(model, x, repeats, None)
    if torch.cuda.is_available():
        model = model.cuda()
        x = x.cuda()
        row["gpu_fp32_ms"] = 1e3 * _time_forward(model, x, gpu_repeats, None)[0]
        torch.cuda.reset_peak_memory_stats()
        row["gpu_bf16_ms"] = 1e3 * _time_forward(model, x, gpu_repeats, torch.bfloat16)[0]
        row["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        row["gpu"] = torch.cuda.get_device_name()
    logger.info("%s", row)
    return row


def markdown_table(rows: list[dict[str, float | str]], size: int) -> str:
    columns = [
        ("model", "model", "{}"),
        ("params_m", "params (M)", "{:.1f}"),
        ("cpu_s", f"CPU s @{size} (median)", "{:.2f}"),
    ]
    columns += [("cpu_min_s", "CPU s (min)", "{:.2f}")]
    columns += [
        ("gpu_fp32_ms", "GPU fp32 ms", "{:.1f}"),
        ("gpu_bf16_ms", "GPU bf16 ms", "{:.1f}"),
        ("gpu_peak_gib", "GPU peak GiB (bf16)", "{:.2f}"),
    ]
    columns = [c for c in columns if any(c[0] in r for r in rows)]
    lines = ["| " + " | ".join(c[1] for c in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[k]) if k in r else "–" for k, _, fmt in columns) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; returns the report (a Markdown table)."""
    parser = argparse.ArgumentParser(
        prog="benchmark.py models", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=list_models())
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--repeats", type=int, default=3, help="timed CPU forwards per model")
    parser.add_argument("--gpu-repeats", type=int, default=20, help="timed GPU forwards per model")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--no-cpu", action="store_true", help="skip CPU timing (GPU machines)")
    add_json_arg(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logger.info(
        "torch %s, %d CPU threads, CUDA %s", torch.__version__, torch.get_num_threads(), torch.cuda.is_available()
    )
    rows = [benchmark(m, args.size, args.repeats, args.gpu_repeats, cpu=not args.no_cpu) for m in args.models]
    write_json(args.json, {"size": args.size, "threads": torch.get_num_threads(), "rows": rows})
    return markdown_table(rows, args.size)
