"""The input pipeline: Ray Data (``train_dataset`` + ``train_batches``) vs a torch DataLoader doing the same work.

    python jobs/benchmark.py data [--preset default] [--samples 256] [--procs 2] [--epochs 2] [--root DIR]

Both sides read the same Parquet shards (synthetic scenes at the preset's size, generated once under ``--root``),
decode JPEG RGB + float32 depth, and run the same :func:`~dad_ray.data.augment.augment_sample` (crop, global view,
local patches, flip, jitter; images handed over as uint8 and normalised by the consumer) with ``--procs``
processes: Ray Data with a local Ray of ``procs + 1`` CPUs (``dad_ray.runtime.ray_session``) and
``data.data_cpus = 1`` (at most ``procs`` decode/augment tasks at once; ``configure_data_context`` leaves one CPU),
the DataLoader with ``num_workers=procs``. Each side is timed over ``--epochs`` full epochs of ``data.batch_size``
batches consumed on the driver. Prints samples/s (all epochs, and the last epoch alone: steady state), time to the
first batch, and the ratio Ray / DataLoader (goal >= 1.0).

``--repeats N`` runs the two sides N times each, alternating in ABBA order (Ray, DataLoader, DataLoader, Ray, ...)
inside one Ray session, so that the machine's load falls on both alike; each repeat builds a fresh dataset /
DataLoader, and the ratio is over every epoch of every repeat, first epochs included. The Ray cluster's own start
(``ray.init``) is outside both timings; a Ray repeat after the first finds Ray's worker processes alive, so repeat 1's
first batch minus the later repeats' is what starting those processes (and importing torch in them) costs.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import torch

from dad_ray.bench import add_json_arg, write_json
from dad_ray.config import add_config_args, config_from_args, config_to_yaml
from dad_ray.data.augment import IMAGE_COLUMNS, AugmentSpec, augment_sample, normalize_uint8, sample_rng
from dad_ray.data.codec import decode_depth, decode_image
from dad_ray.data.pipeline import TRAIN_COLUMNS

logger = logging.getLogger(__name__)


class ShardDataset(torch.utils.data.Dataset):
    """Map-style dataset over the manifest's shards: each worker reads the shards it touches once (lazily)."""

    def __init__(self, files: list[str], counts: list[int], spec: AugmentSpec, seed: int) -> None:
        self.files, self.spec, self.seed = files, spec, seed
        self.index = [(f, r) for f, n in zip(files, counts) for r in range(n)]
        self.tables: dict[str, dict] = {}
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        path, row = self.index[i]
        if path not in self.tables:
            self.tables[path] = pq.read_table(path).to_pydict()
        t = self.tables[path]
        image = decode_image(t["image"][row], f"row {t['key'][row]}")
        depth = decode_depth(t["depth"][row], t["height"][row], t["width"][row], f"row {t['key'][row]}")
        out = augment_sample(
            image, depth, self.spec, sample_rng(self.seed, self.epoch, t["key"][row]), uint8_images=True
        )
        return {name: out[name] for name in TRAIN_COLUMNS}


def _normalized(loader):
    """The DataLoader side's consumer does what ``train_batches`` does: uint8 images -> float32 normalised."""
    for batch in loader:
        for name in IMAGE_COLUMNS:
            batch[name] = normalize_uint8(batch[name])
        yield batch


def _timed(batches, batch_size: int) -> tuple[float, float, int]:
    """(seconds to the first batch, total seconds, samples) of one pass over ``batches``."""
    start = time.perf_counter()
    first, n = None, 0
    for batch in batches:
        if first is None:
            first = time.perf_counter() - start
        n += int(batch["crop_image"].shape[0])
    return first or 0.0, time.perf_counter() - start, n


def run_dataloader(cfg, files, counts, procs: int, epochs: int) -> list[tuple[float, float, int]]:
    dataset = ShardDataset(files, counts, AugmentSpec.from_config(cfg), seed=0)
    results = []
    for epoch in range(epochs):
        dataset.epoch = epoch
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            shuffle=True,
            num_workers=procs,
            drop_last=True,
            prefetch_factor=cfg.prefetch_batches if procs > 0 else None,
            generator=torch.Generator().manual_seed(epoch),
        )
        results.append(_timed(_normalized(loader), cfg.batch_size))
    return results


def run_ray(cfg, epochs: int) -> list[tuple[float, float, int]]:
    from dad_ray.data import train_batches, train_dataset

    ds = train_dataset(cfg, seed=0)
    return [_timed(train_batches(ds, cfg, epoch, seed=0), cfg.batch_size) for epoch in range(epochs)]


