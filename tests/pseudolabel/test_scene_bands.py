"""The scenes' image-like bands: exact X-ray chords, thermal brightness in kelvin, hyperspectral radiance."""

import math

import numpy as np
import pytest

from fourm.data.spectra import false_colour
from fourm.modalities import HYPERSPECTRAL_BANDS
from pseudolabel.sources import scene_bands
from pseudolabel.sources.scene_bands import MATERIALS, SKY_DROP, chord
from pseudolabel.sources.scenes import Camera, Scene, SceneObject, render_scene, sky_colour, trace

BANDS = ("xray", "thermal", "hyperspectral")


def _inside(shape: str, q: np.ndarray, r: float, h: float) -> np.ndarray:
    """Local points (3, M) inside the solid: the definition the chords must integrate."""
    x, y, z = q
    in_slab = (y >= 0) & (y <= h)
    if shape == "sphere":
        return x * x + (y - r) ** 2 + z * z <= r * r
    if shape == "cube":
        return in_slab & (np.abs(x) <= r) & (np.abs(z) <= r)
    if shape == "cylinder":
        return in_slab & (x * x + z * z <= r * r)
    return in_slab & (x * x + z * z <= (r / h * (h - y)) ** 2)


@pytest.mark.parametrize("shape", ["sphere", "cube", "cylinder", "cone"])
def test_chords_are_the_length_inside_each_solid(shape):
    rng = np.random.default_rng(0)
    r, h = 0.8, {"sphere": 1.6, "cube": 1.6, "cylinder": 1.3, "cone": 1.9}[shape]
    # rays through random points near the solid from a camera-like eye, and from one high above (rays
    # steeper than a cone's side: the quadric's other case)
    for eye in (np.array([[2.5], [2.0], [3.0]]), np.array([[0.3], [6.0], [0.2]])):
        aims = rng.uniform([-1.2, -0.3, -1.2], [1.2, h + 0.3, 1.2], (150, 3)).T
        d = aims - eye
        d /= np.linalg.norm(d, axis=0)
        got = chord(shape, eye, d, r, h)
        step = 2e-3
        ts = np.arange(0, 9, step) + step / 2
        points = eye[:, :, None] + d[:, :, None] * ts  # (3, rays, T): midpoint rule
        want = np.stack([_inside(shape, points[:, i], r, h).sum() * step for i in range(d.shape[1])])
        np.testing.assert_allclose(got, want, atol=3 * step)
        assert (got > 0).sum() > 40  # most rays pass through
    down = chord(shape, np.array([[0.1], [5.0], [0.05]]), np.array([[0.0], [-1.0], [0.0]]), r, h)
    assert down[0] == pytest.approx(_inside(shape, np.stack([np.full(10**5, 0.1), np.linspace(0, h, 10**5),
                                                             np.full(10**5, 0.05)]), r, h).mean() * h, abs=1e-3)


def _one_object_scene(shiny: bool, size: int = 33) -> tuple[Scene, SceneObject]:
    ball = SceneObject("sphere", "large", "red", shiny, x=0.0, z=0.0, yaw=0.3)
    r = ball.dims[0]
    # an odd image: the middle pixel's ray is the optical axis, straight through the ball's centre
    camera = Camera.look_at([3.0, 2.5, 3.5], [0.0, r, 0.0])
    scene = Scene.sample(np.random.default_rng(0))
    return Scene([ball], camera, scene.light, scene.ground_rgb, False, scene.horizon, scene.zenith), ball


@pytest.mark.parametrize("shiny", [True, False])
def test_xray_through_a_sphere_centre_is_its_diameter_times_its_attenuation(shiny):
    scene, ball = _one_object_scene(shiny)
    xray = scene_bands.xray(scene, trace(scene, 33))
    mu = MATERIALS["metal" if shiny else "rubber"].mu
    assert xray[16, 16] == pytest.approx(2 * ball.dims[0] * mu, rel=1e-6)
    assert xray.max() == xray[16, 16]  # no chord of a sphere is longer than its diameter
    assert xray[0, 0] == 0 and xray.min() == 0  # rays that miss meet no matter (the ground is not counted)


def test_thermal_is_in_kelvin_within_its_materials_range():
    scene, _ = _one_object_scene(shiny=False)
    tr = trace(scene, 33)
    air = 290.0
    kelvin = scene_bands.thermal(scene, tr, air)
    hottest = air + max(m.offset + m.heating for m in MATERIALS.values())
    assert kelvin.dtype == np.float32 and (kelvin >= air - SKY_DROP - 1e-3).all() and (kelvin <= hottest).all()
    sky = (tr.which == -1).reshape(33, 33)
    assert sky.any() and np.allclose(kelvin[sky], air - SKY_DROP)
    # the ball's centre pixel: rubber at air + heating * sun, seen through air at its distance
    rubber, centre = MATERIALS["rubber"], 33 * 16 + 16
    surface = air + rubber.offset + rubber.heating * tr.sun[centre]
    emitted = rubber.emissivity * surface**4 + (1 - rubber.emissivity) * (air - SKY_DROP) ** 4
    through = math.exp(-tr.t[centre] / scene_bands.AIR_LENGTH)
    assert kelvin[16, 16] == pytest.approx((through * emitted + (1 - through) * air**4) ** 0.25, rel=1e-6)


def test_hyperspectral_is_lit_as_the_rgb_and_tells_materials_apart():
    out = render_scene(4, 32, BANDS)
    cube = out["hyperspectral"]
    assert cube.shape == (32, 32, HYPERSPECTRAL_BANDS) and cube.dtype == np.uint8
    sky = out["depth"] == 0
    # the sky has no material: its spectrum is its RGB's, and projects back to it
    assert sky.any() and np.abs(false_colour(cube[sky]).astype(int) - out["rgb"][sky]).max() <= 3
    rgb = out["rgb"].astype(float).mean(-1)  # brighter in RGB is brighter in the bands
    assert np.corrcoef(rgb.ravel(), false_colour(cube).astype(float).mean(-1).ravel())[0, 1] > 0.9
    metal, rubber = (_one_object_scene(shiny)[0] for shiny in (True, False))
    spectra = [scene_bands.hyperspectral(s, trace(s, 33), sky_colour)[16, 16] for s in (metal, rubber)]
    band = int(np.argmin(np.abs(scene_bands.WAVELENGTHS - 590)))
    ratio = [s[band] / s.max() for s in np.asarray(spectra, float)]
    assert ratio[1] < ratio[0]  # rubber's absorption line at 590 nm


def test_bands_are_opt_in_deterministic_and_leave_the_rest_unchanged():
    plain, extra = render_scene(7, 24), render_scene(7, 24, BANDS)
    for key, value in plain.items():
        assert np.array_equal(np.asarray(value), np.asarray(extra[key])) if isinstance(value, np.ndarray) \
            else value == extra[key]
    again = render_scene(7, 24, BANDS)
    assert all(np.array_equal(extra[k], again[k]) for k in BANDS)
    assert extra["xray"].shape == extra["thermal"].shape == (24, 24)
    # the ambient temperature varies between scenes
    assert len({round(float(render_scene(s, 8, ("thermal",))["thermal"].min()), 1) for s in range(4)}) > 1
