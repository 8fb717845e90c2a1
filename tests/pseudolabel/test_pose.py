"""The mediapipe pose labeller on real photos.

Tests marked ``pose`` need mediapipe==0.10.21 (numpy<2) and run in their own environment via
``.ci/pose``; the main suite deselects them. ``test_available_matches_environment`` runs in both.
Neither needs torch.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from pseudolabel.labellers.pose import NUM_KEYPOINTS, PoseLabeller

# BlazePose keypoint indices ("left" is the person's left, so on the image's right for a person facing us)
NOSE, LEFT_EYE, RIGHT_EYE, LEFT_SHOULDER, RIGHT_SHOULDER = 0, 2, 5, 11, 12


def test_available_matches_environment():
    ok, reason = PoseLabeller.available()
    if importlib.util.find_spec("mediapipe") is None:
        assert not ok
        assert "mediapipe" in reason
    else:
        assert (ok, reason) == (True, "")


def test_declaration():
    # Checked on the class, not through pseudolabel.registry.lookup, which imports every labeller
    # module (torch, transformers) and so cannot run in the pose environment.
    assert PoseLabeller.name == "human_poses" and PoseLabeller.default is False
    assert PoseLabeller.needs == ("rgb",) and PoseLabeller.produces == ("human_poses",)
    with pytest.raises(ValueError, match="model_complexity"):
        PoseLabeller(model_complexity=3)
    with pytest.raises(ValueError, match="min_detection_confidence"):
        PoseLabeller(min_detection_confidence=1.5)


@pytest.fixture(scope="module")
def labeller():
    lab = PoseLabeller()
    lab.setup({})
    return lab


@pytest.fixture(scope="module")
def astronaut_people(labeller):
    from skimage import data as skimage_data  # a hard dependency, and in .ci/pose's environment
    (out,) = labeller.label([{"rgb": skimage_data.astronaut()}])
    assert set(out) == {"human_poses"}
    return out["human_poses"]


@pytest.mark.pose
def test_astronaut_one_person(astronaut_people):
    assert len(astronaut_people) == 1
    person = astronaut_people[0]
    assert set(person) == {"box", "keypoints"}
    points = np.array(person["keypoints"])
    assert points.shape == (NUM_KEYPOINTS, 3)
    assert ((points >= 0) & (points <= 1)).all()


@pytest.mark.pose
def test_astronaut_face_and_shoulders(astronaut_people):
    points = np.array(astronaut_people[0]["keypoints"])
    x, y, vis = points.T
    for k in (NOSE, LEFT_EYE, RIGHT_EYE, LEFT_SHOULDER, RIGHT_SHOULDER):
        assert vis[k] > 0.9, k
    # Eileen Collins faces the camera, head in the upper half, shoulders below it
    assert y[NOSE] < 0.5
    assert y[NOSE] < y[LEFT_SHOULDER] and y[NOSE] < y[RIGHT_SHOULDER]
    assert y[LEFT_EYE] < y[NOSE] and y[RIGHT_EYE] < y[NOSE]
    # facing us, her left side is on the image's right
    assert x[RIGHT_SHOULDER] < x[NOSE] < x[LEFT_SHOULDER]
    assert x[RIGHT_EYE] < x[NOSE] < x[LEFT_EYE]
    assert x[LEFT_SHOULDER] - x[RIGHT_SHOULDER] > 0.2  # an upper-body shot: shoulders far apart


@pytest.mark.pose
def test_astronaut_box_encloses_visible_keypoints(labeller, astronaut_people):
    person = astronaut_people[0]
    x0, y0, x1, y1 = person["box"]
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    points = np.array(person["keypoints"])
    seen = points[points[:, 2] >= labeller.min_visibility]
    assert len(seen) >= 11  # face and shoulders at least
    assert (seen[:, 0] >= x0).all() and (seen[:, 0] <= x1).all()
    assert (seen[:, 1] >= y0).all() and (seen[:, 1] <= y1).all()
    # the box is tight: its edges are keypoints
    assert seen[:, 0].min() == x0 and seen[:, 0].max() == x1
    assert seen[:, 1].min() == y0 and seen[:, 1].max() == y1


@pytest.mark.pose
def test_no_person(labeller):
    from skimage import data as skimage_data  # a hard dependency, and in .ci/pose's environment
    grey = np.full((256, 256, 3), 128, np.uint8)
    outs = labeller.label([{"rgb": grey}, {"rgb": skimage_data.coffee()}])
    assert outs == [{"human_poses": []}, {"human_poses": []}]


@pytest.mark.pose
def test_batch_is_per_image(labeller, astronaut_people):
    from skimage import data as skimage_data  # a hard dependency, and in .ci/pose's environment
    grey = np.full((64, 96, 3), 128, np.uint8)
    outs = labeller.label([{"rgb": grey}, {"rgb": skimage_data.astronaut()}])
    assert outs[0] == {"human_poses": []}
    assert outs[1] == {"human_poses": astronaut_people}  # static image mode: no state between images


@pytest.mark.pose
def test_output_and_describe_are_json(labeller, astronaut_people):
    assert json.loads(json.dumps(astronaut_people)) == astronaut_people
    desc = labeller.describe()
    assert json.loads(json.dumps(desc)) == desc
    assert desc["name"] == "human_poses"
    assert desc["settings"] == {
        "model_complexity": 1,
        "min_detection_confidence": 0.5,
        "static_image_mode": True,
        "min_visibility": 0.5,
    }


@pytest.mark.pose
def test_rejects_non_rgb(labeller):
    with pytest.raises(ValueError, match="uint8"):
        labeller.label([{"rgb": np.zeros((32, 32), np.uint8)}])
