"""The procedural scenes source: exact, self-consistent ground truth from a ray caster."""

import math
import re

import numpy as np
import pytest

from pseudolabel.sources.base import parse_source
from pseudolabel.sources.scenes import (
    CLASSES,
    COLOURS,
    FOV_DEGREES,
    SHAPES,
    SIZES,
    Camera,
    Scene,
    SceneObject,
    Scenes,
    describe,
    render,
    render_scene,
)

SEEDS = range(12)
SIZE = 32
PHRASE = re.compile(rf"\b(small|large) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})\b")


@pytest.fixture(scope="module")
def samples():
    return [render_scene(seed, SIZE) for seed in SEEDS]


def camera_rays(size: int) -> np.ndarray:
    """Unit rays (H, W, 3) through the pixel centres in the camera frame (x right, y up, z to the viewer)."""
    s = ((np.arange(size) + 0.5) / size * 2 - 1) * math.tan(math.radians(FOV_DEGREES) / 2)
    u, v = np.meshgrid(s, -s)
    rays = np.stack([u, v, -np.ones_like(u)], -1)
    return rays / np.linalg.norm(rays, axis=-1, keepdims=True)


def points(depth: np.ndarray) -> np.ndarray:
    """Camera-frame 3D points (H, W, 3) from z-depth."""
    rays = camera_rays(depth.shape[0])
    return rays * (depth / -rays[..., 2])[..., None]


def make_scene(*objects: SceneObject, eye=(0.0, 3.0, 6.0)) -> Scene:
    return Scene(list(objects), Camera.look_at(eye, (0.0, 0.3, 0.0)), light=np.array([0.3, 0.8, 0.5]) / math.sqrt(0.98),
                 ground_rgb=np.full(3, 0.5), checker=False, horizon=np.full(3, 0.9), zenith=np.full(3, 0.6))


def obj(shape, size, colour, x, z) -> SceneObject:
    return SceneObject(shape, size, colour, shiny=False, x=x, z=z, yaw=0.0)


def test_deterministic_per_seed_and_different_across_seeds():
    a, b, c = render_scene(3, SIZE), render_scene(3, SIZE), render_scene(4, SIZE)
    for key in a:
        if isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key])
        else:
            assert a[key] == b[key]
    assert not np.array_equal(a["rgb"], c["rgb"])


@pytest.mark.parametrize("size", [16, 40])
def test_shapes_and_dtypes(size):
    out = render_scene(0, size)
    assert out["rgb"].shape == (size, size, 3) and out["rgb"].dtype == np.uint8
    assert out["depth"].shape == (size, size) and out["depth"].dtype == np.float32
    assert out["normal"].shape == (size, size, 3) and out["normal"].dtype == np.float32
    assert out["semseg"].shape == (size, size) and out["semseg"].dtype == np.uint8
    assert out["sam_instance"].shape == (size, size) and out["sam_instance"].dtype == np.uint16
    assert isinstance(out["caption"], str) and out["caption"].endswith(".")
    assert out["human_poses"] == []
    assert out["depth"].max() < 65.0  # fits the corpus' millimetre uint16 PNGs


def test_normals_unit_on_surfaces_zero_on_sky_and_facing_the_camera(samples):
    rays = camera_rays(SIZE)
    for out in samples:
        normal, surface = out["normal"], out["depth"] > 0
        np.testing.assert_allclose(np.linalg.norm(normal[surface], axis=-1), 1.0, atol=1e-5)
        assert not normal[~surface].any()
        # a visible surface faces the ray that sees it; z > 0 alone can fail by perspective at the edges
        assert ((normal * -rays).sum(-1)[surface] > 0).all()
        assert (normal[surface][:, 2] > 0).mean() > 0.97


def test_sky_is_background_with_unknown_depth(samples):
    for out in samples:
        assert np.array_equal(out["semseg"] == CLASSES.index("background"), out["depth"] == 0)


def test_ground_geometry(samples):
    """Ground pixels lie on one plane given by their normal; with a level camera their depth grows upwards."""
    ground_id = CLASSES.index("ground")
    for out in samples:
        ground = out["semseg"] == ground_id
        g = out["normal"][ground]
        np.testing.assert_allclose(g, np.broadcast_to(g[0], g.shape), atol=1e-6)
        heights = points(out["depth"])[ground] @ g[0]  # signed distance from the camera along the normal
        np.testing.assert_allclose(heights, heights[0], rtol=1e-4)
        above = points(out["depth"])[out["semseg"] >= CLASSES.index("sphere")] @ g[0] - heights[0]
        tallest = max(SceneObject(s, size, "red", False, 0.0, 0.0, 0.0).dims[1] for s in SHAPES for size in SIZES)
        assert (above > -1e-3).all() and (above < tallest + 1e-3).all()  # objects stand on the ground
        rows = [out["depth"][r][ground[r]] for r in range(SIZE) if ground[r].any()]
        for row in rows:
            np.testing.assert_allclose(row, row[0], rtol=1e-4)
        assert all(upper[0] > lower[0] for upper, lower in zip(rows, rows[1:], strict=False))


