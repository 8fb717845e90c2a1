"""The scenes' extra series: an exact point cloud of the view, and the IMU of an exact camera move."""

import math

import numpy as np
import pytest

from fourm.data.points import backproject
from pseudolabel.sources.base import parse_source
from pseudolabel.sources.scene_series import GRAVITY, IMU_SAMPLES, NUM_FRAMES, NUM_POINTS, Trajectory, imu_times
from pseudolabel.sources.scenes import SERIES, Camera, Scene, Scenes, render_scene

SIZE = 48


def test_series_are_opt_in_and_leave_the_rest_unchanged():
    plain, extra = render_scene(5, SIZE), render_scene(5, SIZE, SERIES)
    assert set(extra) == set(plain) | {"point_cloud", "imu", "video", "speech", "xray", "thermal", "hyperspectral",
                                       "scene_graph", "table"}
    for key, value in plain.items():
        assert np.array_equal(np.asarray(value), np.asarray(extra[key])) if isinstance(value, np.ndarray) \
            else value == extra[key]
    assert extra["point_cloud"].shape == (NUM_POINTS, 7) and extra["imu"].shape == (IMU_SAMPLES, 6)
    video = extra["video"]
    assert video.shape == (NUM_FRAMES, SIZE, SIZE, 3) and video.dtype == np.uint8
    assert np.array_equal(video[0], plain["rgb"])  # the move starts at the scene's own view
    assert all(not np.array_equal(a, b) for a, b in zip(video[:-1], video[1:], strict=True))  # and moves
    source = parse_source("scenes:3", image_size=16, seed=0, series=("imu",))
    assert source.provides == (*Scenes.provides, "imu") and "imu" in next(source.shard(0, 2))
    # a corpus planned before series existed resumes: its plan's source has no series key
    assert "series" not in Scenes(count=2).describe() and source.describe()["series"] == ["imu"]
    known = "point_cloud, imu, video, speech, xray, thermal, hyperspectral, scene_graph, table"
    with pytest.raises(ValueError, match=f"unknown series 'lidar'; known: {known}"):
        Scenes(count=2, series=("lidar",))


def test_point_cloud_is_the_exact_depth_with_its_colours_and_classes():
    out = render_scene(2, SIZE, ("point_cloud",))
    cloud = out["point_cloud"]
    camera = Scene.sample(np.random.default_rng(2)).camera
    # every point is one pixel back-projected: the same xyz, that pixel's colour and class
    pixels = np.concatenate([backproject(out["depth"], camera.tan_half_fov), out["rgb"].reshape(-1, 3),
                             out["semseg"].reshape(-1, 1)], axis=1)
    distance = np.abs(cloud[:, None, :] - pixels[None].astype(np.float32)).max(-1)
    assert distance.min(1).max() < 1e-5
    unique = np.unique(cloud, axis=0)
    assert len(unique) == NUM_POINTS  # 48 px: more pixels than points, so farthest points, none repeated
    assert (cloud[:, 2] < 0).all() and set(np.unique(cloud[:, 6])) >= {1.0}  # in front of the camera, on the ground


def test_imu_of_a_level_orbit_matches_the_closed_form():
    # an orbit at a constant height and distance: the camera turns about world y at omega, its
    # acceleration is centripetal, omega^2 * dist towards the axis
    camera = Camera.look_at([0.0, 2.0, 4.0], [0.0, 0.3, 0.0])
    move = Trajectory(np.array([0.0, 0.3, 0.0]), yaw=0.0, dist=4.0, height=1.7, omega=0.6, speed=0.0, bob=0.0,
                      freq=1.0)
    assert np.allclose(move.eye(np.zeros(1))[0], camera.eye[:, 0]) and np.allclose(move.rotations(np.zeros(1))[0],
                                                                                     camera.rot)
    t = imu_times()
    imu, rot, eye = move.imu(t), move.rotations(t), move.eye(t)
    towards_axis = -(eye - [0.0, eye[0, 1], 0.0])
    acc_world = 0.6**2 * towards_axis
    np.testing.assert_allclose(imu[:, :3], np.einsum("tij,tj->ti", rot, acc_world - GRAVITY), atol=1e-3)
    np.testing.assert_allclose(imu[:, 3:], np.einsum("tij,j->ti", rot, [0.0, 0.6, 0.0]), atol=1e-5)
    assert np.linalg.norm(imu[0, 3:]) == pytest.approx(0.6, abs=1e-5)
    assert np.linalg.norm(imu[0, :3]) == pytest.approx(math.hypot(9.81, 0.36 * 4.0), abs=1e-3)


def test_a_source_without_series_refuses_them(tmp_path):
    with pytest.raises(ValueError, match="renders no extra series"):
        parse_source(f"points:{tmp_path}", series=("imu",))
