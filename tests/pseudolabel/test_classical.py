"""The weight-free labellers on synthetic images whose right answer is known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from pseudolabel.labellers.classical import (
    CannyEdge,
    ColorPalette,
    DepthNormal,
    InstanceEdge,
    RegionInstances,
)

LEFT, RIGHT = (220, 60, 30), (20, 40, 150)  # luminance 0.35 and 0.16: Canny works on grey
SPLIT = 40  # columns of the left colour in the 64 px two-colour image


def two_colours(size=64, split=SPLIT):
    rgb = np.empty((size, size, 3), np.uint8)
    rgb[:, :split], rgb[:, split:] = LEFT, RIGHT
    return rgb


def busy_image(size=64, seed=0):
    """Smooth random colour blobs plus noise: something like a photo, for determinism and timing."""
    rng = np.random.default_rng(seed)
    blobs = ndimage.zoom(rng.uniform(0, 255, (8, 8, 3)), (size / 8, size / 8, 1), order=1)
    return np.clip(blobs + rng.normal(0, 8, blobs.shape), 0, 255).astype(np.uint8)


def plane_depth(normal, distance=3.0, size=64, fov_deg=55.0):
    """Depth (along -z) of the plane {p : normal . p = -distance * normal_z} seen by the labeller's camera."""
    n = np.asarray(normal, np.float64) / np.linalg.norm(normal)
    focal = (size / 2) / math.tan(math.radians(fov_deg) / 2)
    coords = (np.arange(size) + 0.5 - size / 2) / focal
    u, v = coords[None, :], coords[:, None]
    # a point at depth t on the ray of pixel (u, v) is t * (u, -v, -1)
    return -distance * n[2] / (n[0] * u - n[1] * v - n[2])


ALL = [CannyEdge, RegionInstances, InstanceEdge, DepthNormal, ColorPalette]


def test_canny_finds_the_boundary_and_nothing_else():
    edges = CannyEdge().label([{"rgb": two_colours()}])[0]["canny_edge"]
    assert edges.dtype == np.uint8 and edges.shape == (64, 64)
    assert set(np.unique(edges)) <= {0, 255}
    rows, cols = np.nonzero(edges)
    assert np.all(np.abs(cols - SPLIT + 0.5) <= 1.5)  # on the colour boundary, columns 39 | 40
    assert len(np.unique(rows)) >= 60  # and along (almost) all of it


@pytest.mark.parametrize("rgb", [np.full((64, 64, 3), 128, np.uint8),
                                 np.clip(np.random.default_rng(0).normal(128, 2, (64, 64, 3)), 0, 255)
                                 .astype(np.uint8)], ids=["flat", "faint-noise"])
def test_canny_leaves_featureless_images_empty(rgb):
    assert not CannyEdge().label([{"rgb": rgb}])[0]["canny_edge"].any()


def test_sam_instance_splits_two_colours_largest_first():
    ids = RegionInstances().label([{"rgb": two_colours()}])[0]["sam_instance"]
    assert ids.dtype == np.uint16 and ids.shape == (64, 64)
    assert np.all(ids[:, :SPLIT] == 1) and np.all(ids[:, SPLIT:] == 2)


def test_sam_instance_caps_the_count():
    for max_instances in (4, 32):
        labeller = RegionInstances(max_instances=max_instances)
        ids = labeller.label([{"rgb": busy_image(224)}])[0]["sam_instance"]
        present = np.unique(ids[ids > 0])
        assert 1 <= len(present) <= max_instances
        assert np.array_equal(present, np.arange(1, len(present) + 1))
        sizes = np.bincount(ids.ravel())[1:]
        assert np.all(np.diff(sizes) <= 0)  # 1 is the largest


def test_sam_edge_marks_the_boundary_one_pixel_wide():
    ids = np.ones((64, 64), np.uint16)
    ids[:, SPLIT:] = 2
    edges = InstanceEdge().label([{"sam_instance": ids}])[0]["sam_edge"]
    assert edges.dtype == np.uint8 and set(np.unique(edges)) == {0, 255}
    rows, cols = np.nonzero(edges)
    assert np.all(np.abs(cols - SPLIT + 0.5) <= 0.5)
    assert np.bincount(rows).max() == 1 and len(rows) >= 62  # one pixel per row (thinning may eat an end)
    thick = InstanceEdge(use_thin=False).label([{"sam_instance": ids}])[0]["sam_edge"]
    assert (thick > 0).sum() == 2 * 64


def test_sam_edge_of_one_instance_is_empty():
    assert not InstanceEdge().label([{"sam_instance": np.ones((16, 16), np.uint16)}])[0]["sam_edge"].any()


