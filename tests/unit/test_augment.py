"""Augmentations: RGB and depth stay aligned, local boxes point at the right pixels, depth resizing never blends
valid with invalid pixels, DAv2's eval size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dad_ray.config.schema import DataConfig
from dad_ray.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentSpec,
    augment_sample,
    eval_image,
    eval_size,
    local_boxes_px,
    resize_depth,
    sample_rng,
)

H, W = 96, 128


def spec(**kw) -> AugmentSpec:
    base = dict(
        crop_size=56,
        min_crop=40,
        global_size=(42, 56),
        local_patch_size=28,
        local_grid=(2, 2),
        local_overlap=0.25,
        hflip=True,
        color_jitter=0.0,
    )
    base.update(kw)
    return AugmentSpec(**base)


def checkerboard(cell: int = 16, h: int = H, w: int = W):
    """The same pattern as RGB (black/white) and as depth (1 m / 3 m), plus a left-right asymmetric stripe."""
    yy, xx = np.mgrid[:h, :w]
    board = ((yy // cell + xx // cell) % 2).astype(np.float32)
    board[:, : cell // 2] = 1.0  # a white, far stripe on the left edge only: reveals a flip
    image = np.repeat((board * 255).astype(np.uint8)[..., None], 3, axis=2)
    depth = 1.0 + 2.0 * board
    return image, depth.astype(np.float32)


def denorm(x: np.ndarray) -> np.ndarray:
    """(..., 3, h, w) normalised -> gray in [0, 1]."""
    rgb = x * IMAGENET_STD[:, None, None] + IMAGENET_MEAN[:, None, None]
    return rgb.mean(axis=-3)


def test_output_shapes_and_dtypes():
    image, depth = checkerboard()
    out = augment_sample(image, depth, spec(), sample_rng(0, 0, "a"))
    assert out["crop_image"].shape == (3, 56, 56) and out["crop_image"].dtype == np.float32
    assert out["crop_depth"].shape == (56, 56) and out["crop_mask"].dtype == np.bool_
    assert out["global_image"].shape == (3, 42, 56) and out["global_depth"].shape == (42, 56)
    assert out["local_images"].shape == (4, 3, 28, 28) and out["local_depth"].shape == (4, 28, 28)
    assert out["local_boxes"].shape == (4, 4) and out["local_boxes"].dtype == np.float32


@pytest.mark.parametrize("seed", range(8))
def test_rgb_and_depth_stay_aligned(seed):
    """Checkerboard in both: after flip/crop/resize, bright RGB <=> far depth, pixel for pixel, in every view."""
    image, depth = checkerboard()
    out = augment_sample(image, depth, spec(), sample_rng(seed, 0, "board"))
    for img_key, dep_key in (("crop_image", "crop_depth"), ("global_image", "global_depth")):
        gray, dep = denorm(out[img_key]), out[dep_key]
        expected = 1.0 + 2.0 * gray  # the depth the RGB implies
        np.testing.assert_allclose(dep, expected, atol=0.02)
    gray = denorm(out["local_images"])
    np.testing.assert_allclose(out["local_depth"], 1.0 + 2.0 * gray, atol=0.02)


def test_flip_is_applied_to_both_and_happens():
    image, depth = checkerboard()
    flips = 0
    for seed in range(16):
        out = augment_sample(image, depth, spec(min_crop=10_000), sample_rng(seed, 0, "k"))
        gray = denorm(out["global_image"])
        left_white = gray[:, 0].mean() > 0.9
        right_white = gray[:, -1].mean() > 0.9
        assert left_white != right_white
        flips += right_white
        assert (out["global_depth"][:, -1].mean() > 2.9) == right_white  # depth flipped with the RGB
    assert 0 < flips < 16


def test_local_boxes_map_back_to_the_global_view():
    """Cutting the global view at local_boxes * (Gh, Gw) and resizing gives the local patch (a smooth image, so the
    two resampling paths agree closely)."""
    yy, xx = np.mgrid[:H, :W].astype(np.float32)
    image = np.stack([xx / W * 255, yy / H * 255, (xx + yy) / (H + W) * 255], axis=-1).astype(np.uint8)
    depth = (1.0 + xx / W + 2 * yy / H).astype(np.float32)
    gh, gw = 84, 112  # exact 7/8 scale of the source: boxes land on whole global pixels
    out = augment_sample(image, depth, spec(global_size=(gh, gw), hflip=False), sample_rng(0, 0, "k"))
    glob = torch.from_numpy(out["global_depth"])
    for n, (y0, x0, y1, x1) in enumerate(out["local_boxes"]):
        assert 0.0 <= y0 < y1 <= 1.0 and 0.0 <= x0 < x1 <= 1.0
        cut = glob[round(y0 * gh) : round(y1 * gh), round(x0 * gw) : round(x1 * gw)]
        resized = torch.nn.functional.interpolate(cut[None, None], size=(28, 28), mode="bilinear", antialias=True)
        np.testing.assert_allclose(resized[0, 0].numpy(), out["local_depth"][n], atol=0.03)
        # and the depth at the patch's centre is the source depth at the box centre
        cy, cx = (y0 + y1) / 2 * H, (x0 + x1) / 2 * W
        assert abs(out["local_depth"][n][14, 14] - (1.0 + cx / W + 2 * cy / H)) < 0.05


def test_local_grid_covers_image_with_overlap():
    boxes = local_boxes_px(240, 320, (2, 2), 0.25)
    side = boxes[0, 2] - boxes[0, 0]
    assert (boxes[:, 2] - boxes[:, 0] == side).all() and (boxes[:, 3] - boxes[:, 1] == side).all()  # square
    assert boxes[:, 0].min() == 0 and boxes[:, 2].max() == 240 and boxes[:, 1].min() == 0 and boxes[:, 3].max() == 320
    overlap_x = (boxes[0, 3] - boxes[1, 1]) / side
    overlap_y = (boxes[0, 2] - boxes[2, 0]) / side
    assert overlap_x >= 0.25 - 1e-6 and overlap_y >= 0.25 - 1e-6
    assert len(local_boxes_px(240, 320, (3, 2), 0.1)) == 6


def test_resize_depth_never_blends_valid_with_invalid():
    depth = torch.full((8, 8), 5.0)
    depth[:, :4] = 0.0  # left half invalid
    out, valid = resize_depth(depth, depth > 0, (4, 4))
    assert (out[valid] == 5.0).all()  # no value between 0 and 5
    assert (out[~valid] == 0).all()
    assert valid[:, 2:].all() and not valid[:, :2].any()
    up, up_valid = resize_depth(depth, depth > 0, (16, 16))
    assert torch.allclose(up[up_valid], torch.tensor(5.0))


def test_crop_side_range_and_position():
    """A depth ramp (depth = 1 + x / 100 in source pixels) reveals the crop's side and left edge."""
    xx = np.tile(np.arange(W, dtype=np.float32), (H, 1))
    depth = 1.0 + xx / 100.0
    image = np.zeros((H, W, 3), np.uint8)
    sides = []
    for seed in range(12):
        out = augment_sample(image, depth, spec(min_crop=40, hflip=False), sample_rng(seed, 0, "x"))
        row = out["crop_depth"].mean(axis=0)
        side = (row[-1] - row[0]) * 100.0 * 56 / 55  # pixel-centre spacing: side / C per output pixel
        left = (row[0] - 1.0) * 100.0 - 0.5 * side / 56 + 0.5
        assert 40 - 2 <= side <= H + 2 and -1.0 <= left <= W - side + 1.0
        assert out["crop_mask"].all()
        sides.append(side)
    assert np.ptp(sides) > 10  # random sides
    big = augment_sample(image, depth, spec(min_crop=10_000, hflip=False), sample_rng(0, 0, "x"))
    row = big["crop_depth"].mean(axis=0)
    assert abs((row[-1] - row[0]) * 100.0 * 56 / 55 - H) < 2  # min_crop clipped to the short side


