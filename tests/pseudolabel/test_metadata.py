"""The metadata labeller: each field on an input whose value is known, and absent inputs left out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pseudolabel.labellers.metadata import Metadata

IMAGE_FIELDS = {"original_width", "original_height", "colourfulness", "brightness", "contrast",
                "saturation", "entropy"}


def meta(classes=None, **sample) -> dict:
    labeller = Metadata()
    labeller.setup(classes or {})
    sample.setdefault("rgb", np.full((32, 48, 3), 100, np.uint8))
    return labeller.label([sample])[0]["metadata"]


def test_rgb_only_gives_the_image_fields_and_nothing_guessed():
    out = meta()
    assert set(out) == IMAGE_FIELDS
    assert (out["original_width"], out["original_height"]) == (48, 32)


def test_original_size_comes_from_the_source_when_recorded():
    out = meta(__size__=(640, 480))
    assert (out["original_width"], out["original_height"]) == (640, 480)


def test_brightness_contrast_of_black_white_and_halves():
    black, white = meta(rgb=np.zeros((8, 8, 3), np.uint8)), meta(rgb=np.full((8, 8, 3), 255, np.uint8))
    assert (black["brightness"], white["brightness"]) == (0.0, 1.0)
    assert black["contrast"] == white["contrast"] == 0.0
    assert black["entropy"] == white["entropy"] == 0.0
    half = np.zeros((8, 8, 3), np.uint8)
    half[:, 4:] = 255
    out = meta(rgb=half)
    assert (out["brightness"], out["contrast"], out["entropy"]) == (0.5, 0.5, 1.0)


def test_colourfulness_and_saturation():
    grey = meta(rgb=np.full((16, 16, 3), 128, np.uint8))
    assert grey["colourfulness"] == grey["saturation"] == 0.0
    rng = np.random.default_rng(0)
    colourful = meta(rgb=rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    red = meta(rgb=np.broadcast_to(np.array([255, 0, 0], np.uint8), (16, 16, 3)))
    assert colourful["colourfulness"] > 50 and red["colourfulness"] > 50
    assert red["saturation"] == 1.0


def test_caption_statistics():
    out = meta(caption="A dog runs on the beach. It looks happy!  Really")
    assert (out["caption_chars"], out["caption_words"], out["caption_sentences"]) == (48, 10, 3)
    empty = meta(caption="")
    assert (empty["caption_chars"], empty["caption_words"], empty["caption_sentences"]) == (0, 0, 0)


def test_counts_of_humans_instances_and_objects():
    ids = np.zeros((32, 48), np.uint16)
    ids[:10], ids[10:20, :5], ids[20:, 40:] = 1, 2, 7
    det = [{"box": [0.0, 0.0, 0.5, 1.0], "label": "dog", "score": 0.9},
           {"box": [0.0, 0.0, 0.25, 0.5], "label": "dog", "score": 0.8},
           {"box": [0.9, 0.9, 1.2, 1.0], "label": "cat", "score": 0.7}]
    poses = [{"box": [0, 0, 1, 1], "keypoints": []}] * 2
    out = meta(sam_instance=ids, det=det, human_poses=poses)
    assert (out["num_sam_instances"], out["num_coco_instances"], out["num_humans"]) == (3, 3, 2)
    assert out["instance_diversity"] == round(2 / 3, 4)
    # left half, plus the 10 % x 10 % corner box (clipped to the image): 0.5 + 0.1 * 0.09375 rounded
    assert out["objectness"] == pytest.approx(0.5 + (5 / 48) * (3 / 32), abs=1e-4)
    none = meta(det=[], human_poses=[], sam_instance=np.zeros((32, 48), np.uint16))
    assert (none["num_coco_instances"], none["instance_diversity"], none["objectness"]) == (0, 0.0, 0.0)
    assert (none["num_humans"], none["num_sam_instances"]) == (0, 0)


def test_semantics_walkability_needs_class_names():
    semseg = np.zeros((32, 48), np.uint8)  # "sky" on top, "earth, ground" below, a speck of "person"
    semseg[16:] = 1
    semseg[0, 0] = 2
    names = {"semseg": ["sky", "earth, ground", "person"]}
    out = meta(names, semseg=semseg)
    assert out["walkability"] == 0.5
    assert out["semantic_diversity"] == 2  # the one-pixel person is below min_class_share
    assert meta(names, semseg=np.full((32, 48), 255, np.uint8))["semantic_diversity"] == 0  # ignore id
    without_names = meta(semseg=semseg)
    assert "walkability" not in without_names and without_names["semantic_diversity"] == 2
    floors = {"semseg": ["wall", "floor-wood", "rug-merged", "road", "person", "playingfield"]}
    assert meta(floors, semseg=np.arange(6, dtype=np.uint8).repeat(8)[None].repeat(32, 0))["walkability"] \
        == round(4 / 6, 4)


def sphere_normals(size=32):
    x, y = np.meshgrid(np.linspace(-0.9, 0.9, size), np.linspace(0.9, -0.9, size))
    z2 = 1 - x**2 - y**2
    normal = np.stack([x, y, np.sqrt(np.maximum(z2, 0))], -1).astype(np.float32)
    normal[z2 <= 0] = 0  # outside the disc: unknown
    return normal


def test_geometric_complexity_of_a_plane_and_a_sphere():
    tilted = np.array([0.3, 0.2, 0.9]) / np.linalg.norm([0.3, 0.2, 0.9])
    plane = np.broadcast_to(tilted.astype(np.float32), (32, 48, 3))
    assert meta(normal=plane)["geometric_complexity"] == 0.0
    sphere = meta(normal=sphere_normals())["geometric_complexity"]
    assert 0.1 < sphere < 1
    assert "geometric_complexity" not in meta(normal=np.zeros((32, 48, 3), np.float32))


def test_occlusion_score_counts_depth_jumps():
    ramp = np.linspace(2.0, 3.0, 48)[None].repeat(32, 0)  # a smooth slope: no occlusion
    assert meta(depth=ramp)["occlusion_score"] == 0.0
    step = np.full((32, 48), 2.0)
    step[:, 24:] = 4.0
    assert meta(depth=step)["occlusion_score"] == round(2 / 48, 4)  # both columns beside the jump
    assert "occlusion_score" not in meta(depth=np.zeros((32, 48)))


def test_values_are_plain_rounded_json_and_deterministic():
    rng = np.random.default_rng(1)
    sample = dict(rgb=rng.integers(0, 256, (32, 48, 3), dtype=np.uint8), caption="Two cats.",
                  semseg=rng.integers(0, 3, (32, 48), dtype=np.uint8), normal=sphere_normals(32),
                  depth=rng.uniform(1, 5, (32, 48)).astype(np.float32),
                  det=[{"box": [0.1, 0.1, 0.6, 0.7], "label": "cat", "score": 0.5}], human_poses=[],
                  sam_instance=rng.integers(0, 5, (32, 48), dtype=np.uint16))
    labeller = Metadata()
    labeller.setup({"semseg": ["grass", "tree", "sky"]})
    out, again = labeller.label([sample, sample])
    assert out == again
    out = out["metadata"]
    assert len(out) == 19
    for key, value in out.items():
        assert type(value) in (int, float), key
        assert value == round(value, 4)
    assert json.loads(json.dumps(out)) == out
    json.dumps(labeller.describe())
