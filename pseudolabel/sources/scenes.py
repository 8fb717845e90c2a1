"""Built-in procedural 3D scenes: simple objects on a ground plane, ray cast in numpy, exact labels.

The project needs data whose every modality is known exactly (depth, normals, classes, instances,
boxes, caption) so that tokenizers and the model can be measured without trusting a pretrained
labeller. CLEVR (Johnson et al. 2017, https://arxiv.org/abs/1612.06890) showed that coloured
primitives with spatial-relation captions suffice to probe grounding; this is a tiny, dependency-free
take on it. Each scene is a pure function of its seed.

Frames: world y up, ground plane y = 0. Camera frame x right, y up, z towards the viewer (OpenGL),
so the camera looks along -z. Ray directions are unit vectors and ``t`` is the distance along them.
Every object has a local frame: origin at its footprint centre on the ground, y up, turned by ``yaw``.
Vectors are stored component first, ``(3, N)``: numpy reduces and indexes a length-3 leading axis
far faster than a trailing one, which is what keeps a 64 px scene at a few milliseconds. Ray-shape
intersections take origins ``o`` and directions ``d`` as ``(3, N)`` or ``(3, 1)`` (one of the two
shared by all rays) and return ``t`` of shape ``(N,)``, ``inf`` on a miss.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
from einops import rearrange

from fourm.data.scenes import CLASSES, COLOURS, SHAPES, SIZES  # the scenes' words, shared with the evaluation
from pseudolabel.sources import scene_bands, scene_series, scene_structure
from pseudolabel.sources.base import Source, source

_EPS = 1e-4  # smallest t accepted: keeps shadow rays from hitting the surface they leave
_GROUND_RADIUS = 25.0  # a finite ground keeps depth under 65 m, what millimetre uint16 PNGs hold
_FOG_START = 10.0  # the ground fades into the horizon colour from here, hiding its edge
_PLACE_RADIUS = 1.7  # objects stand within this distance of the scene centre
_MIN_PIXELS_64 = 4  # an object with fewer visible pixels at 64 px counts as hidden (scaled by area)
# One field of view for every scene: depth from a single image is then well posed (no focal/scale
# ambiguity), and a pixel's ray is known from its position alone, which the tests rely on.
FOV_DEGREES = 55.0
_UNIT_CORNERS = np.array([[-1, 1] * 4, [0, 0, 1, 1] * 2, [-1] * 4 + [1] * 4], float)  # (3, 8) box corners


# ----------------------------------------------------------------------------- ray-shape intersections
def _first(*candidates: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The smallest valid ``t`` among ``(t, valid)`` pairs, ``inf`` where none is valid."""
    best = np.inf
    for t, valid in candidates:
        best = np.minimum(best, np.where(valid & (t > _EPS), t, np.inf))
    return best


def hit_sphere(o, d, r: float) -> np.ndarray:
    """Sphere of radius ``r`` resting on the ground (centre at height ``r``)."""
    oc = o - np.array([[0.0], [r], [0.0]])
    b = (oc * d).sum(0)  # half of the linear coefficient, since |d| = 1
    disc = b * b - ((oc * oc).sum(0) - r * r)
    return _first((-b - np.sqrt(np.maximum(disc, 0.0)), disc >= 0))


def hit_box(o, d, r: float) -> np.ndarray:
    """Cube ``[-r, r] x [0, 2r] x [-r, r]`` by the slab method."""
    lo, hi = np.array([[-r], [0.0], [-r]]), np.array([[r], [2 * r], [r]])
    inv = 1.0 / np.where(d == 0, 1e-12, d)  # axis-parallel rays: huge slab times, never nan
    t1, t2 = (lo - o) * inv, (hi - o) * inv
    near, far = np.minimum(t1, t2).max(0), np.maximum(t1, t2).min(0)
    return _first((near, near <= far))


