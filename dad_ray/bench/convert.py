"""Conversion throughput of unlabeled SA-1B-size photos into shards (``jobs/prepare_data.py``'s Ray Data job).

Generates ``--images`` JPEGs of SA-1B's size (1500 x 2250, quality 90, photo-like: smooth gradients plus noise, so
they are about as large as real ones) in a temporary directory, then measures:

- **in-process, one core**: :func:`~dad_ray.data.prepare.encode_sample` in a loop (the work of one shard task per
  image: read, check by decoding at 1/8 scale, keep the bytes; or with ``--max-side`` decode, resize, re-encode);
- **the Ray Data job**: :func:`~dad_ray.data.prepare.prepare_shards` end to end on ``--procs`` task slots (after a
  warm-up conversion, so worker start-up is not counted), images/s and images/s per slot.

Both modes by default: original bytes (the default conversion) and ``--max-side 1024`` (re-encoding JPEG q95).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import tempfile
import time

import numpy as np
from PIL import Image

from dad_ray.bench import add_json_arg, write_json

logger = logging.getLogger(__name__)

SA1B_SIZE = (1500, 2250)  # (height, width) of a typical SA-1B image


def photo_like(index: int, height: int, width: int) -> bytes:
    """A JPEG (q90) of smooth colour gradients plus noise: compresses like a photo (~1 MB at SA-1B size)."""
    rng = np.random.default_rng(index)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    phase = rng.uniform(0, 6.28, 3)
    channels = [127 + 100 * np.sin(6 * x + 4 * y + p) for p in phase]
    image = np.stack(channels, -1) + rng.normal(0, 12, (height, width, 3)).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_images(root: str, count: int, height: int, width: int) -> int:
    """``count`` photo-like JPEGs + SA-1B's JSON side files under ``root``; returns the total JPEG bytes."""
    total = 0
    for i in range(count):
        data = photo_like(i, height, width)
        total += len(data)
        with open(os.path.join(root, f"sa_{i:06d}.jpg"), "wb") as f:
            f.write(data)
        with open(os.path.join(root, f"sa_{i:06d}.json"), "w") as f:
            f.write('{"annotations": []}')
    return total


def in_process(root: str, max_side: int) -> float:
    """Images/s of encode_sample over every image, in this process (one core)."""
    from dad_ray.data.prepare import EncodeOptions, encode_sample
    from dad_ray.data.sources import open_source

    src = open_source(root, "train")
    refs = src.refs()
    start = time.perf_counter()
    for ref in refs:
        encode_sample(src, ref, EncodeOptions(max_side=max_side))
    return len(refs) / (time.perf_counter() - start)


def ray_job(root: str, out: str, max_side: int, shard_bytes: int = 8 * 2**20) -> tuple[float, int]:
    """(images/s, shards) of prepare_shards (Ray already started; its task slots are the CPUs given to Ray - 1)."""
    from dad_ray.data import prepare_shards

    start = time.perf_counter()
    manifest = prepare_shards(root, out, "train", max_side=max_side, shard_bytes=shard_bytes, progress=False)
    return manifest["num_samples"] / (time.perf_counter() - start), len(manifest["shards"])


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48, help="SA-1B-size JPEGs to convert")
    parser.add_argument("--procs", type=int, default=2, help="Ray Data task slots (CPUs given to Ray Data)")
    parser.add_argument("--max-sides", type=int, nargs="+", default=[0, 1024], help="0 = original bytes")
    add_json_arg(parser)
    args = parser.parse_args(argv)
    from dad_ray.runtime import ray_session

    height, width = SA1B_SIZE
    rows, figures = [], {"images": args.images, "size": [height, width], "procs": args.procs, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="dad_ray_bench_convert_") as tmp:
        src = os.path.join(tmp, "sa1b")
        os.makedirs(src)
        total = write_images(src, args.images, height, width)
        figures["mean_jpeg_mb"] = total / args.images / 2**20
        logger.info("%d JPEGs %dx%d, %.2f MB each", args.images, height, width, figures["mean_jpeg_mb"])
        warm = os.path.join(tmp, "warm")
        os.makedirs(warm)
        write_images(warm, 4 * args.procs, 64, 96)
        with ray_session(args.procs + 1, dashboard=False, log_to_driver=False):
            # one-image shards on every slot: Ray Data's worker processes start (and import torch) before timing
            ray_job(warm, os.path.join(tmp, "warm_out"), 0, shard_bytes=1)
            for max_side in args.max_sides:
                single = in_process(src, max_side)
                rate, shards = ray_job(src, os.path.join(tmp, f"out_{max_side}"), max_side)
                mode = "original bytes" if max_side == 0 else f"--max-side {max_side} (re-encoded)"
                figures[f"max_side_{max_side}"] = {
                    "in_process_images_per_s": single,
                    "ray_images_per_s": rate,
                    "ray_images_per_s_per_slot": rate / args.procs,
                    "shards": shards,
                }
                rows.append(f"| {mode} | {single:.1f} | {rate:.1f} | {rate / args.procs:.1f} | {shards} |")
    write_json(args.json, figures)
    header = [
        f"{args.images} SA-1B-size JPEGs ({height}x{width}, {figures['mean_jpeg_mb']:.2f} MB), "
        f"{args.procs} Ray Data task slots, {os.cpu_count()} cores",
        "",
        "| conversion | in-process img/s (1 core) | Ray job img/s | Ray img/s per slot | shards |",
        "|---|---|---|---|---|",
    ]
    return "\n".join(header + rows)