def test_instances_boxes_and_classes_agree(samples):
    seen = set()
    for out in samples:
        semseg, inst, det = out["semseg"], out["sam_instance"], out["det"]
        assert sorted(np.unique(inst[inst > 0])) == list(range(1, len(det) + 1))
        assert (semseg[inst > 0] >= CLASSES.index("sphere")).all()
        ys, xs = np.mgrid[:SIZE, :SIZE]
        for i, d in enumerate(det, start=1):
            mine = inst == i
            assert mine.sum() >= 1 and d["score"] == 1.0
            assert {CLASSES[c] for c in np.unique(semseg[mine])} == {d["label"]}
            x0, y0, x1, y1 = d["box"]
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            cx, cy = (xs[mine] + 0.5) / SIZE, (ys[mine] + 0.5) / SIZE
            assert (cx >= x0).all() and (cx <= x1).all() and (cy >= y0).all() and (cy <= y1).all()
            assert x0 == (xs[mine].min()) / SIZE and y1 == (ys[mine].max() + 1) / SIZE  # tight
            seen.add(d["label"])
    assert seen == set(SHAPES)


def test_caption_names_every_visible_object(samples):
    for seed, out in zip(SEEDS, samples, strict=True):
        scene = Scene.sample(np.random.default_rng(seed))
        described = {describe(o) for o in scene.objects}
        mentioned = {" ".join(m) for m in PHRASE.findall(out["caption"])}
        assert mentioned <= described, out["caption"]
        if len(described) == len(scene.objects):  # descriptions unique: mentions match det one to one
            assert sorted(m.split()[-1] for m in mentioned) == sorted(d["label"] for d in out["det"])


def test_caption_relations():
    left, right = obj("cube", "large", "red", -1.3, 0.0), obj("sphere", "small", "blue", 1.3, 0.0)
    left_right = render(make_scene(left, right), SIZE, np.random.default_rng(0))["caption"]
    assert ("large red cube to the left of a small blue sphere" in left_right
            or "small blue sphere to the right of a large red cube" in left_right), left_right
    near, far = obj("cone", "small", "green", 0.0, 1.5), obj("cylinder", "large", "yellow", 0.0, -1.5)
    front_back = render(make_scene(near, far), SIZE, np.random.default_rng(0))["caption"]
    assert ("small green cone in front of a large yellow cylinder" in front_back
            or "large yellow cylinder behind a small green cone" in front_back), front_back


def test_hidden_objects_are_left_out():
    scene = make_scene(obj("cube", "large", "red", 0.0, 0.0), obj("sphere", "small", "blue", 0.0, -1.5),
                       eye=(0.0, 1.0, 6.0))
    out = render(scene, SIZE, np.random.default_rng(0))
    assert [d["label"] for d in out["det"]] == ["cube"]
    assert "sphere" not in out["caption"] and "large red cube" in out["caption"]


def test_source_shards_cover_count_with_unique_keys():
    src = Scenes(count=10, image_size=16, seed=1)
    assert src.num_shards(4) == 3
    shards = [list(src.shard(i, 4)) for i in range(src.num_shards(4))]
    assert [len(s) for s in shards] == [4, 4, 2]
    keys = [s["__key__"] for shard in shards for s in shard]
    assert len(set(keys)) == 10 and not any("." in k for k in keys)
    assert set(shards[0][0]) == {"__key__", *Scenes.provides}
    # a scene does not depend on how the stream is cut into shards
    again = list(src.shard(1, 5))[0]
    assert again["__key__"] == keys[5] and again["caption"] == shards[1][1]["caption"]
    assert src.extra_classes() == {"semseg": CLASSES, "det": SHAPES}


def test_parse_source_builds_scenes():
    src = parse_source("scenes:7", image_size=16, seed=2)
    assert isinstance(src, Scenes) and (src.count, src.image_size, src.seed) == (7, 16, 2)
    with pytest.raises(TypeError):
        Scenes.from_arg("7", colour="red")