def hit_cylinder(o, d, r: float, h: float) -> np.ndarray:
    """Vertical cylinder of radius ``r`` from y = 0 to ``h``, top cap closed (the ground hides the base)."""
    (ox, oy, oz), (dx, dy, dz) = o, d
    a, b, c = dx * dx + dz * dz, ox * dx + oz * dz, ox * ox + oz * oz - r * r
    disc = b * b - a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        t_cap = (h - oy) / dy
    y_side = oy + t_side * dy
    x_cap, z_cap = ox + t_cap * dx, oz + t_cap * dz
    return _first(
        (t_side, (disc >= 0) & (a > 0) & (y_side >= 0) & (y_side <= h)),
        (t_cap, x_cap * x_cap + z_cap * z_cap <= r * r),
    )


def hit_cone(o, d, r: float, h: float) -> np.ndarray:
    """Upright cone, base radius ``r`` on the ground, apex at height ``h``.

    Points with ``x^2 + z^2 = k^2 (h - y)^2``, ``k = r / h``; substituting the ray gives
    ``a t^2 + 2 b t + c = 0``. Both roots are kept: the quadric is a double cone and only
    ``0 <= y <= h`` is ours.
    """
    (ox, oy, oz), (dx, dy, dz) = o, d
    k2, w = (r / h) ** 2, h - oy
    a = dx * dx + dz * dz - k2 * dy * dy
    b = ox * dx + oz * dz + k2 * w * dy
    c = ox * ox + oz * oz - k2 * w * w
    disc = b * b - a * c
    sq = np.sqrt(np.maximum(disc, 0.0))
    roots = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for t in ((-b - sq) / a, (-b + sq) / a):
            y = oy + t * dy
            roots.append((t, (disc >= 0) & np.isfinite(t) & (y >= 0) & (y <= h)))
    return _first(*roots)


