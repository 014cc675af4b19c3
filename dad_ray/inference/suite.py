"""The zero-shot benchmark suite: every data set prepared under one directory, evaluated and laid out as the
paper's Table 5 (one row per model, AbsRel ↓ / δ1 ↑ per data set).

A suite directory holds one shard root per data set, as ``jobs/prepare_data.py --format NAME --out DIR/NAME
--split test`` writes them: ``DIR/<set>/<split>/manifest.json``. Each set's protocol (valid range and crop,
:data:`dad_ray.metrics.PROTOCOLS`) is the manifest's ``dataset`` field, written by the benchmark readers. Shards
without it (made before the field existed, or from a plain folder) fall back to the sub-directory's name when that
is a protocol name — logged as a warning, never silently — and are refused otherwise, naming the directory.
Sub-directories without ``<split>/manifest.json`` are not data sets and are listed in the log. Each set is one
Ray Data pass in which every model predicts every image (:func:`~dad_ray.inference.evaluate.evaluate_checkpoints`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from dad_ray.data import storage
from dad_ray.data.errors import DataError
from dad_ray.data.manifest import MANIFEST, read_manifest
from dad_ray.inference.evaluate import ModelToEvaluate, evaluate_checkpoints
from dad_ray.metrics import PAPER_ORDER, PROTOCOLS

logger = logging.getLogger(__name__)

DATASET_FIELD = "dataset"  # the manifest field naming the benchmark (dad_ray.data.manifest)
TITLES = {
    "nyu": "NYUv2",
    "kitti": "KITTI",
    "kitti_garg": "KITTI (Garg)",
    "diode": "DIODE",
    "scannet": "ScanNet",
    "eth3d": "ETH3D",
}


@dataclass(frozen=True)
class SuiteSet:
    """One data set of a suite: its column ``name`` (the sub-directory), shard ``root``, ``split``, ``protocol``
    and where the protocol came from ("manifest" or "directory name")."""

    name: str
    root: str
    split: str
    protocol: str
    protocol_from: str

    @property
    def title(self) -> str:
        """The column title: the paper's name of the benchmark when the set is named after its protocol."""
        return TITLES.get(self.name, self.name)


def _protocol_of(name: str, manifest: dict[str, Any], where: str) -> tuple[str, str]:
    dataset = manifest.get(DATASET_FIELD)
    if dataset:
        if dataset not in PROTOCOLS:
            raise DataError(f"{where}: manifest dataset {dataset!r} has no protocol (known: {', '.join(PROTOCOLS)})")
        return dataset, "manifest"
    if name in PROTOCOLS:
        logger.warning(
            "%s: the manifest names no data set (no %r field): protocol %r taken from the directory name",
            where, DATASET_FIELD, name,
        )  # fmt: skip
        return name, "directory name"
    raise DataError(
        f"{where}: the manifest names no data set and the directory name {name!r} is not a protocol "
        f"({', '.join(PROTOCOLS)}); re-create it with jobs/prepare_data.py --format, or name the directory after its "
        "protocol"
    )


def _order(name: str) -> tuple[int, str]:
    return (PAPER_ORDER.index(name) if name in PAPER_ORDER else len(PAPER_ORDER), name)


def discover_suite(suite_dir: str, split: str = "test") -> list[SuiteSet]:
    """The data sets under ``suite_dir`` (local or URI): each ``<set>/<split>/manifest.json``, in the paper's
    column order (NYUv2, KITTI, DIODE, ScanNet, ETH3D), then any others by name."""
    names = storage.children(suite_dir)
    if not names:
        raise DataError(f"{suite_dir}: no such directory, or it is empty (expected <set>/{split}/{MANIFEST} in it)")
    sets, ignored = [], []
    for name in sorted(names, key=_order):
        root = storage.join(suite_dir, name)
        split_dir = storage.join(root, split)
        manifest = read_manifest(split_dir, required=False)
        if manifest is None:
            ignored.append(name)
            continue
        sets.append(SuiteSet(name, root, split, *_protocol_of(name, manifest, split_dir)))
    if ignored:
        logger.info("%s: not data sets (no %s/%s): %s", suite_dir, split, MANIFEST, ", ".join(ignored))
    if not sets:
        raise DataError(f"{suite_dir}: no data set with {split}/{MANIFEST} under it (entries: {', '.join(names)})")
    return sets


def evaluate_suite(
    models: dict[str, ModelToEvaluate], suite_dir: str, *, split: str = "test", **kwargs: Any
) -> dict[str, Any]:
    """Every data set of the suite, all ``models`` in one Ray Data pass per set (``kwargs``: batch_size,
    max_samples, use_gpu, actors, progress of :func:`evaluate_checkpoints`). Returns the JSON document:
    ``{"suite", "split", "sets": [{"name", "title", "protocol", "protocol_from", "root"}], "models": {label:
    {"name", "weights", "input_size", "alignment", "settings_from"}}, "results": {set: {label: metrics}}}``."""
    sets = discover_suite(suite_dir, split)
    logger.info(
        "suite %s: %s", suite_dir, ", ".join(f"{s.name} (protocol {s.protocol}, from {s.protocol_from})" for s in sets)
    )
    results = {
        s.name: evaluate_checkpoints(models, data=s.root, split=split, protocol=s.protocol, **kwargs) for s in sets
    }
    return {
        "suite": suite_dir,
        "split": split,
        "sets": [
            {"name": s.name, "title": s.title, "protocol": s.protocol, "protocol_from": s.protocol_from, "root": s.root}
            for s in sets
        ],
        "models": {
            label: {
                "name": m.name,
                "weights": m.weights,
                "input_size": m.input_size,
                "alignment": m.alignment,
                "settings_from": dict(m.sources),
            }
            for label, m in models.items()
        },
        "results": results,
    }


def _cell(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3f}"


def format_table5(suite: dict[str, Any]) -> str:
    """The paper's Table 5 layout as markdown: one row per model, AbsRel ↓ and δ1 ↑ per data set, then what the
    numbers are (protocols, alignment, input sizes, images per set)."""
    sets, labels = suite["sets"], list(suite["models"])
    head = "| model | " + " | ".join(f"{s['title']} AbsRel ↓ | {s['title']} δ1 ↑" for s in sets) + " |"
    lines = [head, "|---" * (1 + 2 * len(sets)) + "|"]
    for label in labels:
        cells = []
        for s in sets:
            r = suite["results"][s["name"]][label]
            cells += [_cell(r["abs_rel"]), _cell(r["d1"])]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Zero-shot, per-image least-squares alignment; metrics per image, averaged over images. Protocols: "
        + "; ".join(f"{s['title']} = {s['protocol']} ({_images(suite, s['name'], labels[0])})" for s in sets)
        + "."
    )
    for label, m in suite["models"].items():
        origin = m["settings_from"]
        lines.append(
            f"{label}: {m['name']} ({m['weights']}), input size {m['input_size']} "
            f"({origin.get('input_size', 'given')}), alignment in {m['alignment']} space "
            f"({origin.get('alignment', 'given')})"
        )
    return "\n".join(lines)


def _images(suite: dict[str, Any], name: str, label: str) -> str:
    r = suite["results"][name][label]
    return f"{r['n_images']} images" + (f", {r['n_invalid']} without a valid pixel" if r["n_invalid"] else "")