def test_normal_of_a_frontal_plane_faces_the_camera():
    normal = DepthNormal().label([{"depth": np.full((48, 64), 2.5, np.float32)}])[0]["normal"]
    assert normal.dtype == np.float32 and normal.shape == (48, 64, 3)
    np.testing.assert_allclose(normal, np.broadcast_to([0, 0, 1], normal.shape), atol=1e-6)


@pytest.mark.parametrize("plane", [(0.3, 0.2, 1.0), (-0.8, 0.1, 0.6), (0.0, 0.6, 0.8)])
def test_normal_of_a_tilted_plane_matches_the_analytic_one(plane):
    depth = plane_depth(plane).astype(np.float32)
    assert depth.min() > 0
    normal = DepthNormal().label([{"depth": depth}])[0]["normal"]
    expected = np.asarray(plane) / np.linalg.norm(plane)  # y up, z to the viewer, as the plane was built
    np.testing.assert_allclose(normal, np.broadcast_to(expected, normal.shape), atol=1e-3)


def test_normal_is_zero_where_depth_is_unknown_or_jumps():
    depth = np.full((64, 64), 3.0)
    depth[10:20, 10:20] = 0.0  # unknown
    depth[:, 40:] = 6.0  # a wall twice as far: an occlusion boundary at column 40
    normal = DepthNormal().label([{"depth": depth}])[0]["normal"]
    length = np.linalg.norm(normal, axis=-1)
    assert np.all(length[9:21, 9:21] == 0)  # the hole and its ring, whose gradients read it
    assert np.all(length[:, 39:41] == 0)
    rest = np.ones((64, 64), bool)
    rest[9:21, 9:21] = rest[:, 39:41] = False
    np.testing.assert_allclose(length[rest], 1.0, atol=1e-6)


def test_normal_of_a_sphere_points_out_of_it():
    size, radius, centre = 64, 1.0, np.array([0.0, 0.0, -3.0])
    focal = (size / 2) / math.tan(math.radians(55.0) / 2)
    coords = (np.arange(size) + 0.5 - size / 2) / focal
    rays = np.stack(np.broadcast_arrays(coords[None, :], -coords[:, None], -np.ones((1, 1))), -1)
    b, a = rays @ centre, np.sum(rays**2, -1)
    disc = b**2 - a * (centre @ centre - radius**2)
    hit = disc > 0
    depth = np.where(hit, (b - np.sqrt(np.maximum(disc, 0))) / a, 8.0)  # sphere before a far wall
    normal = DepthNormal().label([{"depth": depth}])[0]["normal"]
    expected = (depth[..., None] * rays - centre) / radius
    inner = ndimage.binary_erosion(hit, iterations=3)
    cos = np.sum(normal[inner] * expected[inner], -1)
    assert np.degrees(np.arccos(np.clip(np.median(cos), -1, 1))) < 1.0
    assert np.all(normal[hit & ~ndimage.binary_erosion(hit)] == 0)  # the silhouette is a jump


def test_palette_returns_the_colours_by_share():
    palette = ColorPalette().label([{"rgb": two_colours()}])[0]["color_palette"]
    assert len(palette) == 2
    assert all(type(c) is int for colour in palette for c in colour)
    np.testing.assert_allclose(palette, [LEFT, RIGHT], atol=2)
    flipped = ColorPalette().label([{"rgb": two_colours()[:, ::-1]}])[0]["color_palette"]
    np.testing.assert_allclose(flipped, [LEFT, RIGHT], atol=2)  # still by share, not by position


def test_palette_of_one_colour_and_of_a_busy_image():
    flat = np.full((32, 32, 3), 77, np.uint8)
    assert ColorPalette().label([{"rgb": flat}])[0]["color_palette"] == [[77, 77, 77]]
    palette = ColorPalette().label([{"rgb": busy_image(224)}])[0]["color_palette"]
    assert 1 <= len(palette) <= 7
    assert all(len(c) == 3 and all(0 <= x <= 255 for x in c) for c in palette)


def _inputs(cls, rgb):
    if cls is InstanceEdge:
        return {"sam_instance": RegionInstances().label([{"rgb": rgb}])[0]["sam_instance"]}
    if cls is DepthNormal:
        return {"depth": 1.0 + rgb[..., 0].astype(np.float32) / 64}
    return {"rgb": rgb}


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_deterministic_batched_and_serialisable(cls):
    labeller = cls()
    labeller.setup({})
    samples = [_inputs(cls, busy_image(64, seed)) for seed in range(3)]
    first, second = labeller.label(samples), labeller.label(samples[::-1])[::-1]
    assert [list(o) for o in first] == [list(cls.produces)] * 3
    for a, b in zip(first, second, strict=True):
        for key in cls.produces:
            np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))
    json.dumps(labeller.describe())
    assert cls.default
