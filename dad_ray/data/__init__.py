"""The data path: sources -> Parquet shards -> Ray Data streaming pipeline with the paper's augmentations.

Public API (see each module): :func:`prepare_shards`, :func:`ensure_synthetic`, :func:`read_shards`,
:func:`train_dataset`, :func:`train_batches`, :func:`eval_dataset`, :func:`configure_data_context`,
:func:`ingest_options`,
:func:`generate_scene`, :class:`DataError`.
"""

from dad_ray.data.errors import DataError, StaleShardsError
from dad_ray.data.pipeline import configure_data_context, eval_dataset, ingest_options, train_batches, train_dataset
from dad_ray.data.prepare import ensure_synthetic, prepare_shards
from dad_ray.data.shards import read_shards
from dad_ray.data.synthetic import generate_scene

__all__ = [
    "DataError",
    "StaleShardsError",
    "configure_data_context",
    "ensure_synthetic",
    "eval_dataset",
    "generate_scene",
    "ingest_options",
    "prepare_shards",
    "read_shards",
    "train_batches",
    "train_dataset",
]
