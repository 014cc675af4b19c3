"""Issue 13: local patches cut from the shared-context crop (the paper's reading) and the no-random-crop baseline.

Sizes are chosen so that no view is resized (crop side = crop_size, patch side = local_patch_size, image =
global_size): every comparison is then exact, pixel for pixel.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dad_ray.config import ConfigError, build_config
from dad_ray.data.augment import AugmentSpec, augment_sample, local_boxes_px, resize_depth, sample_rng
from dad_ray.losses import crop_boxes

H, W = 56, 84


def spec(**kw) -> AugmentSpec:
    base = dict(
        crop_size=56,
        min_crop=56,  # the crop side is always the short side (56): a random position along x only
        global_size=(H, W),  # the global view is the image itself
        local_patch_size=28,
        local_grid=(2, 2),
        local_overlap=0.0,  # 2 x 2 patches of side 28 tile the 56 x 56 crop exactly
        hflip=True,
        color_jitter=0.0,
        local_source="crop",
    )
    base.update(kw)
    return AugmentSpec(**base)


def ramp():
    """Every pixel's depth is unique: 1 + y + x / 100 metres."""
    yy, xx = np.mgrid[:H, :W].astype(np.float32)
    image = np.zeros((H, W, 3), dtype=np.uint8)
    return image, (1.0 + yy + xx / 100.0).astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_crop_patches_are_pixels_of_the_crop_and_of_the_global_view(seed):
    image, depth = ramp()
    out = augment_sample(image, depth, spec(), sample_rng(seed, 0, "row"))
    glob, crop, local = out["global_depth"], out["crop_depth"], out["local_depth"]  # (H, W), (56, 56), (4, 28, 28)
    px = np.rint(out["local_boxes"] * np.array([H, W, H, W])).astype(int)  # back to whole-image pixels
    x0 = px[0, 1]
    np.testing.assert_array_equal(crop, glob[:, x0 : x0 + 56])  # the crop is a 56 x 56 window of the global view
    for n, (y0, xa, y1, xb) in enumerate(px):
        assert (y1 - y0, xb - xa) == (28, 28)
        np.testing.assert_array_equal(local[n], glob[y0:y1, xa:xb])  # patch n = its box in the global view
        np.testing.assert_array_equal(local[n], crop[y0:y1, xa - x0 : xb - x0])  # ... which lies in the crop
    tiled = np.block([[local[0], local[1]], [local[2], local[3]]])
    np.testing.assert_array_equal(tiled, crop)  # the 2 x 2 grid covers the crop
    # the loss's Crop_n (roi_align on the student's global map) cuts exactly the teacher's patch
    cut = crop_boxes(torch.from_numpy(glob)[None], torch.from_numpy(out["local_boxes"])[None], 28)[0]
    torch.testing.assert_close(cut, torch.from_numpy(local), rtol=0, atol=1e-4)


def test_crop_patches_follow_the_crop_over_seeds_and_flips():
    image, depth = ramp()
    x_offsets, flips = set(), set()
    for seed in range(40):
        out = augment_sample(image, depth, spec(), sample_rng(seed, 0, "row"))
        x_offsets.add(int(np.rint(out["local_boxes"][0, 1] * W)))
        flips.add(bool(out["global_depth"][0, 0] > out["global_depth"][0, -1]))  # x decreasing: flipped
    assert len(x_offsets) > 5 and flips == {True, False}  # the patches move with the random crop, flipped or not


def test_image_reading_is_unchanged_and_ignores_the_crop():
    image, depth = ramp()
    out = augment_sample(image, depth, spec(local_source="image", local_overlap=0.25), sample_rng(3, 0, "row"))
    expected = local_boxes_px(H, W, (2, 2), 0.25) / np.array([H, W, H, W], dtype=np.float32)
    np.testing.assert_array_equal(out["local_boxes"], expected.astype(np.float32))


def test_paper_like_sizes_patches_inside_the_crop_and_resized():
    """A crop of random side, overlapping patches resized up for the teacher: boxes inside the crop region."""
    h, w = 96, 128
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    depth = (1.0 + yy + xx / 100.0).astype(np.float32)
    s = spec(crop_size=42, min_crop=60, global_size=(h, w), local_patch_size=56, local_overlap=0.25)
    for seed in range(5):
        out = augment_sample(np.zeros((h, w, 3), np.uint8), depth, s, sample_rng(seed, 0, "r"))
        px = np.rint(out["local_boxes"] * np.array([h, w, h, w]))
        crop_side = (px[:, 3].max() - px[:, 1].min(), px[:, 2].max() - px[:, 0].min())
        assert 60 <= crop_side[0] == crop_side[1] <= 96  # the grid spans exactly the (square) shared-context crop
        assert out["local_depth"].shape == (4, 56, 56)
        cut = crop_boxes(torch.from_numpy(out["global_depth"])[None], torch.from_numpy(out["local_boxes"])[None], 56)
        # a linear ramp survives both resizes up to the antialiasing at the borders: compare the interiors
        torch.testing.assert_close(
            cut[0, :, 4:-4, 4:-4], torch.from_numpy(out["local_depth"])[:, 4:-4, 4:-4], atol=0.02, rtol=0
        )


def test_no_random_crop_is_the_whole_image_and_changes_nothing_else():
    image, depth = ramp()
    rng_seed = (5, 0, "row")
    with_crop = augment_sample(image, depth, spec(local_source="image"), sample_rng(*rng_seed))
    without = augment_sample(image, depth, spec(local_source="image", random_crop=False), sample_rng(*rng_seed))
    d = torch.from_numpy(without["global_depth"])
    expected, _ = resize_depth(d, d > 0, (56, 56))  # the whole (flipped) image squeezed to crop_size x crop_size
    np.testing.assert_array_equal(without["crop_depth"], expected.numpy())
    for key in ("global_depth", "local_depth", "local_boxes"):
        np.testing.assert_array_equal(without[key], with_crop[key])
    crop_reading = augment_sample(image, depth, spec(random_crop=False), sample_rng(*rng_seed))
    expected_boxes = local_boxes_px(H, W, (2, 2), 0.0) / np.array([H, W, H, W], dtype=np.float32)
    np.testing.assert_array_equal(crop_reading["local_boxes"], expected_boxes.astype(np.float32))  # crop = image


def test_config_keys_reach_the_spec():
    cfg = build_config("smoke", overrides={"data.local_source": "crop", "data.random_crop": False})
    s = AugmentSpec.from_config(cfg.data)
    assert (s.local_source, s.random_crop) == ("crop", False)
    with pytest.raises(ConfigError, match=r"data\.local_source: expected one of 'image', 'crop', got 'crops'"):
        build_config("smoke", overrides={"data.local_source": "crops"})