# ----------------------------------------------------------------------------- the objects
@dataclass(frozen=True)
class SceneObject:
    shape: str
    size: str
    colour: str
    shiny: bool
    x: float
    z: float
    yaw: float

    @property
    def dims(self) -> tuple[float, float]:
        """(radius, height); a cube's radius is its half side, shrunk so sizes look alike across shapes."""
        s = SIZES[self.size]
        return {"sphere": (s, 2 * s), "cube": (0.8 * s, 1.6 * s), "cylinder": (0.8 * s, 1.6 * s),
                "cone": (0.9 * s, 2.2 * s)}[self.shape]

    @property
    def footprint(self) -> float:
        """Radius of the circle around the object on the ground (a cube's is its half diagonal)."""
        r = self.dims[0]
        return r * math.sqrt(2) if self.shape == "cube" else r

    @property
    def pos(self) -> np.ndarray:
        return np.array([[self.x], [0.0], [self.z]])

    @property
    def rot(self) -> np.ndarray:
        """(3, 3) world -> local rotation about y: ``local = rot @ (world - pos)``."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])

    def corners(self) -> np.ndarray:
        """(3, 8) corners of a world box holding the object."""
        f, h = self.footprint, self.dims[1]
        return _UNIT_CORNERS * np.array([[f], [h], [f]]) + self.pos

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        h = self.dims[1]
        return self.pos + np.array([[0.0], [h / 2], [0.0]]), math.hypot(self.footprint, h / 2)

    def hit(self, o, d) -> np.ndarray:
        rot = self.rot
        o, d = rot @ (o - self.pos), rot @ d
        r, h = self.dims
        if self.shape == "sphere":
            return hit_sphere(o, d, r)
        if self.shape == "cube":
            return hit_box(o, d, r)
        if self.shape == "cylinder":
            return hit_cylinder(o, d, r, h)
        return hit_cone(o, d, r, h)

    def normal(self, p: np.ndarray) -> np.ndarray:
        """World-frame unit normals ``(3, M)`` at world points ``(3, M)`` on the surface."""
        rot = self.rot
        q = rot @ (p - self.pos)
        r, h = self.dims
        if self.shape == "sphere":
            n = q - np.array([[0.0], [r], [0.0]])
        elif self.shape == "cube":  # the face is the axis along which the point is farthest out
            c = q - np.array([[0.0], [r], [0.0]])
            axis, cols = np.abs(c).argmax(0), np.arange(q.shape[1])
            n = np.zeros_like(q)
            n[axis, cols] = np.sign(c[axis, cols])
        else:
            rho = np.hypot(q[0], q[2])
            safe = np.maximum(rho, 1e-9)
            k = r / h if self.shape == "cone" else 0.0
            n = np.stack([q[0] / safe, np.full_like(rho, k), q[2] / safe])
            if self.shape == "cylinder":  # the cap or the side, whichever surface the point is closer to
                n[:, np.abs(q[1] - h) < np.abs(rho - r)] = [[0.0], [1.0], [0.0]]
        return rot.T @ (n / np.linalg.norm(n, axis=0))


OBJECT_COUNTS = (1, 4)  # the fewest and most objects a scene is given (a probe may narrow it)


def _sample_objects(rng: np.random.Generator) -> list[SceneObject]:
    """1-4 objects on disjoint footprints (reject sampling; an object that finds no room is dropped)."""
    objects: list[SceneObject] = []
    for _ in range(rng.integers(OBJECT_COUNTS[0], OBJECT_COUNTS[1] + 1)):
        kind = dict(shape=SHAPES[rng.integers(len(SHAPES))], size=list(SIZES)[rng.integers(len(SIZES))],
                    colour=list(COLOURS)[rng.integers(len(COLOURS))], shiny=bool(rng.random() < 0.5),
                    yaw=float(rng.uniform(0, 2 * math.pi)))
        for _ in range(50):
            rad, ang = _PLACE_RADIUS * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
            obj = SceneObject(x=rad * math.cos(ang), z=rad * math.sin(ang), **kind)
            gaps = (math.hypot(obj.x - o.x, obj.z - o.z) - obj.footprint - o.footprint for o in objects)
            if all(gap > 0.05 for gap in gaps):
                objects.append(obj)
                break
    return objects


# ----------------------------------------------------------------------------- camera, light, tracing
@dataclass(frozen=True)
class Camera:
    eye: np.ndarray  # (3, 1)
    rot: np.ndarray  # (3, 3) world -> camera; rows: right, up, back (the camera's x, y, z in the world)
    tan_half_fov: float = math.tan(math.radians(FOV_DEGREES) / 2)
    target: np.ndarray | None = None  # (3,) the point looked at (a camera move orbits it)

    @classmethod
    def look_at(cls, eye, target) -> Camera:
        """A level camera (no roll) at world point ``eye`` looking at ``target``."""
        eye, target = np.asarray(eye, float), np.asarray(target, float)
        back = (eye - target) / np.linalg.norm(eye - target)
        right = np.array([back[2], 0.0, -back[0]]) / math.hypot(back[0], back[2])  # world up x back
        up = np.array([back[1] * right[2], back[2] * right[0] - back[0] * right[2], -back[1] * right[0]])
        return cls(eye[:, None], np.stack([right, up, back]), target=target)

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Camera:
        """Random height, distance and yaw, looking down at (near) the scene centre."""
        yaw, dist, height = rng.uniform(0, 2 * math.pi), rng.uniform(3.8, 5.2), rng.uniform(2.0, 3.8)
        target = np.array([rng.uniform(-0.3, 0.3), 0.3, rng.uniform(-0.3, 0.3)])
        return cls.look_at(target + [dist * math.sin(yaw), height - target[1], dist * math.cos(yaw)], target)

    def rays(self, size: int) -> np.ndarray:
        """Unit world directions ``(3, H, W)`` through the pixel centres."""
        s = ((np.arange(size) + 0.5) / size * 2 - 1) * self.tan_half_fov
        cam = np.empty((3, size, size))
        cam[0], cam[1], cam[2] = s[None, :], -s[:, None], -1.0  # row 0 is the top: up is +y
        cam /= np.linalg.norm(cam, axis=0)
        return np.einsum("ij,ihw->jhw", self.rot, cam)

    def window(self, points: np.ndarray, size: int) -> tuple[slice, slice]:
        """Rows and columns of the image that can see anything inside the hull of world ``points`` (3, P).

        Perspective maps the hull onto the hull of the projected points, so rays outside this window
        cannot hit the object: tracing only the window is what makes 224 px affordable.
        """
        x, y, z = self.rot @ (points - self.eye)
        if (z > -1e-2).any():  # a corner at or behind the camera plane: no bound, trace everything
            return slice(0, size), slice(0, size)
        col = (x / -z / self.tan_half_fov + 1) / 2 * size
        row = (1 - y / -z / self.tan_half_fov) / 2 * size
        rows = slice(max(0, math.floor(row.min())), max(0, min(size, math.ceil(row.max()))))
        cols = slice(max(0, math.floor(col.min())), max(0, min(size, math.ceil(col.max()))))
        return rows, cols


def _hit_ground(o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The ground disc at y = 0 of radius ``_GROUND_RADIUS``: rays (3, N) from one origin (3, 1)."""
    t = o[1] / -np.minimum(d[1], -1e-9)  # rays that do not go down land far outside the disc
    x, z = o[0] + t * d[0], o[2] + t * d[2]
    return np.where((x * x + z * z < _GROUND_RADIUS**2) & (d[1] < 0), t, np.inf)