def test_color_jitter_changes_rgb_only_and_is_seeded():
    image, depth = checkerboard()
    image = (image * 0.5 + 60).astype(np.uint8)
    plain = augment_sample(image, depth, spec(), sample_rng(1, 0, "k"))
    jit = augment_sample(image, depth, spec(color_jitter=0.5), sample_rng(1, 0, "k"))
    again = augment_sample(image, depth, spec(color_jitter=0.5), sample_rng(1, 0, "k"))
    other_epoch = augment_sample(image, depth, spec(color_jitter=0.5), sample_rng(1, 1, "k"))
    assert not np.allclose(plain["global_image"], jit["global_image"])
    np.testing.assert_array_equal(jit["global_image"], again["global_image"])
    assert not np.array_equal(jit["crop_image"], other_epoch["crop_image"])
    for name in ("crop_depth", "crop_mask", "global_depth", "local_depth", "local_boxes"):
        np.testing.assert_array_equal(plain[name], jit[name])  # RGB only


def ramp_side(values: np.ndarray) -> float:
    """The source side (pixels) a resized view of the ramp depth = 1 + x / 100 spans: ``values`` is the view's
    column profile; the end pixel centres lie (n - 1) / n of the side apart (either direction: a flip reverses it)."""
    n = len(values)
    return abs(values[-1] - values[0]) * 100.0 * n / (n - 1)


