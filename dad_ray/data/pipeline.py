"""The streaming pipelines the trainer and the evaluator consume (never materialised).

Both start from the manifest's list of Parquet row groups (``row_group_size`` rows each; the references only, a few
bytes per unit) as a ``from_items`` dataset, one block per unit, and read + decode + transform each unit inside one
``map_batches(num_cpus=cfg.data_cpus)`` task that yields small batches. Measured on 2 cores (see
:mod:`dad_ray.bench.data`) this reaches the first batch several times sooner than ``read_parquet`` (whose listing
task and footer-reading actors start again every epoch) and needs no free CPU for a listing task.

Train: units in a new seeded order every execution = every epoch (``randomize_block_order`` with
``RandomSeedConfig(seed, reseed_after_execution=True)`` over the tiny reference blocks) -> read + decode +
:func:`~dad_ray.data.augment.augment_sample` -> fixed-shape rows -> per worker ``get_dataset_shard("train")`` ->
:func:`train_batches` (local shuffle buffer seeded by seed and epoch). The augmentation randomness of a row is a
pure function of (seed, epoch, key), where epoch is the dataset's execution index (Ray Data's own counter behind
``reseed_after_execution``): runs are reproducible.

Eval: units in shard order -> read + decode + DAv2's eval resize, in order (``preserve_order``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from dad_ray.data import storage
from dad_ray.data.augment import IMAGE_COLUMNS, AugmentSpec, augment_sample, eval_image, normalize_uint8, sample_rng
from dad_ray.data.codec import decode_depth, decode_image
from dad_ray.data.errors import DataError
from dad_ray.data.manifest import has_depth
from dad_ray.data.shards import read_row_group, row_groups, shard_files
from dad_ray.data.teacher_columns import column_name, decode_map
from dad_ray.runtime import data_execution_index, relax_data_reservations, start_data_execution_index

logger = logging.getLogger(__name__)

TRAIN_COLUMNS = (
    "crop_image",
    "crop_depth",
    "crop_mask",
    "global_image",
    "global_depth",
    "global_mask",
    "local_images",
    "local_depth",
    "local_mask",
    "local_boxes",
)
MAP_BATCH = 4  # rows per augmentation task batch: small, so the first batch arrives early and memory stays flat


def _cpu_limit(cfg) -> float:
    """Ray Data's CPU cap: (cluster CPUs - 1), never below ``cfg.data_cpus`` (inf before ``ray.init``)."""
    import ray

    if not ray.is_initialized():
        return float("inf")
    total = float(ray.cluster_resources().get("CPU", 1.0))
    return max(float(cfg.data_cpus), total - 1.0)


def configure_data_context(cfg) -> None:
    """Make Ray Data behave on a small shared machine (and inside Ray Train inside Ray Tune).

    - no Ray Data progress bars or verbose progress (they flood the Train workers' logs, interleaved with the
      training progress line that already reports images/s and the data-wait share);
    - no per-operator resource reservation (``op_resource_reservation_enabled = False``): on a few CPUs the
      reservation splits the cap between the operators and leaves the decode/augment operator ONE task at a time
      (measured: 88 -> 141 samples/s with 2 CPUs for Data); our pipelines have a single heavy operator;
    - a CPU cap for Ray Data of (cluster CPUs - 1), never below ``cfg.data_cpus``: one CPU always stays free for the
      read's file-listing task, which takes 1 CPU that cannot be configured, and for the driver. Ray Train further
      subtracts its workers' CPUs (``exclude_resources``).
    Every read and map in this module also passes ``num_cpus=cfg.data_cpus`` explicitly (tasks default to 1 CPU).
    Idempotent; applies to datasets created afterwards (a dataset copies the context when it is created).

    Ray Train replaces each dataset's execution options with ``DataConfig``'s: pass
    ``dataset_config=ray.train.DataConfig(execution_options=ingest_options(cfg))`` to ``TorchTrainer``.
    """
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.execution_options.verbose_progress = False
    ctx.enable_operator_progress_bars = False
    ctx.enable_progress_bars = False
    relax_data_reservations(ctx)
    ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(cpu=_cpu_limit(cfg))


def ingest_options(cfg):
    """``ExecutionOptions`` for ``ray.train.DataConfig(execution_options=...)``: the CPU cap of
    :func:`configure_data_context`, ``preserve_order`` (reproducible row order), no verbose progress."""
    from ray.data import ExecutionOptions, ExecutionResources

    return ExecutionOptions(
        resource_limits=ExecutionResources(cpu=_cpu_limit(cfg)), preserve_order=True, verbose_progress=False
    )