def _summary(results: list[tuple[float, float, int]]) -> tuple[float, float, float]:
    total_s = sum(r[1] for r in results)
    total_n = sum(r[2] for r in results)
    return total_n / total_s, results[-1][2] / results[-1][1], results[0][0]


def abba_order(repeats: int) -> list[str]:
    """Which side runs when: ``ray``/``torch`` in ABBA order, ``repeats`` of each (2 -> ray torch torch ray)."""
    pairs = [("ray", "torch") if i % 2 == 0 else ("torch", "ray") for i in range(repeats)]
    return [side for pair in pairs for side in pair]


def run_alternating(data, files, counts, procs: int, epochs: int, repeats: int) -> dict[str, list]:
    """Every repeat's per-epoch results of each side, run in :func:`abba_order`."""
    out: dict[str, list] = {"ray": [], "torch": []}
    for side in abba_order(repeats):
        if side == "ray":
            out["ray"].append(run_ray(data, epochs))
        else:
            out["torch"].append(run_dataloader(data, files, counts, procs, epochs))
        logger.info("%s repeat %d: %s", side, len(out[side]), out[side][-1])
    return out


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; returns the report (a Markdown table and the ratio)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, {})
    parser.add_argument("--samples", type=int, default=256, help="synthetic training scenes")
    parser.add_argument("--procs", type=int, default=2, help="decode/augment processes on each side")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--root", default=None, help="where the shards go (default: a temporary directory)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side, alternating ABBA in one session")
    add_json_arg(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args, default_preset="default")
    if args.print_config:  # the resolved config is the report; nothing runs
        return config_to_yaml(cfg)
    from dad_ray.data import ensure_synthetic
    from dad_ray.data.shards import shard_files
    from dad_ray.runtime import ray_session

    tmp = tempfile.TemporaryDirectory(prefix="dad_ray_bench_data_") if args.root is None else None
    root = args.root or tmp.name
    synthetic = replace(cfg.data.synthetic, train_samples=args.samples, val_samples=1)
    data = replace(cfg.data, root=root, synthetic=synthetic, data_cpus=1.0)
    with ray_session(args.procs + 1, dashboard=False, log_to_driver=False):
        ensure_synthetic(root, synthetic, splits=tuple(dict.fromkeys((data.train_split, data.val_split))))
        manifest, files, _fs = shard_files(root, data.train_split)
        counts = [s["num_rows"] for s in manifest["shards"]]
        logger.info(
            "%d samples %dx%d in %d shards; batch %d; %d processes per side; %d epochs",
            manifest["num_samples"],
            synthetic.height,
            synthetic.width,
            len(files),
            data.batch_size,
            args.procs,
            args.epochs,
        )
        runs = run_alternating(data, files, counts, args.procs, args.epochs, args.repeats)
    ray_res = [r for rep in runs["ray"] for r in rep]
    torch_res = [r for rep in runs["torch"] for r in rep]
    if tmp is not None:
        tmp.cleanup()
    r_all, r_last, r_first = _summary(ray_res)
    t_all, t_last, t_first = _summary(torch_res)
    fields = ("first_batch_s", "epoch_s", "samples")
    epochs = {"ray_data": ray_res, "dataloader": torch_res}  # (first batch s, epoch s, samples) per epoch
    write_json(
        args.json,
        {
            "samples": args.samples,
            "size": [synthetic.height, synthetic.width],
            "crop": data.crop_size,
            "procs": args.procs,
            "repeats": args.repeats,
            "order": abba_order(args.repeats),
            "first_batch_s_per_repeat": {k: [rep[0][0] for rep in v] for k, v in runs.items()},
            "batch": data.batch_size,
            "epochs": {k: [dict(zip(fields, r)) for r in v] for k, v in epochs.items()},
            "ray_data": {"samples_per_s": r_all, "last_epoch_samples_per_s": r_last, "first_batch_s": r_first},
            "dataloader": {"samples_per_s": t_all, "last_epoch_samples_per_s": t_last, "first_batch_s": t_first},
            "ratio_all_epochs": r_all / t_all,
            "ratio_last_epoch": r_last / t_last,
            "samples_per_s_per_core": {"ray_data": r_all / args.procs, "dataloader": t_all / args.procs},
        },
    )
    return "\n".join(
        [
            f"| pipeline ({args.procs} processes) | samples/s all epochs | samples/s last epoch | first batch s |",
            "|---|---|---|---|",
            f"| Ray Data | {r_all:.1f} | {r_last:.1f} | {r_first:.2f} |",
            f"| torch DataLoader | {t_all:.1f} | {t_last:.1f} | {t_first:.2f} |",
            f"ratio Ray / DataLoader = {r_all / t_all:.2f} all epochs, {r_last / t_last:.2f} last epoch (goal >= 1.0)",
        ]
    )
