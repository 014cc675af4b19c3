"""The benchmarks behind ``jobs/benchmark.py``: each ``main(argv)`` returns its report (Markdown) and, with
``--json PATH``, writes its figures there (:func:`write_json`)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures to this file")


def write_json(path: Path | None, figures: Any) -> None:
    """Write ``figures`` as JSON to ``path`` (no-op for None), atomically: a reader never sees half a file.

    A dict gets ``loadavg`` (``os.getloadavg()`` at writing) unless it has one: absolute timings on a shared machine
    mean little without it."""
    if path is None:
        return
    if isinstance(figures, dict) and "loadavg" not in figures:  # 1/5/15-min load when written: context for timings
        figures = {**figures, "loadavg": list(os.getloadavg())}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after one warm-up call, in seconds."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