def _in_shadow(objects: list[SceneObject], p: np.ndarray, light: np.ndarray) -> np.ndarray:
    """One shadow ray per point ``(3, M)`` towards the directional light; objects are the only occluders.

    Only rays passing within an object's bounding sphere are traced exactly against it; the test is
    done in a light frame (a, b across the light, s along it), shared by all objects.
    """
    a_axis = np.cross(light, [0.0, 1.0, 0.0] if abs(light[1]) < 0.9 else [1.0, 0.0, 0.0])
    a_axis /= np.linalg.norm(a_axis)
    frame = np.stack([a_axis, np.cross(light, a_axis), light])  # (3, 3) world -> light frame
    a, b, s = frame @ p
    blocked = np.zeros(p.shape[1], bool)
    for obj in objects:
        centre, radius = obj.bounding_sphere()
        ca, cb, cs = (frame @ centre)[:, 0]
        near = ((a - ca) ** 2 + (b - cb) ** 2 < radius * radius) & (s < cs + radius) & ~blocked
        idx = np.flatnonzero(near)
        blocked[idx] = np.isfinite(obj.hit(p[:, idx], light[:, None]))
    return blocked


# ----------------------------------------------------------------------------- one scene
@dataclass(frozen=True)
class Scene:
    """Everything a picture depends on; colours are sRGB in [0, 1]."""

    objects: list[SceneObject]
    camera: Camera
    light: np.ndarray  # (3,) unit vector towards the sun
    ground_rgb: np.ndarray  # (3,)
    checker: bool
    horizon: np.ndarray  # (3,) sky colour at the horizon, also the fog colour
    zenith: np.ndarray  # (3,)

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Scene:
        objects, camera = _sample_objects(rng), Camera.sample(rng)
        elevation, azimuth = rng.uniform(math.radians(30), math.radians(70)), rng.uniform(0, 2 * math.pi)
        light = np.array([math.cos(elevation) * math.sin(azimuth), math.sin(elevation),
                          math.cos(elevation) * math.cos(azimuth)])
        return cls(
            objects, camera, light,
            ground_rgb=rng.uniform(0.38, 0.62) + rng.uniform(-0.04, 0.04, 3),  # neutral, lightly tinted
            checker=bool(rng.random() < 0.5),
            horizon=np.array([0.85, 0.88, 0.92]) + rng.uniform(-0.04, 0.04, 3),
            zenith=np.array([0.42, 0.6, 0.88]) + rng.uniform(-0.06, 0.06, 3),
        )


# what a scene adds on request (scene_series; speech: tts; the image-like bands: scene_bands;
# scene_graph and table: scene_structure)
SERIES = ("point_cloud", "imu", "video", "speech", "xray", "thermal", "hyperspectral", "scene_graph", "table")


