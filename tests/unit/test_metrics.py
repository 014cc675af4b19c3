"""Alignment, depth metrics, the exact accumulator (incl. a 2-process gloo all-reduce), and the protocols."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dad_ray.metrics import (
    METRIC_KEYS,
    PAPER_ORDER,
    PROTOCOLS,
    EvalProtocol,
    MetricAccumulator,
    align_scale_shift,
    aligned_depth,
    depth_metrics,
    evaluate_disparity,
    fit_scale_shift,
    per_image_metrics,
)


def test_alignment_recovers_scale_and_shift():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(3, 6, 7, generator=g)
    target = torch.stack([3.0 * pred[0] - 2.0, 0.5 * pred[1] + 4.0, -pred[2]])
    mask = torch.rand(3, 6, 7, generator=g) > 0.3
    target_bad = torch.where(mask, target, torch.full_like(target, 1e9))  # masked pixels do not count
    s, t = fit_scale_shift(pred, target_bad, mask)
    torch.testing.assert_close(s, torch.tensor([3.0, 0.5, -1.0], dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(t, torch.tensor([-2.0, 4.0, 0.0], dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        align_scale_shift(pred, target_bad, mask)[mask], target[mask].double(), atol=1e-6, rtol=0
    )


def test_alignment_least_squares_by_hand_and_degenerate():
    pred = torch.tensor([[[0.0, 1.0, 2.0]], [[5.0, 5.0, 5.0]], [[1.0, 2.0, 3.0]]])
    target = torch.tensor([[[1.0, 1.0, 4.0]], [[1.0, 2.0, 6.0]], [[7.0, 7.0, 7.0]]])
    mask = torch.tensor([[[True, True, True]], [[True, True, True]], [[False, False, False]]])
    s, t = fit_scale_shift(pred, target, mask)
    # image 0: x̄ = 1, ȳ = 2, Σ(x−x̄)(y−ȳ) = 3, Σ(x−x̄)² = 2 → s = 1.5, t = 0.5
    assert (s[0].item(), t[0].item()) == pytest.approx((1.5, 0.5))
    # image 1: constant prediction → s = 1, t = mean(target − pred) = 3 − 5; image 2: nothing valid → s = 1, t = 0
    assert (s[1].item(), t[1].item()) == pytest.approx((1.0, -2.0))
    assert (s[2].item(), t[2].item()) == (1.0, 0.0)


def test_metrics_hand_values():
    pred = torch.tensor([[[1.0, 1.5]], [[2.0, 2.0]]])
    gt = torch.tensor([[[1.0, 1.0]], [[2.0, 2.0]]])
    mask = torch.ones_like(gt, dtype=torch.bool)
    per, valid = per_image_metrics(pred, gt, mask)
    assert valid.tolist() == [True, True]
    l15 = math.log(1.5)
    expected0 = {
        "abs_rel": 0.25,
        "sq_rel": 0.125,
        "rmse": math.sqrt(0.125),
        "rmse_log": l15 / math.sqrt(2),
        "log10": math.log10(1.5) / 2,
        "silog": 100 * math.sqrt(l15**2 / 2 - (l15 / 2) ** 2),  # = 100·ln1.5 / 2
        "d1": 0.5,
        "d2": 1.0,
        "d3": 1.0,
    }
    for k, v in expected0.items():
        assert per[k][0].item() == pytest.approx(v, rel=1e-9), k
        assert per[k][1].item() == pytest.approx(1.0 if k.startswith("d") else 0.0, abs=1e-12), k
    mean = depth_metrics(pred, gt, mask)
    for k, v in expected0.items():  # mean over images, not over pixels
        assert mean[k] == pytest.approx((v + (1.0 if k.startswith("d") else 0.0)) / 2, rel=1e-9), k
    assert mean["n_images"] == 2 and mean["n_invalid"] == 0


def test_metrics_ignore_masked_and_count_invalid():
    pred = torch.tensor([[[1.0, 1.5, 99.0]], [[1.0, 1.0, 1.0]]])
    gt = torch.tensor([[[1.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]]])
    mask = torch.tensor([[[True, True, True]], [[True, True, True]]])
    per, valid = per_image_metrics(pred, gt, mask)
    assert valid.tolist() == [True, False]
    assert per["abs_rel"].tolist() == [0.25, 0.0]
    out = depth_metrics(pred, gt, mask)
    assert out["abs_rel"] == 0.25 and out["n_images"] == 2 and out["n_invalid"] == 1
    empty = depth_metrics(pred[1:], gt[1:], mask[1:])
    assert math.isnan(empty["abs_rel"]) and empty["n_invalid"] == 1


def _random_batch(b=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(b, 8, 8, generator=g) * 5 + 0.5
    pred = gt * (1 + 0.2 * torch.randn(b, 8, 8, generator=g)).clamp_min(0.1)
    mask = torch.rand(b, 8, 8, generator=g) > 0.3
    mask[2] = False
    return pred, gt, mask


def test_accumulator_split_equals_all_at_once():
    pred, gt, mask = _random_batch()
    whole = depth_metrics(pred, gt, mask)
    acc = MetricAccumulator()
    for sl in (slice(0, 1), slice(1, 4), slice(4, 6)):
        acc.add(*per_image_metrics(pred[sl], gt[sl], mask[sl]))
    split = acc.compute()
    assert split["n_images"] == 6 and split["n_invalid"] == 1
    for k in METRIC_KEYS:
        assert split[k] == pytest.approx(whole[k], rel=1e-12)
    a, b = MetricAccumulator(), MetricAccumulator()
    a.add(*per_image_metrics(pred[:3], gt[:3], mask[:3]))
    b.add(*per_image_metrics(pred[3:], gt[3:], mask[3:]))
    merged = a.merge(b).compute()
    assert merged == pytest.approx(whole)
    with pytest.raises(KeyError, match="lack"):
        acc.add({"abs_rel": torch.zeros(1)}, torch.ones(1, dtype=torch.bool))


def _reduce_worker(rank: int, world: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        pred, gt, mask = _random_batch()
        sl = slice(0, 1) if rank == 0 else slice(1, 6)  # unequal parts: a mean of means would differ
        acc = MetricAccumulator()
        acc.add(*per_image_metrics(pred[sl], gt[sl], mask[sl]))
        acc.reduce()
        results[rank] = acc.compute()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns a two-process gloo group (two fresh torch imports); the merge itself is tested above
def test_accumulator_all_reduce_is_exact(tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_reduce_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
        results = dict(results)
    pred, gt, mask = _random_batch()
    whole = depth_metrics(pred, gt, mask)
    for rank in (0, 1):
        assert results[rank] == pytest.approx(whole, rel=1e-12)


def test_protocol_masks():
    nyu = PROTOCOLS["nyu"]
    gt = torch.full((1, 480, 640), 5.0)
    valid = nyu.valid_mask(gt)
    assert valid.sum() == (471 - 45) * (601 - 41)
    assert valid[0, 45, 41] and not valid[0, 44, 41] and not valid[0, 471, 100] and not valid[0, 100, 601]
    assert nyu.crop_box(240, 320) == (23, 236, 21, 301)  # 22.5 → 23, 235.5 → 236, 20.5 → 21, 300.5 → 301 (half up)
    gt[0, 100, 100], gt[0, 101, 100], gt[0, 102, 100] = 10.0, 1e-3, float("nan")  # range is open: 1e-3 < gt < 10
    assert not nyu.valid_mask(gt)[0, 100:103, 100].any()
    # KITTI on the 352×1216 benchmark crop: Eigen (the default, as Marigold's and Distill-Any-Depth's configs) and
    # Garg, int(fraction · size): Eigen 0.3324324·352 = 117.0, 0.91351351·352 = 321.6, 0.03594771·1216 = 43.7,
    # 0.96405229·1216 = 1172.3; Garg 0.40810811·352 = 143.7, 0.99189189·352 = 349.1
    assert PROTOCOLS["kitti"].crop_box(352, 1216) == (117, 321, 43, 1172)
    assert PROTOCOLS["kitti_garg"].crop_box(352, 1216) == (143, 349, 43, 1172)
    gt = torch.full((1, 352, 1216), 40.0)
    gt[0, 200, 500], gt[0, 201, 500], gt[0, 202, 500] = 1e-5, 2e-5, 80.0  # range: 1e-5 < gt < 80 m
    kitti = PROTOCOLS["kitti"].valid_mask(gt)
    assert kitti.sum() == (321 - 117) * (1172 - 43) - 2
    assert kitti[0, 117, 43] and not kitti[0, 116, 43] and not kitti[0, 321, 43] and kitti[0, 201, 500]
    assert PROTOCOLS["kitti_garg"].valid_mask(gt).sum() == (349 - 143) * (1172 - 43) - 2
    assert PROTOCOLS["diode"].valid_mask(torch.tensor([[[0.5, 0.7, 349.0, 351.0]]])).tolist() == [
        [[False, True, True, False]]
    ]
    assert PROTOCOLS["eth3d"].valid_mask(torch.tensor([[[0.5, 1e4]]])).all()
    assert PROTOCOLS["eth3d"].valid_mask(torch.tensor([[[1e-5, 2e-5, math.inf]]])).tolist() == [[[False, True, False]]]
    scannet = PROTOCOLS["scannet"].valid_mask(torch.tensor([[[1e-3, 2e-3, 9.9, 10.0]]]))
    assert scannet.tolist() == [[[False, True, True, False]]]


def test_protocol_names_agree_with_the_config():
    import typing

    from dad_ray.config import build_config
    from dad_ray.config.schema import ProtocolName

    assert set(typing.get_args(ProtocolName)) == set(PROTOCOLS) == set(PAPER_ORDER) | {"kitti_garg"}
    for name in PROTOCOLS:
        assert build_config(None, overrides={"eval.protocol": name}).eval.protocol == name


def test_disparity_fit_leaves_out_nonpositive_predictions():
    """A 'sky' of ReLU zeros must not move the fit: the other pixels are exactly affine in disparity, so they align
    exactly, and the sky's pixels (still in the metrics) get s·0 + t."""
    gt = torch.tensor([[[1.0, 2.0, 4.0, 5.0, 5.0]]])  # the last two pixels: far ground truth, prediction 0 (sky)
    pred = torch.tensor([[[2.0, 1.0, 0.5, 0.0, 0.0]]])  # 2/gt on the first three → s = 0.5, t = 0
    proto = EvalProtocol("t", 1e-3, 10.0)
    depth = aligned_depth(pred, gt, proto.valid_mask(gt), proto, "disparity")
    # s·0 + t = 0 → floored at 1/max_depth = 0.1 → depth 10 → clipped to max_depth 10
    assert depth.tolist() == [[[1.0, 2.0, 4.0, 10.0, 10.0]]]
    per, valid = evaluate_disparity(pred, gt, proto, "disparity")
    assert valid.item() and per["abs_rel"].item() == pytest.approx((0 + 0 + 0 + 1.0 + 1.0) / 5)  # |10 − 5| / 5 twice
    # with the zeros in the fit, the same three pixels would not align exactly (by hand: x = (2, 1, .5, 0, 0),
    # y = (1, .5, .25, .2, .2): n = 5, Σx = 3.5, Σy = 2.15, Σx² = 5.25, Σxy = 2.625 → s = (5·2.625 − 3.5·2.15) /
    # (5·5.25 − 3.5²) = 5.6 / 14 = 0.4, t = (2.15 − 0.4·3.5) / 5 = 0.15), which is what the filter prevents
    s, t = fit_scale_shift(pred, 1.0 / gt, torch.ones_like(gt, dtype=torch.bool))
    assert (s.item(), t.item()) == pytest.approx((0.4, 0.15))
    # depth alignment keeps every valid pixel (Marigold's depth-space fit): an exact affine depth prediction with a
    # negative value still aligns exactly
    per_d, _ = evaluate_disparity(gt - 3.0, gt, proto, "depth")
    assert per_d["abs_rel"].item() == pytest.approx(0.0, abs=1e-12)


