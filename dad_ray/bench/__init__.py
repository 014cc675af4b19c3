"""The benchmarks behind ``jobs/benchmark.py``: each ``main(argv)`` returns its report (Markdown) and, with
``--json PATH``, writes its figures there (:func:`write_json`)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures to this file")


def write_json(path: Path | None, figures: Any) -> None:
    """Write ``figures`` as JSON to ``path`` (no-op for None), atomically: a reader never sees half a file."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    os.replace(tmp, path)
