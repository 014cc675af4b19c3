"""The zero-shot evaluation protocols (valid range and crop per data set) and :func:`evaluate_disparity`.

A protocol's crop is given in pixels of its reference size, as (top, bottom, left, right) half-open bounds. Ground
truth of another size (e.g. our 240×320 synthetic NYU-like scenes) gets the box scaled proportionally, each bound
rounded half up: bound · size / reference_size. The valid range is open: min_depth < gt < max_depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from dad_ray.data.resize import resize_prediction
from dad_ray.losses import disparity_target
from dad_ray.metrics.depth import fit_scale_shift, per_image_metrics

Alignment = Literal["disparity", "depth"]
ALIGNMENTS = ("disparity", "depth")
DISPARITY_FLOOR = 1e-3  # aligned disparity floor when the protocol has no finite max_depth


@dataclass(frozen=True)
class EvalProtocol:
    name: str
    min_depth: float
    max_depth: float  # math.inf = no cap
    crop: tuple[int, int, int, int] | None = None  # (top, bottom, left, right) in pixels of reference_size
    reference_size: tuple[int, int] | None = None  # (H, W) the crop is given for

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """The crop scaled to (height, width): (top, bottom, left, right), or None for no crop."""
        if self.crop is None:
            return None
        rh, rw = self.reference_size
        top, bottom, left, right = self.crop

        def scale(v: int, size: int, ref: int) -> int:
            return int(math.floor(v * size / ref + 0.5))

        return scale(top, height, rh), scale(bottom, height, rh), scale(left, width, rw), scale(right, width, rw)

    def valid_mask(self, gt_depth: torch.Tensor) -> torch.Tensor:
        """gt_depth (B, H, W) → (B, H, W) bool: finite, inside (min_depth, max_depth), inside the crop."""
        valid = torch.isfinite(gt_depth) & (gt_depth > self.min_depth) & (gt_depth < self.max_depth)
        box = self.crop_box(*gt_depth.shape[-2:])
        if box is not None:
            top, bottom, left, right = box
            crop = torch.zeros_like(valid)
            crop[..., top:bottom, left:right] = True
            valid = valid & crop
        return valid


def _kitti_crop(fractions: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """A KITTI crop box on the 352×1216 benchmark crop: ``int(fraction · size)`` per bound, as BTS, AdaBins and
    Marigold's ``kitti_benchmark_crop`` evaluation compute it."""
    top, bottom, left, right = fractions
    return int(top * 352), int(bottom * 352), int(left * 1216), int(right * 1216)


GARG_FRACTIONS = (0.40810811, 0.99189189, 0.03594771, 0.96405229)  # Garg et al. (ECCV 2016)
EIGEN_FRACTIONS = (0.3324324, 0.91351351, 0.03594771, 0.96405229)  # Eigen et al. (NeurIPS 2014)

PROTOCOLS: dict[str, EvalProtocol] = {
    # NYU Depth V2 official test split: Eigen crop rows 45:471, cols 41:601 of 480×640, 1e-3 < gt < 10 m
    "nyu": EvalProtocol("nyu", 1e-3, 10.0, (45, 471, 41, 601), (480, 640)),
    # KITTI Eigen test on the 352×1216 benchmark crop, 1e-5 < gt < 80 m, Eigen crop: what Marigold's and
    # Distill-Any-Depth's evaluation configs use (eigen_valid_mask); kitti_garg is the Garg-crop variant
    "kitti": EvalProtocol("kitti", 1e-5, 80.0, _kitti_crop(EIGEN_FRACTIONS), (352, 1216)),
    "kitti_garg": EvalProtocol("kitti_garg", 1e-5, 80.0, _kitti_crop(GARG_FRACTIONS), (352, 1216)),
    "diode": EvalProtocol("diode", 0.6, 350.0),  # DIODE val (indoor + outdoor), 0.6 < gt < 350 m
    "eth3d": EvalProtocol("eth3d", 1e-5, math.inf),  # ETH3D, no cap
    "scannet": EvalProtocol("scannet", 1e-3, 10.0),  # ScanNet, 1e-3 < gt < 10 m
}
PAPER_ORDER = ("nyu", "kitti", "diode", "scannet", "eth3d")  # the columns of the paper's Table 5


