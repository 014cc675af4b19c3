"""The model registry: ``dav2_<encoder>`` names for the rows of :data:`dad_ray.models.spec.ENCODERS`."""

from __future__ import annotations

import dataclasses
import logging

from dad_ray.models.depth_anything import DepthAnythingV2
from dad_ray.models.spec import ENCODERS, ModelSpec

logger = logging.getLogger(__name__)


PREFIX = "dav2_"


def list_models() -> list[str]:
    """Registry names, e.g. ``["dav2_vits", ..., "dav2_micro"]``."""
    return [PREFIX + encoder for encoder in ENCODERS]


def get_spec(name: str, **overrides) -> ModelSpec:
    """The :class:`ModelSpec` of a registry name, with fields replaced by ``overrides``."""
    if not name.startswith(PREFIX) or name[len(PREFIX) :] not in ENCODERS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    spec = ENCODERS[name[len(PREFIX) :]]
    fields = {f.name for f in dataclasses.fields(ModelSpec)} - {"encoder"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"{name}: unknown override(s) {unknown}; valid: {sorted(fields)}")
    for key in ("out_channels", "layers"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    return dataclasses.replace(spec, **overrides)


def create_model(name: str, **overrides) -> DepthAnythingV2:
    """Build a registry model with random weights, e.g. ``create_model("dav2_vitl")``.

    ``overrides`` replace fields of the table row (e.g. ``depth=6``); build under ``torch.device("meta")`` to count
    parameters without allocating them.
    """
    spec = get_spec(name, **overrides)
    model = DepthAnythingV2(spec, name=name)
    logger.debug("created %s (%s)", name, spec)
    return model