def render_scene(seed: int, image_size: int = 64, series: tuple[str, ...] = ()) -> dict:
    """Scene ``seed`` at ``image_size`` px: rgb, depth, normal, semseg, sam_instance, det, caption, poses,
    and the ``series`` asked for (of ``SERIES``)."""
    rng = np.random.default_rng(seed)
    scene = Scene.sample(rng)
    traced = trace(scene, image_size)
    structured = [s for s in ("scene_graph", "table") if s in series]
    out = render(scene, image_size, rng, with_objects=bool(structured), traced=traced)
    if structured:  # from the objects the view shows (the caption's), read off the scene's 3D positions
        objects, visible = out.pop("objects"), out.pop("visible_fraction")
        for key in structured:
            out[key] = scene_structure.SERIES[key](objects, visible, scene.camera)
    if "xray" in series:
        out["xray"] = scene_bands.xray(scene, traced)
    if "thermal" in series:  # the air's temperature from a stream of its own, as the move's
        out["thermal"] = scene_bands.thermal(scene, traced, scene_bands.ambient(np.random.default_rng([seed, 3])))
    if "hyperspectral" in series:
        out["hyperspectral"] = scene_bands.hyperspectral(scene, traced, sky_colour)
    if "point_cloud" in series:
        out["point_cloud"] = scene_series.point_cloud(out, scene.camera)
    if "imu" in series or "video" in series:
        # a stream of its own: the other series stay what they were without the move
        move = scene_series.Trajectory.sample(scene.camera, np.random.default_rng([seed, 1]))
    if "imu" in series:
        out["imu"] = move.imu(scene_series.imu_times())
    if "video" in series:  # frame 0 is the view itself; the others are the same scene from the moving camera
        times = scene_series.frame_times()[1:]
        cameras = [Camera(eye[:, None], rot, target=move.target) for eye, rot in
                   zip(move.eye(times), move.rotations(times), strict=True)]
        frames = [render(replace(scene, camera=cam), image_size, np.random.default_rng(0))["rgb"] for cam in cameras]
        out["video"] = np.stack([out["rgb"], *frames])
    if "speech" in series:  # the caption spoken; the voice from a stream of its own, as the move's
        from pseudolabel.sources import tts  # in here: eSpeak loads only for corpora that ask for speech

        out["speech"] = tts.speak(out["caption"], tts.sample_voice(np.random.default_rng([seed, 2])))
    return out


@dataclass(frozen=True)
class Trace:
    """What ray casting a scene gives every picture of it, per pixel ``N = H * W`` (component first).

    The RGB and the bands a scene adds on request (``scene_bands``) are lit by the same light: each is
    ``albedo * shade + spec`` in its own channels, faded into the horizon with ``fog``, sky where no ray hits.
    """

    size: int
    d: np.ndarray  # (3, N) unit ray directions (world)
    t: np.ndarray  # (N,) distance to the first hit, inf for the sky
    which: np.ndarray  # (N,) -1 sky, 0 ground, 1 + k object k
    masks: list[np.ndarray]  # (N,) bool per object: the pixels where it is the first hit
    silhouette: np.ndarray  # (K,) per object: the pixels its own hits cover, whatever lies in front
    normal: np.ndarray  # (3, N) world normals, 0 for the sky
    albedo: np.ndarray  # (3, N) linear RGB albedo
    sun: np.ndarray  # (N,) cosine of the sun on the surface, 0 in shadow
    shade: np.ndarray  # (N,) ambient + diffuse light the albedo reflects
    spec: np.ndarray  # (N,) white highlights of shiny objects
    fog: np.ndarray  # (N,) how far the ground has faded into the horizon

    @property
    def hit(self) -> np.ndarray:
        return self.which >= 0

    def light(self, albedo: np.ndarray, fog_colour: np.ndarray, sky: np.ndarray) -> np.ndarray:
        """``albedo (C, N)`` lit as the RGB is, with ``fog_colour (C,)`` and ``sky (C, N)``, in linear units."""
        dtype = albedo.dtype  # many bands are lit in float32: half the memory traffic of float64
        shade, spec, fog = (v.astype(dtype, copy=False) for v in (self.shade, self.spec, self.fog))
        colour = albedo * shade + spec
        colour = (1 - fog) * colour + fog * fog_colour.astype(dtype)[:, None]
        return np.where(self.hit, colour, sky.astype(dtype, copy=False))


