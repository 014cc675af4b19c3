"""Paths in a config: local paths or URIs (``s3://…``), and the one place local ones are made absolute."""

from __future__ import annotations

import os
from dataclasses import replace

from dad_ray.config.schema import ExperimentConfig


def is_uri(path: str | os.PathLike) -> bool:
    """A pyarrow filesystem URI (``s3://``, ``gs://``, ``file://``…) rather than a local path (a ``pathlib.Path``
    is always local)."""
    return isinstance(path, str) and "://" in path


def absolute_path(path: str) -> str:
    """``path`` made absolute when it is a local path; URIs and the empty string unchanged."""
    return path if (not path or is_uri(path)) else os.path.abspath(path)


def with_absolute_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with its local paths (data roots, student and teacher weights, output) made absolute; URIs and empty
    paths unchanged. Ray Train workers and Tune trials run in their own working directories, so a relative path
    means nothing to them."""
    model = cfg.model
    return replace(
        cfg,
        data=replace(
            cfg.data,
            root=absolute_path(cfg.data.root),
            val_root=absolute_path(cfg.data.val_root),
            test_root=absolute_path(cfg.data.test_root),
            train_sources=tuple(replace(s, root=absolute_path(s.root)) for s in cfg.data.train_sources),
        ),
        model=replace(
            model,
            student_weights=absolute_path(model.student_weights),
            teachers=tuple(replace(t, weights=absolute_path(t.weights)) for t in model.teachers),
        ),
        train=replace(cfg.train, output=absolute_path(cfg.train.output)),
    )