def _row_depth(rows: dict[str, list], i: int, name: str) -> np.ndarray:
    """Row ``i``'s depth, or all zeros (every pixel invalid: no depth-supervised term sees it) for a depth-less
    row (unlabeled shards), so that mixed batches keep fixed columns."""
    h, w = rows["height"][i], rows["width"][i]
    if rows["depth"][i] is None:
        return np.zeros((h, w), np.float32)
    return decode_depth(rows["depth"][i], h, w, name)


def _train_units(
    batch: dict[str, np.ndarray],
    spec: AugmentSpec,
    seed: int,
    fs: Any,
    mixture: Mixture | None = None,
    teacher_columns: tuple[tuple[int, str], ...] = (),
) -> Iterator[dict[str, np.ndarray]]:
    """Read, decode and augment the row groups in ``batch`` (or, with a ``mixture``, the units its slots draw this
    epoch); yield batches of :data:`MAP_BATCH` rows. ``teacher_columns``: (teacher index, precomputed teacher
    name) pairs whose shard columns are read and augmented with the image (``teacher{i}_*`` columns)."""
    import torch

    torch.set_num_threads(1)  # one process per task slot; intra-op threads only oversubscribe the cores
    epoch = data_execution_index()  # the dataset's execution index: 0, 1, 2, ... one per full iteration
    if mixture is not None:
        drawn = mixture.schedule(seed, epoch)
        units = [mixture.units[drawn[int(slot)]] for slot in batch["slot"]]
        pairs = [(u["path"], u["row_group"], mixture.filesystems[u["source"]]) for u in units]
    else:
        pairs = [(p, g, fs) for p, g in zip(batch["path"], batch["row_group"])]
    extra = tuple(column_name(name) for _, name in teacher_columns)
    for path, group, unit_fs in pairs:
        rows = read_row_group(unit_fs, str(path), int(group), extra)
        for start in range(0, len(rows["key"]), MAP_BATCH):
            out = []
            for i in range(start, min(start + MAP_BATCH, len(rows["key"]))):
                key = rows["key"][i]
                image = decode_image(rows["image"][i], f"{path} row {key}")
                depth = _row_depth(rows, i, f"{path} row {key}")
                h, w = rows["height"][i], rows["width"][i]
                where = f"{path} row {key}"
                maps = {t: decode_map(rows[c][i], h, w, where) for (t, _), c in zip(teacher_columns, extra)}
                rng = sample_rng(seed, epoch, key)
                out.append(augment_sample(image, depth, spec, rng, uint8_images=True, teachers=maps or None))
            result = {name: np.stack([r[name] for r in out]) for name in out[0] if name != "index"}
            result["index"] = np.asarray(rows["index"][start : start + len(out)], dtype=np.int64)
            yield result