def trace(scene: Scene, size: int) -> Trace:
    """Ray cast ``scene`` into ``size`` x ``size`` pixels: hits, surfaces and their light."""
    objects, cam, light, checker = scene.objects, scene.camera, scene.light, scene.checker
    d_img = cam.rays(size)  # (3, H, W)
    t_all = np.full((1 + len(objects), size, size), np.inf)  # ground, then each object
    t_all[0] = _hit_ground(cam.eye, d_img.reshape(3, -1)).reshape(size, size)
    for k, obj in enumerate(objects):
        rows, cols = cam.window(obj.corners(), size)
        window = d_img[:, rows, cols]
        if window.size:
            t_all[k + 1, rows, cols] = obj.hit(cam.eye, window.reshape(3, -1)).reshape(window.shape[1:])
    d, t_all = d_img.reshape(3, -1), t_all.reshape(len(t_all), -1)  # (3, N), (1 + K, N)
    which = t_all.argmin(0)  # 0 = ground, 1 + k = object k
    t = t_all[which, np.arange(d.shape[1])]
    hit = np.isfinite(t)
    which[~hit] = -1  # sky
    p = cam.eye + np.where(hit, t, 0.0) * d

    # Shading works on (sRGB / 255)^2, an approximate linear light that keeps the gamma round trip cheap.
    normal, albedo = np.zeros_like(d), np.zeros_like(d)
    shiny = np.zeros(d.shape[1], bool)
    ground = which == 0
    normal[1, ground] = 1.0
    albedo[:, ground] = (scene.ground_rgb**2)[:, None]
    if checker:  # 1 m tiles, low contrast so that the objects stay the salient thing
        odd = (np.floor(p[0]) + np.floor(p[2])) % 2 == 1
        albedo[:, ground & odd] *= 0.7
    masks = [which == k + 1 for k in range(len(objects))]
    for obj, mine in zip(objects, masks, strict=True):
        normal[:, mine] = obj.normal(p[:, mine])
        albedo[:, mine] = ((np.array(COLOURS[obj.colour]) / 255) ** 2)[:, None]
        shiny[mine] = obj.shiny

    # Lambert + Blinn-Phong with cast shadows, and a hemisphere ambient brighter on upward faces
    ndl = light @ normal
    lit = hit & (ndl > 0)
    lit[lit] = ~_in_shadow(objects, p[:, lit] + 1e-3 * normal[:, lit], light)
    spec = np.zeros_like(ndl)
    glossy = shiny & lit
    half = light[:, None] - d[:, glossy]
    spec[glossy] = 0.6 * np.maximum((half * normal[:, glossy]).sum(0) / np.linalg.norm(half, axis=0), 0) ** 40
    sun = np.where(lit, ndl, 0.0)
    fog = np.where(ground, np.clip((t - _FOG_START) / (_GROUND_RADIUS - _FOG_START), 0, 1), 0.0)
    silhouette = np.isfinite(t_all[1:]).sum(1)
    return Trace(size, d, t, which, masks, silhouette, normal, albedo, sun,
                 0.22 * (0.6 + 0.4 * normal[1]) + 0.9 * sun, spec, fog)


def sky_colour(scene: Scene, d: np.ndarray) -> np.ndarray:
    """Linear sky colour ``(3, N)`` seen along directions ``d (3, N)``: the horizon's, bluer upwards."""
    up = np.sqrt(np.clip(d[1], 0, 1))
    return ((1 - up) * scene.horizon[:, None] + up * scene.zenith[:, None]) ** 2