def test_evaluate_prediction_upsamples_like_predict_disparity():
    """evaluate_prediction (training validation) = resize_prediction (align_corners=True) + evaluate_disparity."""
    from dad_ray.data.resize import resize_prediction
    from dad_ray.metrics import evaluate_prediction

    low = torch.tensor([[[1.0, 3.0], [2.0, 4.0]]])
    up = resize_prediction(low, (3, 3))
    # align_corners=True keeps the corners and puts the midpoints exactly halfway
    assert up.tolist() == [[[1.0, 2.0, 3.0], [1.5, 2.5, 3.5], [2.0, 3.0, 4.0]]]
    gt = 1.0 / (0.5 * up.double() + 0.25)
    per, valid = evaluate_prediction(low, gt, EvalProtocol("t", 1e-3, 10.0), "disparity")
    assert valid.item() and per["abs_rel"].item() == pytest.approx(0.0, abs=1e-12)


def test_evaluate_disparity_recovers_exact_depth():
    g = torch.Generator().manual_seed(4)
    gt = torch.rand(3, 48, 64, generator=g) * 8 + 0.5
    gt[2] = 0.0  # no valid pixel
    pred = 2.0 / gt.clamp_min(0.1) + 0.5  # affine in disparity
    per, valid = evaluate_disparity(pred, gt, "nyu", "disparity")
    assert valid.tolist() == [True, True, False]
    assert per["abs_rel"][:2].max() < 1e-6 and per["d1"][:2].tolist() == [1.0, 1.0]
    per_d, valid_d = evaluate_disparity(3.0 * gt - 1.0, gt, "nyu", "depth")  # affine in depth
    assert valid_d.tolist() == [True, True, False] and per_d["abs_rel"][:2].max() < 1e-6
    assert per_d["abs_rel"][2] == 0.0


def test_evaluate_disparity_clips_to_range():
    gt = torch.tensor([[[1.0, 2.0, 4.0, 8.0]]])
    pred = torch.tensor([[[1.0, 0.5, 0.25, -1.0]]])  # the last pixel aligns to a negative disparity
    custom = EvalProtocol("t", 0.5, 9.0)
    per, valid = evaluate_disparity(pred, gt, custom, "disparity")
    assert valid.item() and math.isfinite(per["abs_rel"].item())
    depth = aligned_depth(pred, gt, custom.valid_mask(gt), custom, "disparity")
    # the 4th pixel aligns to a negative disparity: floored at 1 / max_depth → 9 m; everything stays in [0.5, 9]
    assert depth.min() >= 0.5 and depth.max() <= 9.0 and depth[0, 0, 3] == 9.0
    assert aligned_depth(-pred, gt, custom.valid_mask(gt), PROTOCOLS["eth3d"], "depth").min() >= 1e-3
    with pytest.raises(ValueError, match="unknown protocol 'nyu2'"):
        evaluate_disparity(pred, gt, "nyu2")
    with pytest.raises(ValueError, match="alignment"):
        evaluate_disparity(pred, gt, custom, "log")