@dataclass(frozen=True)
class Mixture:
    """Several shard sets sampled by weight (``data.train_sources``), as a fixed number of unit slots per epoch.

    ``counts[s]`` = the number of row groups source ``s`` contributes to every epoch: round(total rows of all
    sources x normalised weight / mean rows per row group of ``s``), at least 1; the epoch has sum(counts) slots.
    :meth:`schedule` draws which unit fills each slot, a pure function of (seed, epoch): each source's units in a
    fresh permutation (repeated as often as its count needs: a small labeled set mixed into a large unlabeled one is
    seen several times per epoch, a large one partly), then all slots shuffled together.
    """

    units: tuple[dict[str, Any], ...]  # {"source", "path", "row_group", "rows"}
    counts: tuple[int, ...]
    filesystems: tuple[Any, ...]

    @classmethod
    def build(cls, sources: list[tuple[dict, list[str], Any, float]]) -> Mixture:
        """``sources``: (manifest, shard paths, filesystem, weight) per shard set."""
        units, per_source, filesystems = [], [], []
        for s, (manifest, files, fs, _weight) in enumerate(sources):
            own = [{**u, "source": s} for u in row_groups(manifest, files)]
            units += own
            per_source.append(own)
            filesystems.append(fs)
        total_rows = sum(u["rows"] for u in units)
        weight_sum = sum(src[3] for src in sources)
        counts = []
        for own, src in zip(per_source, sources):
            mean_rows = sum(u["rows"] for u in own) / len(own)
            counts.append(max(1, round(total_rows * src[3] / weight_sum / mean_rows)))
        return cls(tuple(units), tuple(counts), tuple(filesystems))

    @property
    def num_slots(self) -> int:
        return sum(self.counts)

    def schedule(self, seed: int, epoch: int) -> np.ndarray:
        """Unit index (into :attr:`units`) of every slot of ``epoch``."""
        rng = np.random.default_rng([int(seed), int(epoch), 0x6D6978])
        drawn, first = [], 0
        for s, count in enumerate(self.counts):
            own = sum(1 for u in self.units if u["source"] == s)
            laps = -(-count // own)
            order = np.concatenate([rng.permutation(own) for _ in range(laps)])[:count]
            drawn.append(first + order)
            first += own
        return rng.permutation(np.concatenate(drawn))


def _units_dataset(units: list[dict[str, Any]]):
    import ray.data

    return ray.data.from_items(
        [{"path": u["path"], "row_group": u["row_group"]} for u in units], override_num_blocks=len(units)
    )


def train_dataset(cfg, split: str | None = None, *, seed: int = 0, first_epoch: int = 0, teacher_columns: tuple = ()):
    """The training ``ray.data.Dataset`` of ``cfg.root/<split>``, or without ``split`` of ``cfg.training_sources``
    (``data.train_sources`` mixed by weight, see :class:`Mixture`; else ``cfg.root/cfg.train_split``); see the
    module docstring. Depth-less (unlabeled) rows carry all-zero depth and all-False masks.
    Its first execution is epoch ``first_epoch`` (a run resumed at that epoch: same block order and augmentations
    as the uninterrupted run's). ``teacher_columns``: (teacher index, name) of the precomputed teachers, whose
    shard columns are augmented with the image into ``teacher{i}_crop`` / ``_crop_mask`` / ``_local`` /
    ``_local_mask`` (see :func:`~dad_ray.data.augment.augment_sample`).

    What the trainer sees are :func:`train_batches`' batches (B leading): ``crop_image`` float32 (B, 3, C, C)
    ImageNet-normalised, ``crop_depth`` float32 (B, C, C) metres (0 invalid), ``crop_mask`` bool (B, C, C);
    ``global_image`` (B, 3, Gh, Gw), ``global_depth``, ``global_mask`` (B, Gh, Gw); ``local_images``
    (B, N, 3, P, P), ``local_depth``, ``local_mask`` (B, N, P, P), ``local_boxes`` (B, N, 4) normalised
    (y0, x0, y1, x1) of the global view; C = crop_size, (Gh, Gw) = global_size, P = local_patch_size, N = rows *
    cols of local_grid; ``index`` int64 (the sample's position in its split).

    The dataset's own rows carry the three image columns as uint8 (the same [0, 1] values rounded: 4x fewer bytes
    to move and shuffle, measured ~15 % of the pipeline's cost on 2 cores); :func:`train_batches` turns them into
    float32 ImageNet-normalised tensors on the target device. Rows come in a deterministic order for a given seed
    and epoch (``preserve_order``); with several Train workers, which worker gets which rows depends on timing, but
    each row's augmentation does not.
    """
    import ray.data
    from ray.data import RandomSeedConfig

    configure_data_context(cfg)
    sources = [(src.root, src.split, src.weight) for src in cfg.training_sources] if split is None else []
    kwargs: dict[str, Any] = {"spec": AugmentSpec.from_config(cfg), "seed": seed, "fs": None}
    kwargs["teacher_columns"] = tuple((int(i), str(name)) for i, name in teacher_columns)
    if len(sources) > 1:
        kwargs["mixture"] = mixture = Mixture.build([(*shard_files(r, s), w) for r, s, w in sources])
        slots = [{"slot": i} for i in range(mixture.num_slots)]
        units = ray.data.from_items(slots, override_num_blocks=len(slots))
        logger.info(
            "training mixture: %s -> row groups per epoch %s",
            ", ".join(f"{r}/{s} (weight {w:g})" for r, s, w in sources), list(mixture.counts),
        )  # fmt: skip
    else:
        root, name = (sources[0][0], sources[0][1]) if sources else (cfg.root, split)
        manifest, files, kwargs["fs"] = shard_files(root, name)
        units = _units_dataset(row_groups(manifest, files))
        units = units.randomize_block_order(seed=RandomSeedConfig(seed=seed, reseed_after_execution=True))
    ds = units.map_batches(_train_units, fn_kwargs=kwargs, batch_size=1, num_cpus=cfg.data_cpus, batch_format="numpy")
    ds.context.execution_options.preserve_order = True
    relax_data_reservations(ds.context)  # kept by Ray Train, which only replaces execution_options
    start_data_execution_index(ds.context, first_epoch)
    return ds


def train_batches(
    dataset_shard, cfg, epoch: int, *, seed: int = 0, batch_size: int | None = None, device: Any = "auto"
) -> Iterator[dict[str, Any]]:
    """One epoch of ``dict[str, torch.Tensor]`` batches from a dataset (or a Train worker's dataset shard).

    Batches of ``batch_size`` (default ``cfg.batch_size``) rows, the last partial one dropped, rows shuffled in a
    local buffer of ``cfg.shuffle_buffer`` rows seeded by ``seed`` and ``epoch`` (0 = no shuffle); image columns
    normalised to float32 on ``device`` (see :func:`train_dataset`). Call once per epoch: every call re-runs the
    pipeline (new block order, new augmentations).
    """
    size = batch_size if batch_size is not None else cfg.batch_size
    if not isinstance(size, int):
        raise ValueError(f"train_batches needs an integer batch size (got {size!r}; resolve 'auto' first)")
    shuffle = cfg.shuffle_buffer > 0
    batches = dataset_shard.iter_torch_batches(
        batch_size=size,
        prefetch_batches=cfg.prefetch_batches,
        drop_last=True,
        local_shuffle_buffer_size=cfg.shuffle_buffer if shuffle else None,
        local_shuffle_seed=(seed * 1_000_003 + epoch) if shuffle else None,
        device=device,
    )
    for batch in batches:
        for name in IMAGE_COLUMNS:
            batch[name] = normalize_uint8(batch[name])
        yield batch


def _eval_units(batch: dict[str, np.ndarray], input_size: int, keys: bool, fs: Any) -> Iterator[dict[str, Any]]:
    import torch

    torch.set_num_threads(1)
    for path, group in zip(batch["path"], batch["row_group"]):
        rows = read_row_group(fs, str(path), int(group))
        for start in range(0, len(rows["key"]), MAP_BATCH):
            stop = min(start + MAP_BATCH, len(rows["key"]))
            out: dict[str, list] = {"image": [], "depth": [], "rgb": []}
            for i in range(start, stop):
                key = rows["key"][i]
                rgb = decode_image(rows["image"][i], f"{path} row {key}")
                out["rgb"].append(rgb)
                depth = decode_depth(rows["depth"][i], rows["height"][i], rows["width"][i], f"{path} row {key}")
                out["depth"].append(depth.copy())
                out["image"].append(eval_image(rgb, input_size))
            result: dict[str, Any] = {"index": np.asarray(rows["index"][start:stop], dtype=np.int64)}
            if keys:
                result["key"] = np.asarray(rows["key"][start:stop], dtype=object)
            for name, arrays in out.items():
                same = all(a.shape == arrays[0].shape for a in arrays)
                result[name] = np.stack(arrays) if same else arrays
            yield result


def eval_dataset(
    cfg, split: str | None = None, *, root: str | None = None, input_size: int, max_samples: int = 0, keys: bool = False
):
    """The evaluation ``ray.data.Dataset`` of ``<root>/<split>`` (defaults: the validation set, ``cfg.val_root`` or
    ``cfg.root``, and ``cfg.val_split``), in shard order. The shards must carry depth.

    Columns: ``image`` float32 (3, h, w) ImageNet-normalised at DAv2's eval size (short side ``input_size``, both
    sides multiples of 14, :func:`~dad_ray.data.augment.eval_size`), ``depth`` float32 (H0, W0) ground truth
    (0 invalid), ``rgb`` uint8 (H0, W0, 3), ``index`` int64 (position in the split, 0-based) and, with ``keys``, the
    string ``key`` of each sample. ``key`` is opt-in because ``iter_torch_batches`` cannot convert strings (use
    ``iter_batches`` when asking for it). ``max_samples`` > 0 keeps the first ``max_samples`` rows.
    """
    configure_data_context(cfg)
    root = root or cfg.val_root or cfg.root
    manifest, files, fs = shard_files(root, split or cfg.val_split)
    if not has_depth(manifest):
        raise DataError(f"{storage.join(root, split or cfg.val_split)}: depth-less shards cannot be evaluated")
    units = row_groups(manifest, files)
    if max_samples > 0:  # only the row groups that hold the first max_samples rows
        covered = np.cumsum([u["rows"] for u in units])
        units = units[: int(np.searchsorted(covered, max_samples)) + 1]
    ds = _units_dataset(units).map_batches(
        _eval_units,
        fn_kwargs={"input_size": input_size, "keys": keys, "fs": fs},
        batch_size=1,
        num_cpus=cfg.data_cpus,
        batch_format="numpy",
    )
    if max_samples > 0:
        ds = ds.limit(max_samples)
    ds.context.execution_options.preserve_order = True
    return ds