def render(scene: Scene, size: int, rng: np.random.Generator, with_objects: bool = False,
           traced: Trace | None = None) -> dict:
    """Ray cast ``scene`` into ``size`` x ``size`` pixels; ``rng`` only varies the caption's wording.
    ``with_objects`` adds ``"objects"``: the visible scene objects, left to right (for probes
    that need each object's words in image order; a corpus has no such series), and
    ``"visible_fraction"``: the share of each one's silhouette in the frame that no other object hides.
    ``traced``: the scene's :func:`trace` at ``size``, where the caller has it already."""
    objects, cam = scene.objects, scene.camera
    tr = traced or trace(scene, size)
    d, t, which, hit, masks = tr.d, tr.t, tr.which, tr.hit, tr.masks
    colour = tr.light(tr.albedo, scene.horizon**2, sky_colour(scene, d))
    rgb = np.round(np.sqrt(np.clip(colour, 0, 1)) * 255).astype(np.uint8)
    normal = tr.normal

    depth = np.where(hit, t * (-cam.rot[2] @ d), 0.0)  # distance along the optical axis (-back)
    normal_cam = cam.rot @ normal  # zeros stay zeros for the sky
    semseg = np.where(which < 0, 0, 1)
    for obj, mine in zip(objects, masks, strict=True):
        semseg[mine] = CLASSES.index(obj.shape)

    instance, det, visible, order = _instances(masks, depth, objects, size)
    return {
        "rgb": rearrange(rgb, "c (h w) -> h w c", h=size),
        "depth": depth.reshape(size, size).astype(np.float32),
        "normal": rearrange(normal_cam, "c (h w) -> h w c", h=size).astype(np.float32),
        "semseg": semseg.reshape(size, size).astype(np.uint8),
        "sam_instance": instance,
        "det": det,
        "caption": _caption(visible, scene.checker, rng),
        "human_poses": [],
        **({"objects": [obj for obj, _, _ in visible],
            # the object's own hits (whatever lies in front) are its whole silhouette
            "visible_fraction": [float(masks[k].sum() / tr.silhouette[k]) for k in order]}
           if with_objects else {}),
    }


def _instances(masks: list[np.ndarray], depth: np.ndarray, objects: list[SceneObject], size: int):
    """Ids 1..N for the visible objects, left to right; their boxes; (object, x centre, depth) for captions;
    their indices in ``objects``.

    masks: one (H * W,) bool per object; depth: (H * W,). An object under the pixel threshold keeps its
    class in semseg (that stays exact) but gets no instance, box or mention.
    """
    min_pixels = max(1, round(_MIN_PIXELS_64 * size * size / 64**2))
    found = []
    for k, (obj, mine) in enumerate(zip(objects, masks, strict=True)):
        idx = np.flatnonzero(mine)
        if len(idx) >= min_pixels:
            rows, cols = np.divmod(idx, size)
            box = [float(cols.min() / size), float(rows.min() / size), float((cols.max() + 1) / size),
                   float((rows.max() + 1) / size)]
            found.append(((cols.mean() + 0.5) / size, k, obj, box, depth[idx].mean()))
    found.sort(key=lambda f: (f[0], f[1]))
    instance = np.zeros(size * size, np.uint16)
    for i, (_, k, *_rest) in enumerate(found):
        instance[masks[k]] = i + 1
    det = [{"box": box, "label": obj.shape, "score": 1.0} for _, _, obj, box, _ in found]
    return (instance.reshape(size, size), det, [(obj, float(cx), float(z)) for cx, _, obj, _, z in found],
            [k for _, k, *_rest in found])


# ----------------------------------------------------------------------------- the caption
def describe(obj: SceneObject) -> str:
    """Always ``<size> <colour> <shape>``: later checks find objects in generated captions by these words."""
    return f"{obj.size} {obj.colour} {obj.shape}"


