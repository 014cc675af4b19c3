"""The model registry: ``dav2_<encoder>`` names for the rows of :data:`dad_ray.models.spec.ENCODERS`, and
``timm:<name>`` students on any timm backbone (:mod:`dad_ray.models.timm_student`; :data:`ZOO` lists recommended
ones)."""

from __future__ import annotations

import dataclasses
import logging

from dad_ray.models.depth_anything import DepthAnythingV2
from dad_ray.models.spec import ENCODERS, ModelSpec
from dad_ray.models.timm_student import TIMM_PREFIX, ZOO, TimmDepthModel, create_timm_student
from dad_ray.models.weights import load_weights

logger = logging.getLogger(__name__)


PREFIX = "dav2_"


def list_models() -> list[str]:
    """Registry names, e.g. ``["dav2_vits", ..., "dav2_micro"]`` (timm students: :func:`list_zoo`)."""
    return [PREFIX + encoder for encoder in ENCODERS]


def list_zoo() -> list[str]:
    """Recommended ``timm:<name>`` students, smallest first; any timm model with ``forward_intermediates`` works."""
    return list(ZOO)


def is_model(name: str) -> bool:
    """Whether ``name`` is a registry model: a ``dav2_*`` name, or ``timm:<name>`` of a model timm knows (without
    building it: a timm model without multi-scale features fails when built)."""
    if name.startswith(TIMM_PREFIX):
        import timm

        return timm.is_model(name[len(TIMM_PREFIX) :])
    return name in list_models()


def unknown_model_message(name: str) -> str:
    """The error text for a name :func:`is_model` rejects (lists what is available)."""
    return (
        f"unknown model '{name}'; available: {', '.join(list_models())}, or 'timm:<timm model name>' "
        f"(e.g. {', '.join(ZOO)})"
    )


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


def create_model(name: str, pretrained: str | None = None, **overrides) -> DepthAnythingV2 | TimmDepthModel:
    """Build a registry model, e.g. ``create_model("dav2_vitl")`` or ``"timm:convnext_atto"``: random weights, or
    with ``pretrained`` the weights of that checkpoint, loaded strictly by :func:`~dad_ray.models.load_weights`
    (any layout it reads; a local path or ``hf://org/repo/file`` from the local Hugging Face cache).

    ``overrides`` replace fields of the table row (e.g. ``depth=6``), or, for ``timm:`` names, set the head width
    (``features``), CNN input padding (``pad_input``) and ``pretrained_backbone`` (timm's weights from the local
    Hugging Face cache only); build under ``torch.device("meta")`` to count parameters without allocating them.
    """
    if name.startswith(TIMM_PREFIX):
        model = create_timm_student(name, **overrides)
        logger.debug("created %s (%d levels, stride %d)", name, len(model.indices), model.feature_stride)
    else:
        spec = get_spec(name, **overrides)
        model = DepthAnythingV2(spec, name=name)
        logger.debug("created %s (%s)", name, spec)
    if pretrained:
        load_weights(model, pretrained)
    return model
