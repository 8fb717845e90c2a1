import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fourm.modalities import CORPUS
from fourm.viz.render import RENDERERS, RenderContext, image_grid, render, sample_grid

SIZE = 96


def _scene(h: int = 32, w: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# One synthetic value per renderer name: a new corpus entry that reuses a renderer is tested for free,
# a new renderer fails test_every_corpus_entry_renders until it gets a line here.
SYNTHETIC = {
    "rgb": lambda rng: rng.integers(0, 256, (24, 32, 3), dtype=np.uint8),
    "depth": lambda rng: (rng.uniform(0.5, 10, (32, 32)) * (rng.random((32, 32)) > 0.1)).astype(np.float32),
    "normal": lambda rng: np.broadcast_to(np.float32([0, 0, 1]), (32, 32, 3)).copy(),
    "semseg": lambda rng: rng.integers(0, 5, (32, 32), dtype=np.uint8),
    "instances": lambda rng: rng.integers(0, 300, (32, 32)).astype(np.uint16),
    "edges": lambda rng: (rng.random((32, 32)) < 0.2).astype(np.uint8) * 255,
    "features": lambda rng: rng.standard_normal((4, 4, 16)).astype(np.float16),
    "vector": lambda rng: rng.standard_normal(40).astype(np.float16),
    "text": lambda rng: "a small red cube on a wooden table next to a window " * 6,
    "boxes": lambda rng: [{"box": [0.1, 0.2, 0.5, 0.6], "label": "cube", "score": 0.9}],
    "poses": lambda rng: [{"box": [0.2, 0.1, 0.8, 0.9],
                           "keypoints": rng.uniform(0.2, 0.8, (33, 3)).round(3).tolist()}],
    "palette": lambda rng: [[255, 0, 0], [0, 128, 255], [20, 20, 20]],
    "metadata": lambda rng: {"brightness": 0.4321, "num_instances": 3},
    "points": lambda rng: np.concatenate([rng.uniform(-1, 1, (200, 3)), rng.integers(0, 256, (200, 3)),
                                          rng.integers(-1, 6, (200, 1))], axis=1).astype(np.float32),
    "series": lambda rng: rng.standard_normal((64, 6)).astype(np.float32),
    "frames": lambda rng: rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
    "speech": lambda rng: (rng.standard_normal(8000) * 3000).astype(np.int16),
    "xray": lambda rng: rng.uniform(0, 3, (32, 32)).astype(np.float32),
    "thermal": lambda rng: rng.uniform(250, 320, (32, 32)).astype(np.float32),
    "spectral": lambda rng: rng.integers(0, 256, (32, 32, 32), dtype=np.uint8),
    "graph": lambda rng: {"nodes": [{"size": "large", "colour": "red", "class": "cube"}, {"class": "teddy bear"},
                                    {"colour": "blue", "class": "cone"}],
                          "edges": [{"subject": 0, "relation": "left of", "object": 1},
                                    {"subject": 0, "relation": "behind", "object": 1},
                                    {"subject": 2, "relation": "on", "object": 0}]},
    "table": lambda rng: [{"class": "cube", "colour": "red", "x": float(x), "visible": 0.5} for x in rng.random(3)],
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_every_corpus_entry_renders(name):
    kind = CORPUS[name].render
    assert kind in RENDERERS, f"corpus entry {name!r} names renderer {kind!r}, which is not registered"
    assert kind in SYNTHETIC, f"add a synthetic value for renderer {kind!r} to SYNTHETIC"
    image = render(name, SYNTHETIC[kind](np.random.default_rng(0)), size=SIZE, rgb=_scene(),
                   classes={"semseg": ["wall", "floor", "cube"], "det": ["cube"]})
    assert isinstance(image, Image.Image)
    assert image.mode == "RGB" and image.size == (SIZE, SIZE)


@pytest.mark.parametrize("kind", sorted(SYNTHETIC))
def test_renderers_survive_empty_and_absent_context(kind):
    """No rgb, no classes, and the empty form of each list-valued label."""
    empty = {"boxes": [], "poses": [], "palette": [], "table": [], "graph": {"nodes": [], "edges": []}}
    value = empty[kind] if kind in empty else SYNTHETIC[kind](np.random.default_rng(1))
    image = RENDERERS[kind](value, RenderContext(size=64))
    assert image.size == (64, 64) and image.mode == "RGB"


def test_depth_colours_near_bright_far_dark_unknown_black():
    depth = np.zeros((8, 8), np.float32)
    depth[:, :3] = 1.0  # near
    depth[:, 3:6] = 20.0  # far
    pixels = np.asarray(render("depth", depth, size=8)).astype(int)
    near, far, unknown = pixels[0, 0], pixels[0, 4], pixels[0, 7]
    assert unknown.tolist() == [0, 0, 0]
    assert near.sum() > far.sum() > 0
    ramp = np.asarray(render("depth", np.linspace(1, 10, 64, dtype=np.float32)[None].repeat(4, 0), size=64))
    brightness = ramp[32].astype(int).sum(axis=-1)
    assert brightness[2] > brightness[32] > brightness[-3]


def test_normal_facing_camera_is_blue_and_unknown_black():
    normal = np.zeros((4, 4, 3), np.float32)
    normal[:2] = [0, 0, 1]
    pixels = np.asarray(render("normal", normal, size=4))
    r, g, b = pixels[0, 0]
    assert r in (127, 128) and g in (127, 128) and b == 255
    assert pixels[3, 0].tolist() == [0, 0, 0]


def test_semseg_colours_are_fixed_per_id():
    a = np.asarray(render("semseg", np.full((4, 4), 7, np.uint8), size=4))
    b = np.asarray(render("semseg", np.array([[7, 3], [3, 3]], np.uint8), size=4))
    assert a[0, 0].tolist() == b[0, 0].tolist()
    assert a[0, 0].tolist() != b[3, 3].tolist()


def test_instances_background_black_and_ids_distinct():
    ids = np.array([[0, 1], [2, 2]], np.uint16)
    pixels = np.asarray(render("sam_instance", ids, size=2))
    assert pixels[0, 0].tolist() == [0, 0, 0]
    assert pixels[0, 1].tolist() != pixels[1, 0].tolist()


def test_boxes_draw_inside_the_box_and_not_far_away():
    rgb = np.full((100, 100, 3), 90, np.uint8)
    plain = np.asarray(render("rgb", rgb, size=100)).astype(int)
    boxed = np.asarray(render("det", [{"box": [0.4, 0.4, 0.8, 0.8], "label": "x", "score": 0.5}],
                              size=100, rgb=rgb)).astype(int)
    changed = np.abs(boxed - plain).sum(axis=-1) > 0
    assert changed[40:81, 40:81].any()
    assert not changed[:20, :20].any() and not changed[90:, :20].any()


def test_features_pca_is_deterministic_and_spatial():
    features = np.zeros((4, 4, 8), np.float16)
    features[:2, :, 0] = 1  # two regions with different features get different colours
    first = np.asarray(render("clip", features, size=8))
    assert np.array_equal(first, np.asarray(render("clip", features, size=8)))
    assert first[0, 0].tolist() != first[7, 7].tolist()


def test_unknown_modality_lists_known_names():
    with pytest.raises(LookupError, match="known: .*depth"):
        render("no_such_modality", None)


def test_sample_grid_holds_every_tile():
    rng = np.random.default_rng(0)
    sample = {"__key__": "sample-000001", "rgb": _scene(),
              **{k: SYNTHETIC[CORPUS[k].render](rng) for k in ["depth", "normal", "semseg", "caption"]}}
    grid = sample_grid(sample, size=SIZE)
    assert grid.mode == "RGB"
    assert grid.width * grid.height >= 5 * SIZE * SIZE
    assert grid.width >= 2 * SIZE and grid.height >= 2 * SIZE


def test_image_grid_sizes_columns_by_widest_and_allows_gaps():
    a, b = Image.new("RGB", (10, 20)), Image.new("RGB", (30, 5))
    grid = image_grid([[a, None], [None, b]], row_titles=["s0", "s1"], column_titles=["x", "y"], gap=0)
    assert grid.width >= 40 and grid.height >= 25


def test_import_is_cheap():
    code = ("import sys, fourm.viz.render; heavy = {'matplotlib', 'transformers', 'webdataset'};"
            "assert not heavy & set(sys.modules), heavy & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_points_front_view_shows_the_nearer_point_and_the_top_view_its_class():
    from fourm.viz.render import class_colours

    # a red point in front of a blue one (z towards the viewer), and two corner points setting the scale
    cloud = np.float32([[0, 0, 1, 255, 0, 0, 2], [0, 0, -1, 0, 0, 255, 3], [-2, -2, -2, 0, 0, 0, -1],
                        [2, 2, 2, 0, 0, 0, -1]])
    tile = np.asarray(render("point_cloud", cloud, size=SIZE))
    front, top = tile[:, : SIZE // 2], tile[:, SIZE // 2:]
    assert (front == [255, 0, 0]).all(-1).any() and not (front == [0, 0, 255]).all(-1).any()
    assert (top == class_colours()[2]).all(-1).any() and (top == class_colours()[3]).all(-1).any()
    with pytest.raises(ValueError, match=r"points renderer: expected points \(N, 7\)"):
        render("point_cloud", np.zeros((4, 3)))


def test_series_draws_each_channel_and_refuses_bad_shapes():
    signal = np.zeros((32, 3), np.float32)
    signal[16:, 0] = 1.0  # a step in channel 0: its colour appears at two heights
    tile = np.asarray(render("imu", signal, size=SIZE))
    red_rows = np.nonzero((tile == [214, 39, 40]).all(-1).any(1))[0]
    assert red_rows.max() - red_rows.min() > SIZE // 2
    with pytest.raises(ValueError, match=r"series renderer: expected finite values \(T, C\)"):
        render("imu", np.zeros(5))


def test_speech_draws_its_spectrogram_low_pitch_low():
    t = np.arange(16_000) / 16_000  # one second of 300 Hz: a bright band near the bottom, dark above
    tile = np.asarray(render("speech", (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), size=SIZE))
    brightness = tile[:, : SIZE // 16].astype(float).sum(-1).mean(1)  # the first half second, by row
    assert brightness[SIZE * 3 // 4:].max() > 3 * brightness[: SIZE // 2].max()
    with pytest.raises(ValueError, match=r"speech: expected mono samples"):
        render("speech", np.zeros((4, 2), np.float32))


def test_show_writes_a_speech_sample_as_a_picture_and_a_wav(tmp_path):
    import soundfile

    from fourm.data.corpus import storage_entry, write_manifest, write_shard
    from fourm.viz.show import save_sample_grid

    clip = (np.sin(np.arange(8000) * 0.2) * 8000).astype(np.int16)
    storages = {"speech": CORPUS["speech"].storage, "caption": CORPUS["caption"].storage}
    write_shard(tmp_path / "c", 0, [{"__key__": "s0", "speech": clip, "caption": "hello"}], storages)
    write_manifest(tmp_path / "c", {"modalities": {k: storage_entry(v) for k, v in storages.items()}})
    png = save_sample_grid(tmp_path / "c", 0, tmp_path / "out" / "s.png")
    audio, rate = soundfile.read(png.with_suffix(".speech.wav"), dtype="int16")
    assert Image.open(png).size[0] > 0 and rate == 16_000 and np.array_equal(audio, clip)


def test_xray_dense_is_bright_and_thermal_hot_is_bright():
    xray = np.zeros((8, 8), np.float32)
    xray[:, 4:] = 3.0
    pixels = np.asarray(render("xray", xray, size=8)).astype(int).sum(-1)
    assert pixels[0, 6] > pixels[0, 1]
    kelvin = np.full((8, 8), 260.0, np.float32)
    kelvin[:, 4:] = 310.0
    pixels = np.asarray(render("thermal", kelvin, size=8)).astype(int).sum(-1)
    assert pixels[0, 6] > pixels[0, 1]
    with pytest.raises(ValueError, match="expected finite values"):
        render("thermal", np.zeros((4, 4, 2)))


def test_hyperspectral_false_colour_is_the_rgb_its_spectra_came_from():
    from fourm.data.spectra import false_colour, rgb_basis

    red = np.array([0.8, 0.05, 0.05]) ** 2  # linear
    cube = np.round(np.sqrt(rgb_basis() @ red) * 255).astype(np.uint8)
    assert np.abs(false_colour(cube).astype(int) - np.round(np.sqrt(red) * 255)).max() <= 2
    tile = np.asarray(render("hyperspectral", np.broadcast_to(cube, (8, 8, len(cube))).copy(), size=8))
    assert tile[0, 0, 0] > 150 and tile[0, 0, 1] < 60


def test_graph_nodes_take_their_colour_and_tables_fit_the_tile():
    graph = {"nodes": [{"colour": "red", "class": "cube"}], "edges": []}
    pixels = np.asarray(render("scene_graph", graph, size=96)).reshape(-1, 3)
    assert (pixels == (200, 40, 40)).all(1).sum() > 100  # the node's disc, in the scenes' red
    wide = [{f"column {i}": i * 1.5 for i in range(12)}]
    assert render("table", wide, size=64).size == (64, 64)
