"""Point clouds: the corpus convention, back-projection of a depth map, farthest-point sampling, k-NN
groups and the Chamfer distance.

A point cloud value is ``float32 (N, 7)``: ``x, y, z`` (metres, or the file's units), ``r, g, b``
(0-255) and ``class`` (an id, ``-1`` where the cloud has no labels). The built-in scenes write their
clouds in the camera frame of the scene's view (x right, y up, z towards the viewer, so visible points
have ``z < 0``), the frame of the image they are aligned with.

Farthest-point sampling (FPS) is the sampler of PointNet++ (Qi et al. 2017, arXiv 1706.02413) and of
Point-BERT's group centres (Yu et al. 2022, arXiv 2111.14819): each pick is the point farthest from
those picked so far, which spreads ``n`` points evenly over the surface whatever the input density.
Shapes: ``B`` batch, ``N`` points, ``G`` groups (centres), ``k`` points per group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported by the functions that compute with it: sources and renderers need numpy only
    from torch import Tensor

FIELDS = ("x", "y", "z", "r", "g", "b", "class")
NUM_FIELDS = len(FIELDS)
NO_CLASS = -1  # a point without a label: left out of class losses and accuracies


def check_points(value, what: str = "point cloud") -> np.ndarray:
    """A value in the corpus convention as float32 (N, 7), or a one-line error saying what is wrong."""
    points = np.asarray(value, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] != NUM_FIELDS or len(points) == 0:
        raise ValueError(f"{what}: expected points (N, {NUM_FIELDS}) as {', '.join(FIELDS)}, got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError(f"{what}: holds NaN or infinite values")
    return points


def backproject(depth: np.ndarray, tan_half_fov: float) -> np.ndarray:
    """Depth along the optical axis ``(H, W)`` of a square pinhole camera -> camera-frame points
    ``(H * W, 3)``, row-major; pixel centres, x right, y up, the camera looking along -z.

    The inverse of the scenes' projection (``Camera.rays``): a pixel's ray through the image plane
    at ``z = -1`` is ``(s_col, -s_row, -1)`` with ``s`` the pixel centre times ``tan_half_fov``, and
    depth scales it to the surface.
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2 or depth.shape[0] != depth.shape[1]:
        raise ValueError(f"expected a square depth map (H, H), got shape {depth.shape}")
    size = depth.shape[0]
    s = ((np.arange(size) + 0.5) / size * 2 - 1) * tan_half_fov
    x, y = s[None, :] * depth, -s[:, None] * depth
    return np.stack([x, y, -depth], axis=-1).reshape(-1, 3)


def farthest_point_sample(xyz: Tensor, n: int) -> Tensor:
    """Indices ``(B, n)`` of ``n`` farthest points of each cloud ``(B, N, 3)`` (batches: the tokenizer's
    group centres; one cloud of a source goes faster through :func:`farthest_points`, numpy's per-call
    overhead being a third of torch's).

    The first pick is the point farthest from the cloud's centroid, so the result depends on the
    points alone (not on a random start). The loop runs over picks, which depend on each other by
    definition; each pick is one vectorised pass over every point of every cloud.
    """
    import torch
    from einops import rearrange

    if xyz.ndim != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"expected points (B, N, 3), got {tuple(xyz.shape)}")
    b, num = xyz.shape[:2]
    if not 0 < n <= num:
        raise ValueError(f"cannot pick {n} farthest points out of {num}")
    xyz = xyz.float()
    comps = rearrange(xyz, "b n c -> c b n").contiguous()  # component first: three flat passes per pick
    rows = torch.arange(b, device=xyz.device)
    picks = torch.empty(b, n, dtype=torch.long, device=xyz.device)
    nearest = torch.full((b, num), float("inf"), device=xyz.device)  # squared distance to the closest pick
    dist, tmp = torch.empty_like(nearest), torch.empty_like(nearest)
    far = (xyz - xyz.mean(1, keepdim=True)).square().sum(-1).argmax(1)
    for i in range(n):
        picks[:, i] = far
        centre = comps[:, rows, far][..., None]  # (3, B, 1)
        torch.sub(comps[0], centre[0], out=dist).square_()
        for c in (1, 2):
            torch.sub(comps[c], centre[c], out=tmp)
            dist.addcmul_(tmp, tmp)
        torch.minimum(nearest, dist, out=nearest)
        far = nearest.argmax(1)
    return picks


def farthest_points(xyz: np.ndarray, n: int) -> np.ndarray:
    """:func:`farthest_point_sample` of one cloud ``(N, 3)`` in numpy: indices ``(n,)``, the same picks."""
    xyz = np.asarray(xyz, dtype=np.float32)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"expected points (N, 3), got {xyz.shape}")
    if not 0 < n <= len(xyz):
        raise ValueError(f"cannot pick {n} farthest points out of {len(xyz)}")
    comps = np.ascontiguousarray(xyz.T)
    picks = np.empty(n, dtype=np.int64)
    nearest = np.full(len(xyz), np.inf, dtype=np.float32)
    dist, tmp = np.empty_like(nearest), np.empty_like(nearest)
    far = int(np.square(xyz - xyz.mean(0)).sum(1).argmax())
    for i in range(n):  # in-place ufuncs: no allocation per pick
        picks[i] = far
        np.subtract(comps[0], comps[0, far], out=dist)
        np.multiply(dist, dist, out=dist)
        for c in (1, 2):
            np.subtract(comps[c], comps[c, far], out=tmp)
            np.multiply(tmp, tmp, out=tmp)
            dist += tmp
        np.minimum(nearest, dist, out=nearest)
        far = int(nearest.argmax())
    return picks


def knn(query: Tensor, xyz: Tensor, k: int) -> Tensor:
    """Indices ``(B, G, k)`` of the ``k`` points of ``xyz (B, N, 3)`` nearest each ``query (B, G, 3)``,
    nearest first."""
    import torch

    if k > xyz.shape[1]:
        raise ValueError(f"cannot group {k} neighbours out of {xyz.shape[1]} points")
    return torch.cdist(query.float(), xyz.float()).topk(k, dim=-1, largest=False).indices


def gather(values: Tensor, idx: Tensor) -> Tensor:
    """``values (B, N, F)`` at ``idx (B, ...)`` -> ``(B, ..., F)``."""
    import torch

    b = values.shape[0]
    flat = idx.reshape(b, -1)
    out = torch.take_along_dim(values, flat[..., None].expand(-1, -1, values.shape[-1]), dim=1)
    return out.reshape(*idx.shape, values.shape[-1])


def chamfer(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Symmetric Chamfer distance of point sets ``a (..., M, 3)`` and ``b (..., N, 3)``: the mean
    Euclidean distance from each point to the other set's nearest, averaged over both directions
    (in the points' units), per set ``(...)``; also the nearest ``b`` of each ``a`` (..., M) and
    the nearest ``a`` of each ``b`` (..., N)."""
    import torch

    dist = torch.cdist(a.float(), b.float())
    to_b, near_b = dist.min(-1)
    to_a, near_a = dist.min(-2)
    return (to_b.mean(-1) + to_a.mean(-1)) / 2, near_b, near_a


def resample(points: np.ndarray, n: int) -> np.ndarray:
    """A cloud ``(M, F)`` -> exactly ``n`` points: its ``n`` farthest points, or, with fewer than ``n``,
    every point and then repeats (a repeated point changes neither the surface nor a Chamfer distance)."""
    if len(points) <= n:
        return points[np.arange(n) % len(points)]
    return points[farthest_points(points[:, :3], n)]