def get_protocol(protocol: str | EvalProtocol) -> EvalProtocol:
    if isinstance(protocol, EvalProtocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; available: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[protocol]


def aligned_depth(
    pred: torch.Tensor, gt_depth: torch.Tensor, valid: torch.Tensor, protocol: EvalProtocol, alignment: Alignment
) -> torch.Tensor:
    """Least-squares-aligned metric depth (B, H, W) float64 from a prediction at gt resolution.

    ``disparity`` (Depth Anything models: the prediction is affine-invariant disparity): fit s, t of s·pred + t to
    1/gt (:func:`~dad_ray.losses.disparity_target`) on the valid pixels whose prediction is > 0 — as Marigold's
    evaluation does, so that a ReLU's zeros (the sky of KITTI, DIODE or ETH3D) do not pull the fit; those pixels still
    count in the metrics — then depth = 1 / max(s·pred + t, 1/max_depth) (floor 1e-3 when there is no cap).
    ``depth`` (models whose output is affine-invariant depth, which may be ≤ 0 before the shift): fit s, t to gt
    directly over every valid pixel, as Marigold does in depth space. Either way the depth is then clipped to
    [min_depth, max_depth] (no upper clip without a cap).
    """
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    gt = gt_depth.double()
    if alignment == "disparity":
        target, valid = disparity_target(gt, valid)
        s, t = fit_scale_shift(pred, target, valid & (pred > 0))
        disp = s.view(-1, 1, 1) * pred.double() + t.view(-1, 1, 1)
        floor = 1.0 / protocol.max_depth if math.isfinite(protocol.max_depth) else DISPARITY_FLOOR
        depth = 1.0 / disp.clamp_min(floor)
    else:
        s, t = fit_scale_shift(pred, gt, valid)
        depth = s.view(-1, 1, 1) * pred.double() + t.view(-1, 1, 1)
    return depth.clamp(min=protocol.min_depth, max=protocol.max_depth if math.isfinite(protocol.max_depth) else None)


def evaluate_disparity(
    pred_disp: torch.Tensor,
    gt_depth: torch.Tensor,
    protocol: str | EvalProtocol = "nyu",
    alignment: Alignment = "disparity",
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """pred_disp (B, H, W) at gt resolution, gt_depth (B, H, W) metres (0 = missing) → (per-image metrics (B,) each,
    valid (B,) bool): protocol mask → per-image least-squares alignment in ``alignment`` space → metrics.
    Images with no valid pixel come back with valid False (count them; see MetricAccumulator)."""
    if pred_disp.shape != gt_depth.shape or pred_disp.ndim != 3:
        raise ValueError(
            f"pred_disp {tuple(pred_disp.shape)} and gt_depth {tuple(gt_depth.shape)} must be one (B, H, W) shape "
            "(resize the prediction to the ground truth first)"
        )
    proto = get_protocol(protocol)
    valid = proto.valid_mask(gt_depth)
    depth = aligned_depth(pred_disp.float(), gt_depth, valid, proto, alignment)
    return per_image_metrics(depth, gt_depth.double(), valid)


def evaluate_prediction(
    pred: torch.Tensor,
    gt_depth: torch.Tensor,
    protocol: str | EvalProtocol = "nyu",
    alignment: Alignment = "disparity",
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """pred (B, h, w) at the network's input size → upsampled to the ground truth by the one evaluation resize
    (:func:`~dad_ray.data.resize.resize_prediction`, as :func:`~dad_ray.models.predict_disparity` does) →
    :func:`evaluate_disparity`. Training validation calls this, so its metrics equal the final evaluation's."""
    return evaluate_disparity(resize_prediction(pred, tuple(gt_depth.shape[-2:])), gt_depth, protocol, alignment)
