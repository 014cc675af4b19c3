"""Depth metrics, least-squares alignment, evaluation protocols, exact distributed accumulation."""

from dad_ray.metrics.depth import (
    LOWER_IS_BETTER,
    METRIC_KEYS,
    MetricAccumulator,
    align_scale_shift,
    depth_metrics,
    fit_scale_shift,
    per_image_metrics,
)
from dad_ray.metrics.protocol import (
    ALIGNMENTS,
    PAPER_ORDER,
    PROTOCOLS,
    EvalProtocol,
    aligned_depth,
    evaluate_disparity,
    evaluate_prediction,
    get_protocol,
)

__all__ = [
    "ALIGNMENTS",
    "LOWER_IS_BETTER",
    "METRIC_KEYS",
    "PAPER_ORDER",
    "PROTOCOLS",
    "EvalProtocol",
    "MetricAccumulator",
    "align_scale_shift",
    "aligned_depth",
    "depth_metrics",
    "evaluate_disparity",
    "evaluate_prediction",
    "fit_scale_shift",
    "get_protocol",
    "per_image_metrics",
]
