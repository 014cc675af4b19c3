"""Benchmarks that are too long or GPU-only for the test suite.

python jobs/benchmark.py losses   # vectorised hybrid L_Dis vs a per-image loop (CPU)
python jobs/benchmark.py models   # parameters and forward time per model at 518 (CPU, and GPU if present)
python jobs/benchmark.py data     # Ray Data pipeline vs torch DataLoader, samples/s and time to first batch
python jobs/benchmark.py train    # Ray Train loop vs plain PyTorch loop, same model and batch
python jobs/benchmark.py tune     # ASHA vs full search on the synthetic task, and the paper's ablation grid
python jobs/benchmark.py students # the student zoo: params, GFLOPs, CPU latency (PyTorch, ONNX Runtime), AbsRel / d1
python jobs/benchmark.py gpu      # the distillation step on one GPU: img/s, step split, memory, MFU (no Ray needed)
python jobs/benchmark.py convert  # SA-1B-size JPEGs -> shards: images/s per core (original bytes, --max-side)
python jobs/benchmark.py teacher-stage  # teacher inside the step vs a Ray Data stage: img/s, FLOPs, GPU ratio

Every benchmark takes --json PATH (write its figures there) and --help.
"""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = ("losses", "models", "data", "train", "tune", "students", "gpu", "convert", "teacher-stage")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=BENCHMARKS)
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options (see NAME --help)")
    args = parser.parse_args(argv)
    from dad_ray.logging_utils import setup_logging

    setup_logging()
    module = importlib.import_module(f"dad_ray.bench.{args.name.replace('-', '_')}")
    print(module.main(args.options))  # the report (Markdown) on stdout; progress went to the log
    return 0


if __name__ == "__main__":
    sys.exit(main())