def test_config_fields_map_to_spec():
    cfg = DataConfig(crop_size=112, min_crop=150, global_size=(112, 154), local_patch_size=84)
    s = AugmentSpec.from_config(cfg)
    assert s.crop_size == 112 and s.global_size == (112, 154) and s.local_grid == (2, 2)
    assert s == AugmentSpec(
        crop_size=112,
        min_crop=150,
        global_size=(112, 154),
        local_patch_size=84,
        local_grid=(2, 2),
        local_overlap=cfg.local_overlap,
        hflip=cfg.hflip,
        color_jitter=cfg.color_jitter,
    )
    # ... and their effect on rows, on a depth ramp (depth = 1 + x / 100) that reveals each view's source side
    for h, w in ((168, 224), (120, 168)):  # short side above min_crop = 150, and below it
        depth = 1.0 + np.tile(np.arange(w, dtype=np.float32), (h, 1)) / 100.0
        image = np.zeros((h, w, 3), np.uint8)
        boxes = local_boxes_px(h, w, s.local_grid, s.local_overlap)
        patch_side = boxes[0, 2] - boxes[0, 0]
        sides = []
        for seed in range(6):
            out = augment_sample(image, depth, s, sample_rng(seed, 0, "cfg"))
            assert out["crop_image"].shape == (3, 112, 112) and out["crop_depth"].shape == (112, 112)
            assert out["global_image"].shape == (3, 112, 154) and out["global_depth"].shape == (112, 154)
            assert out["local_images"].shape == (4, 3, 84, 84)  # N = 2 x 2 patches of local_patch_size
            assert out["local_depth"].shape == out["local_mask"].shape == (4, 84, 84)
            side = ramp_side(out["crop_depth"].mean(axis=0))
            assert min(150, h) - 2 <= side <= h + 2  # crop side in [min(min_crop, short side), short side]
            sides.append(side)
            for n in range(4):  # each patch: a square box of the source, resized to local_patch_size
                assert abs(ramp_side(out["local_depth"][n].mean(axis=0)) - patch_side) < 2
        if h < 150:
            np.testing.assert_allclose(sides, h, atol=2)  # min_crop clipped to the short side: always the whole side


def test_eval_size_matches_dav2_lower_bound():
    assert eval_size(480, 640, 518) == (518, 686)  # official DAv2 input for NYU
    assert eval_size(240, 320, 112) == (112, 154)
    assert eval_size(640, 480, 518) == (686, 518)
    h, w = eval_size(375, 1242, 518)
    assert h == 518 and w % 14 == 0 and abs(w - 1242 * 518 / 375) <= 7
    out = eval_image(np.zeros((120, 160, 3), np.uint8), 56)
    assert out.shape == (3, 56, 70) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], -IMAGENET_MEAN / IMAGENET_STD, rtol=1e-5)


def test_jitter_is_brightness_then_contrast_then_saturation():
    from dad_ray.data.augment import _jitter

    img = torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(0))
    b, c, s = 1.15, 0.85, 1.2
    x = img * b
    gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
    x = (x - gray.mean()) * c + gray.mean()
    gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
    expected = (gray + (x - gray) * s).clamp(0, 1)
    torch.testing.assert_close(_jitter(img, np.array([b, c, s])), expected, atol=1e-6, rtol=0)


def test_uint8_transport_matches_float_path():
    from dad_ray.data.augment import IMAGE_COLUMNS, normalize_uint8

    image, depth = checkerboard()
    image = (image * 0.6 + 40).astype(np.uint8)
    ref = augment_sample(image, depth, spec(color_jitter=0.3), sample_rng(2, 0, "k"))
    small = augment_sample(image, depth, spec(color_jitter=0.3), sample_rng(2, 0, "k"), uint8_images=True)
    for name in IMAGE_COLUMNS:
        assert small[name].dtype == np.uint8 and small[name].shape == ref[name].shape
        restored = normalize_uint8(torch.from_numpy(small[name])).numpy()
        np.testing.assert_allclose(restored, ref[name], atol=0.5 / 255 / 0.224 + 1e-5)  # half a grey level
    np.testing.assert_array_equal(small["crop_depth"], ref["crop_depth"])
