"""The synthetic scene generator: deterministic, NYU-like ranges, Kinect-like holes, learnable structure."""

from __future__ import annotations

import numpy as np
import pytest

from dad_ray.data.sources.synthetic_source import SyntheticSource, scene_seed
from dad_ray.data.synthetic import MAX_DEPTH, MIN_DEPTH, generate_scene


@pytest.fixture(scope="module")
def scenes():
    return [generate_scene(seed, 60, 80) for seed in range(6)]


def test_shapes_and_dtypes(scenes):
    for image, depth in scenes:
        assert image.shape == (60, 80, 3) and image.dtype == np.uint8
        assert depth.shape == (60, 80) and depth.dtype == np.float32


def test_deterministic_by_seed():
    a_img, a_dep = generate_scene(11, 48, 64)
    b_img, b_dep = generate_scene(11, 48, 64)
    c_img, c_dep = generate_scene(12, 48, 64)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_dep, b_dep)
    assert not np.array_equal(a_dep, c_dep)
    assert np.abs(a_img.astype(int) - c_img.astype(int)).mean() > 5


def test_depth_range_and_holes(scenes):
    for _image, depth in scenes:
        valid = depth > 0
        assert depth[valid].min() >= MIN_DEPTH and depth[valid].max() <= MAX_DEPTH
        assert 0.0 < 1.0 - valid.mean() < 0.5  # some holes, mostly valid
        assert np.isfinite(depth).all()
    spans = [np.ptp(d[d > 0]) for _i, d in scenes]
    assert min(spans) > 0.5  # a room, not a flat wall


def test_full_resolution_default_shape():
    image, depth = generate_scene(0)
    assert image.shape == (480, 640, 3) and depth.shape == (480, 640)


def test_holes_at_depth_edges():
    image, depth = generate_scene(3, 120, 160)
    # every large depth jump between two neighbouring valid pixels is rare: edges are cut out as holes
    d = depth.astype(np.float64)
    both = (d[:, 1:] > 0) & (d[:, :-1] > 0)
    jumps = np.abs(np.diff(d, axis=1)) / np.maximum(np.minimum(d[:, 1:], d[:, :-1]), 1e-6) > 0.08
    assert (both & jumps).sum() == 0


def test_image_carries_depth_information(scenes):
    """Shading/texture make the image informative: image statistics differ between near and far regions."""
    image, depth = scenes[0]
    assert image.std() > 10  # textured, not flat
    gray = image.mean(axis=2)
    assert np.abs(np.diff(gray, axis=1)).mean() > 1.0


def test_synthetic_source_splits_never_share_scenes():
    train = SyntheticSource(3, split="train", height=32, width=40, seed=0)
    test = SyntheticSource(3, split="test", height=32, width=40, seed=0)
    assert {scene_seed(0, "train", i) for i in range(100)}.isdisjoint({scene_seed(0, "test", i) for i in range(100)})
    key, image, depth = train.load("2")
    assert key == "synthetic_train_000002" and image.shape == (32, 40, 3)
    assert not np.array_equal(depth, test.load("2")[2])
    assert train.refs() == ["0", "1", "2"]
