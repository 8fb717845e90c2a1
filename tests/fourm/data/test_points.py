"""Point-cloud geometry: back-projection, farthest-point sampling, k-NN groups, Chamfer distance."""

import numpy as np
import pytest
import torch

from fourm.data.points import (
    backproject,
    chamfer,
    check_points,
    farthest_point_sample,
    farthest_points,
    knn,
    resample,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# the corners of a unit square, its centre and a point beside one corner; hand-worked picks below
SQUARE = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0.5, 0.5, 0], [0.1, 0, 0]], np.float32)


def test_backprojection_of_a_flat_wall_by_hand():
    # 2 x 2 pixels, 90 degree field of view (tan = 1): pixel centres at -0.5 and 0.5 of the half width
    xyz = backproject(np.full((2, 2), 2.0), tan_half_fov=1.0)
    expected = [[-1, 1, -2], [1, 1, -2], [-1, -1, -2], [1, -1, -2]]  # row 0 is the top: y up
    np.testing.assert_allclose(xyz, expected)
    with pytest.raises(ValueError, match="square depth map"):
        backproject(np.ones((2, 3)), 1.0)


def test_farthest_points_by_hand_in_numpy_and_torch():
    # farthest from the centroid (0.43, 0.42) is (1, 1); then (0, 0); then the two free corners
    # (distance 1 each, the first index wins the tie); the point beside (0, 0) comes last
    assert farthest_points(SQUARE, 6).tolist() == [3, 0, 1, 2, 4, 5]
    assert farthest_point_sample(torch.from_numpy(SQUARE)[None].repeat(2, 1, 1), 4).tolist() == [[3, 0, 1, 2]] * 2
    rng = np.random.default_rng(0)
    cloud = rng.normal(size=(300, 3)).astype(np.float32)
    assert (farthest_points(cloud, 50) == farthest_point_sample(torch.from_numpy(cloud)[None], 50)[0].numpy()).all()
    with pytest.raises(ValueError, match="cannot pick 7 farthest points out of 6"):
        farthest_points(SQUARE, 7)


def test_resample_spreads_or_repeats():
    cloud = np.concatenate([SQUARE, np.arange(6)[:, None].repeat(4, 1)], axis=1)  # (6, 7): a label per point
    assert resample(cloud, 4)[:, 6].tolist() == [3, 0, 1, 2]
    assert resample(cloud[:2], 5)[:, 6].tolist() == [0, 1, 0, 1, 0]


def test_knn_and_chamfer():
    xyz = torch.from_numpy(SQUARE)[None]
    assert knn(torch.tensor([[[0.0, 0.0, 0.0]]]), xyz, 2).tolist() == [[[0, 5]]]
    distance, near_b, near_a = chamfer(xyz, xyz)
    assert float(distance) == 0 and near_b.tolist() == near_a.tolist() == [list(range(6))]
    # two points against one: nearest distances 0.5 and 1.5 one way, 0.5 the other: (1.0 + 0.5) / 2
    distance, _, _ = chamfer(torch.tensor([[[0.0, 0, 0], [2.0, 0, 0]]]), torch.tensor([[[0.5, 0, 0]]]))
    assert float(distance) == pytest.approx(0.75)


def test_bad_clouds_are_one_line_errors():
    with pytest.raises(ValueError, match=r"expected points \(N, 7\)"):
        check_points(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        check_points(np.full((5, 7), np.nan))
