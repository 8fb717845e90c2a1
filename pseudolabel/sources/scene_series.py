"""Series a scene adds when asked (``Scenes(series=...)``): a point cloud, a camera move's IMU and video.

* ``point_cloud``: the scene's exact depth back-projected into the camera frame of the view, with each
  pixel's rendered colour and class, cropped to the scene (world points within ``CROP_RADIUS`` of its
  centre: the ground runs out to 25 m, and farthest-point sampling over it would spend the points on
  far ground instead of the objects), then ``NUM_POINTS`` farthest points (``fourm.data.points``).
* ``imu``: the camera moves along a short analytic path (:class:`Trajectory`: an orbit around the
  scene's target with a dolly and a vertical bob, starting at the scene's own camera) and an IMU rides
  on it: ``float32 (IMU_SAMPLES, 6)``, accelerometer ``ax, ay, az`` (m/s^2, specific force: gravity
  reads +9.81 up at rest) and gyroscope ``gx, gy, gz`` (rad/s), both in the camera frame, sampled at
  ``IMU_RATE`` Hz over ``DURATION`` s. Exact up to the finite differences of the analytic path
  (central, step ``_H``: errors of order ``_H^2``, micro-units).
* ``video``: ``uint8 (NUM_FRAMES, H, W, 3)``, the scene ray cast from the moving camera at 8 fps; frame 0
  is the scene's ``rgb``, and frame ``i`` is seen at IMU sample ``8 i``.

The path comes from its own random stream (seeded by the scene's seed), so asking for these series
leaves every other series of a scene byte-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fourm.data.points import NUM_FIELDS, backproject, resample
from fourm.modalities import VIDEO_FRAMES

NUM_POINTS = 1024
CROP_RADIUS = 3.5  # metres: objects stand within 1.7 m of the centre, the largest reaches 2.6 m
DURATION = 1.0  # seconds of camera motion
IMU_RATE = 64  # Hz: 64 samples over the move, 8 per video frame
IMU_SAMPLES = int(DURATION * IMU_RATE)
NUM_FRAMES = VIDEO_FRAMES  # video frames over the move (8 fps), the first at the scene's own camera
GRAVITY = np.array([0.0, -9.81, 0.0])  # world y up
_H = 1e-3  # seconds, the finite-difference step


@dataclass(frozen=True)
class Trajectory:
    """An orbit around ``target``: yaw ``yaw + omega t``, ground distance ``dist + speed t``, height
    above the target ``height + bob sin(2 pi freq t)``, always looking at ``target`` (no roll)."""

    target: np.ndarray  # (3,)
    yaw: float
    dist: float
    height: float
    omega: float  # rad/s
    speed: float  # m/s, towards (<0) or away from the target
    bob: float  # m
    freq: float  # Hz

    @classmethod
    def sample(cls, camera, rng: np.random.Generator) -> Trajectory:
        """A random move starting at ``camera`` (a scenes ``Camera`` with its ``target``)."""
        target = np.asarray(camera.target, float)
        off = camera.eye[:, 0] - target
        return cls(target, yaw=math.atan2(off[0], off[2]), dist=math.hypot(off[0], off[2]), height=float(off[1]),
                   omega=float(rng.choice([-1, 1]) * rng.uniform(0.3, 0.8)), speed=float(rng.uniform(-0.5, 0.5)),
                   bob=float(rng.uniform(0.0, 0.3)), freq=float(rng.uniform(0.5, 1.5)))

    def eye(self, t: np.ndarray) -> np.ndarray:
        """World positions ``(T, 3)`` at times ``t (T,)``."""
        t = np.asarray(t, float)
        yaw, dist = self.yaw + self.omega * t, self.dist + self.speed * t
        up = self.height + self.bob * np.sin(2 * math.pi * self.freq * t)
        return self.target + np.stack([dist * np.sin(yaw), up, dist * np.cos(yaw)], axis=-1)

    def rotations(self, t: np.ndarray) -> np.ndarray:
        """World -> camera rotations ``(T, 3, 3)`` (rows: right, up, back), as ``Camera.look_at`` builds them."""
        back = self.eye(t) - self.target
        back /= np.linalg.norm(back, axis=-1, keepdims=True)
        right = np.stack([back[:, 2], np.zeros(len(back)), -back[:, 0]], axis=-1)
        right /= np.linalg.norm(right, axis=-1, keepdims=True)
        return np.stack([right, np.cross(back, right), back], axis=1)

    def imu(self, t: np.ndarray) -> np.ndarray:
        """Accelerometer and gyroscope ``(T, 6)`` in the camera frame at times ``t``."""
        t = np.asarray(t, float)
        acc = (self.eye(t + _H) - 2 * self.eye(t) + self.eye(t - _H)) / _H**2  # world, (T, 3)
        rot = self.rotations(t)
        specific = np.einsum("tij,tj->ti", rot, acc - GRAVITY)
        # body rates: Omega_x = R^T dR/dt with R = rot^T (camera -> world), the skew part read off
        d_cam_to_world = (self.rotations(t + _H) - self.rotations(t - _H)).transpose(0, 2, 1) / (2 * _H)
        omega = np.einsum("tij,tjk->tik", rot, d_cam_to_world)
        gyro = np.stack([omega[:, 2, 1], omega[:, 0, 2], omega[:, 1, 0]], axis=-1)
        return np.concatenate([specific, gyro], axis=-1).astype(np.float32)


def imu_times() -> np.ndarray:
    return np.arange(IMU_SAMPLES) / IMU_RATE


def frame_times() -> np.ndarray:
    """Times of the video frames: frame ``i`` is IMU sample ``i * IMU_RATE / NUM_FRAMES``."""
    return np.arange(NUM_FRAMES) * (DURATION / NUM_FRAMES)


def point_cloud(out: dict, camera, num_points: int = NUM_POINTS) -> np.ndarray:
    """The rendered view ``out`` (rgb, depth, semseg) as a cropped, farthest-point-sampled cloud
    ``float32 (num_points, 7)`` in ``camera``'s frame."""
    depth = out["depth"]
    xyz = backproject(depth, camera.tan_half_fov)  # (H * W, 3), camera frame
    world = xyz @ camera.rot + camera.eye[:, 0]  # rot is orthonormal: rot^T x, written row-wise
    keep = (depth.reshape(-1) > 0) & (np.hypot(world[:, 0], world[:, 2]) < CROP_RADIUS)
    if not keep.any():  # a camera that sees only sky and far ground: keep whatever it sees
        keep = depth.reshape(-1) > 0
    points = np.empty((int(keep.sum()), NUM_FIELDS), np.float32)
    points[:, :3] = xyz[keep]
    points[:, 3:6] = out["rgb"].reshape(-1, 3)[keep]
    points[:, 6] = out["semseg"].reshape(-1)[keep]
    return resample(points, num_points)