def relation(a: tuple[SceneObject, float, float], b: tuple[SceneObject, float, float]) -> str:
    """Where ``a`` is relative to ``b`` in the image: left/right, unless they overlap and one is nearer."""
    (_, xa, za), (_, xb, zb) = a, b
    if abs(xa - xb) < 0.12 and abs(za - zb) > 0.15 * (za + zb) / 2:
        return "in front of" if za < zb else "behind"
    return "to the left of" if xa < xb else "to the right of"


def _caption(visible: list, checker: bool, rng: np.random.Generator) -> str:
    """Objects in a random order, two per clause: "a large red cube to the left of a small blue sphere"."""
    floor = "a checkered floor" if checker else "a plain floor"
    if not visible:
        return f"an empty scene with {floor}."
    order = [visible[i] for i in rng.permutation(len(visible))]
    clauses = []
    for i in range(0, len(order), 2):
        a = order[i]
        if i + 1 < len(order):
            clauses.append(f"a {describe(a[0])} {relation(a, order[i + 1])} a {describe(order[i + 1][0])}")
        elif i > 0:  # the odd one out is placed relative to the object before it
            clauses.append(f"a {describe(a[0])} {relation(a, order[i - 1])} the {describe(order[i - 1][0])}")
        else:
            clauses.append(f"a {describe(a[0])}")
    text = ", and ".join(clauses) if len(clauses) < 3 else ", ".join(clauses[:-1]) + ", and " + clauses[-1]
    opening = ["", "there is ", "a scene with "][rng.integers(3)]
    closing = ["", f" on {floor}"][rng.integers(2)]
    return f"{opening}{text}{closing}."


# ----------------------------------------------------------------------------- the source
@source
class Scenes(Source):
    """``count`` procedural scenes; scene ``i`` is ``render_scene(seed * 1_000_003 + i, image_size)``."""

    name: ClassVar[str] = "scenes"
    provides: ClassVar[tuple[str, ...]] = (
        "rgb", "depth", "normal", "semseg", "sam_instance", "det", "caption", "human_poses",
    )
    count: int = 64
    image_size: int = 64
    seed: int = 0
    series: tuple[str, ...] = ()  # extra series of SERIES to render (pseudolabel's `series` setting)

    def __post_init__(self):
        self.series = tuple(self.series)
        unknown = [s for s in self.series if s not in SERIES]
        if unknown:
            raise ValueError(f"scenes: unknown series {', '.join(map(repr, unknown))}; known: {', '.join(SERIES)}")
        self.provides = (*type(self).provides, *self.series)  # this source's, beside the class's default
        # here, before a plan is written: a count of 0 made an empty corpus and exit 0, a size of 0
        # a ZeroDivisionError deep in the renderer
        if self.count < 1:
            raise ValueError(f"scenes:{self.count}: the number of scenes must be at least 1")
        if self.image_size is None or self.image_size < 1:
            raise ValueError(f"scenes: image_size must be at least 1, not {self.image_size}")
        if self.seed < 0:
            raise ValueError(f"scenes: seed must be 0 or more, not {self.seed}")

    @classmethod
    def from_arg(cls, arg: str, **options) -> Scenes:
        try:
            count = int(arg)
        except ValueError:
            raise ValueError(f"scenes:{arg!r}: give the number of scenes, e.g. scenes:64") from None
        return cls(count=count, **options)

    def num_shards(self, shard_size: int) -> int:
        return math.ceil(self.count / shard_size)

    def num_samples(self) -> int:
        return self.count

    def shard(self, index: int, shard_size: int) -> Iterator[dict]:
        for i in range(index * shard_size, min(self.count, (index + 1) * shard_size)):
            yield {"__key__": f"scene-{i:08d}", **render_scene(self.seed * 1_000_003 + i, self.image_size, self.series)}

    def extra_classes(self) -> dict:
        return {"semseg": list(CLASSES), "det": list(SHAPES)}

    def describe(self) -> dict:
        out = super().describe()
        if self.series:  # as JSON keeps it, so that a resumed run's plan compares equal
            out["series"] = list(self.series)
        else:  # a plan written before series existed still matches: resumable as it was
            del out["series"]
        return out
