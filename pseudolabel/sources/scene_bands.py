"""Image-like series a scene adds when asked (``Scenes(series=...)``): X-ray, thermal infrared, hyperspectral.

Each is exact for the scene's analytic objects, from the same ray cast as the RGB (``scenes.trace``):

* ``xray``: the line integral of attenuation along each camera ray, ``sum_k mu_k * L_k`` (Beer-Lambert: a
  radiograph records ``exp(-value)``), with ``L_k`` the length of the ray inside object ``k`` from its exact
  entry and exit points (:func:`chord`: every object is a convex solid). Attenuation ``mu`` is by material.
  The ground is left out: a half-space is infinitely thick along any ray that reaches it, so it is taken as
  radiolucent, as a radiograph's table is. ``float32 (H, W)``, 0 where nothing is in the way.
* ``thermal``: the brightness temperature in kelvin a long-wave camera reads. A surface is at the scene's
  ambient temperature (drawn per scene) plus its material's offset and its material's solar heating (times
  the sun's cosine on it, 0 in shadow); it emits ``eps T^4`` and reflects ``(1 - eps)`` of the cold sky
  (Stefan-Boltzmann, so temperatures mix as fourth powers); the air between absorbs with distance
  (``exp(-t / AIR_LENGTH)``) and emits at ambient. The sky reads ``SKY_DROP`` below ambient.
  ``float32 (H, W)``.
* ``hyperspectral``: ``HYPERSPECTRAL_BANDS`` bands of 400-710 nm (``fourm.data.spectra``), lit exactly as
  the RGB is (same shading, highlights, fog and sky). A surface's reflectance is its RGB albedo's spectrum
  (:func:`fourm.data.spectra.rgb_basis`) times its material's spectral signature, so two objects of one
  colour and different materials differ in the bands while their RGB is the same. Stored as the RGB:
  ``uint8 (H, W, C)``, the square root of linear radiance.

Materials follow CLEVR's: a shiny object is metal, a matte one rubber. The ambient temperature comes from a
random stream of its own (seeded by the scene's seed), so asking for these series leaves every other
series of a scene byte-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from einops import einsum, rearrange

from fourm.data.spectra import WAVELENGTHS, rgb_basis

SKY_DROP = 40.0  # K: a clear sky's long-wave radiance is that of a body this far below the air
AIR_LENGTH = 40.0  # m: distance over which the air absorbs 1 - 1/e of the long-wave radiance
AMBIENT_K = (268.0, 308.0)  # the range of a scene's air temperature: a frosty to a hot day


@dataclass(frozen=True)
class Material:
    """What an X-ray, a thermal camera and a spectrometer see of a surface."""

    mu: float  # X-ray attenuation, 1/m
    offset: float  # K above ambient in the shade
    heating: float  # K more where the sun shines straight on it
    emissivity: float  # long-wave; the rest reflects the sky
    signature: tuple[float, float, float]  # reflectance times 1 - depth * exp(-((lambda - centre) / width)^2 / 2)


MATERIALS = {
    # polished metal: dense, warm from inside the scene's machines, mirrors the cold sky in the infrared,
    # reflects a little more towards the red (as copper and gold do, faintly)
    "metal": Material(mu=2.5, offset=12.0, heating=6.0, emissivity=0.3, signature=(-0.25, 430.0, 60.0)),
    # rubber: light, at air temperature, dark in the infrared and warmed by the sun; a narrow absorption
    # line at 590 nm tells it from a metal of the same colour
    "rubber": Material(mu=0.6, offset=0.0, heating=18.0, emissivity=0.95, signature=(0.45, 590.0, 12.0)),
    "ground": Material(mu=0.0, offset=2.0, heating=10.0, emissivity=0.9, signature=(0.0, 550.0, 1.0)),
}


def material_of(obj) -> Material:
    return MATERIALS["metal" if obj.shiny else "rubber"]


# ----------------------------------------------------------------------------- chords
def _overlap(lo1, hi1, lo2, hi2) -> np.ndarray:
    return np.maximum(0.0, np.minimum(hi1, hi2) - np.maximum(lo1, lo2))


def _slab(o_y, d_y, h: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``t`` interval where a ray is between heights 0 and ``h`` (all or nothing for level rays)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t0, t1 = -o_y / d_y, (h - o_y) / d_y
    level = d_y == 0
    inside = (o_y >= 0) & (o_y <= h)
    lo = np.where(level, np.where(inside, -np.inf, np.inf), np.minimum(t0, t1))
    hi = np.where(level, np.where(inside, np.inf, -np.inf), np.maximum(t0, t1))
    return lo, hi


def chord(shape: str, o: np.ndarray, d: np.ndarray, r: float, h: float) -> np.ndarray:
    """The length of each ray ``(o, d)`` (local frame, ``(3, N)`` or ``(3, 1)``, ``|d| = 1``) inside the solid
    ``shape`` of radius ``r`` and height ``h`` standing on y = 0, counted from ``t = 0`` on: ``(N,)``.

    Every shape is convex, so a ray is inside it on one interval ``[t_in, t_out]``: the solid is the
    intersection of a quadric's inside (or the box's three slabs) with the slab ``0 <= y <= h``.
    """
    (ox, oy, oz), (dx, dy, dz) = o, d
    lo, hi = _slab(oy, dy, h)
    lo = np.maximum(lo, 0.0)  # only what lies ahead of the eye
    if shape == "cube":  # [-r, r] x [0, h] x [-r, r]
        for oa, da in ((ox, dx), (oz, dz)):
            a_lo, a_hi = _slab(oa + r, da, 2 * r)
            lo, hi = np.maximum(lo, a_lo), np.minimum(hi, a_hi)
        return np.maximum(0.0, hi - lo)
    if shape == "sphere":  # |p - (0, r, 0)|^2 <= r^2; the slab is the sphere's own height
        oyc = oy - r
        a, b, c = dx * dx + dy * dy + dz * dz, ox * dx + oyc * dy + oz * dz, ox * ox + oyc * oyc + oz * oz - r * r
    elif shape == "cylinder":  # x^2 + z^2 <= r^2
        a, b, c = dx * dx + dz * dz, ox * dx + oz * dz, ox * ox + oz * oz - r * r
    elif shape == "cone":  # x^2 + z^2 <= k^2 (h - y)^2, k = r / h: the lower nappe, inside the slab
        k2, w = (r / h) ** 2, h - oy
        a, b, c = dx * dx + dz * dz - k2 * dy * dy, ox * dx + oz * dz + k2 * w * dy, ox * ox + oz * oz - k2 * w * w
    else:
        raise ValueError(f"no chord for shape {shape!r}")
    # the quadric's inside along the ray: a t^2 + 2 b t + c <= 0
    a, b, c = np.broadcast_arrays(a, b, c)
    disc = b * b - a * c
    sq = np.sqrt(np.maximum(disc, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        r1, r2 = (-b - sq) / a, (-b + sq) / a
    r1, r2 = np.minimum(r1, r2), np.maximum(r1, r2)
    opens_up = a > 0  # between the roots (empty without them)
    between = np.where(opens_up & (disc > 0), _overlap(r1, r2, lo, hi), 0.0)
    # a < 0 (a cone's axis-steep rays): inside beyond the roots, on both nappes; the slab keeps the lower one.
    # Without real roots the whole line is inside; a = 0 (a ray along the cylinder's axis) is inside where c < 0
    outside = np.where(disc > 0, _overlap(-np.inf, r1, lo, hi) + _overlap(r2, np.inf, lo, hi), np.maximum(0.0, hi - lo))
    along = np.where(c < 0, np.maximum(0.0, hi - lo), 0.0)
    return np.where(opens_up, between, np.where(a < 0, outside, along))


# ----------------------------------------------------------------------------- the three series
def xray(scene, tr) -> np.ndarray:
    """``float32 (H, W)``: the attenuation integral of each pixel's ray through the scene's objects."""
    cam, size = scene.camera, tr.size
    total = np.zeros(tr.d.shape[1])
    d_img = rearrange(tr.d, "c (h w) -> c h w", h=size)
    for obj in scene.objects:
        rows, cols = cam.window(obj.corners(), size)  # rays outside cannot pass through the object
        window = d_img[:, rows, cols]
        if not window.size:
            continue
        rot = obj.rot
        length = chord(obj.shape, rot @ (cam.eye - obj.pos), rot @ window.reshape(3, -1), *obj.dims)
        block = np.zeros((size, size))
        block[rows, cols] = length.reshape(window.shape[1:])
        total += material_of(obj).mu * block.reshape(-1)
    return total.reshape(size, size).astype(np.float32)


def ambient(rng: np.random.Generator) -> float:
    return float(rng.uniform(*AMBIENT_K))


def surface_temperature(material: Material, air: float, sun: np.ndarray) -> np.ndarray:
    return air + material.offset + material.heating * sun


def thermal(scene, tr, air: float) -> np.ndarray:
    """``float32 (H, W)``: the brightness temperature (K) of each pixel at air temperature ``air``."""
    sky = air - SKY_DROP
    emitted = np.full(tr.d.shape[1], sky**4)
    surfaces = [(MATERIALS["ground"], tr.which == 0)]
    surfaces += [(material_of(obj), mine) for obj, mine in zip(scene.objects, tr.masks, strict=True)]
    for material, mine in surfaces:
        eps = material.emissivity
        emitted[mine] = eps * surface_temperature(material, air, tr.sun[mine]) ** 4 + (1 - eps) * sky**4
    hit = tr.hit
    through = np.exp(-np.where(hit, tr.t, 0.0) / AIR_LENGTH)  # the sky's reading already holds the air's
    seen = through * emitted + (1 - through) * air**4
    return (seen ** 0.25).reshape(tr.size, tr.size).astype(np.float32)


def signature(material: Material, bands: np.ndarray = WAVELENGTHS) -> np.ndarray:
    depth, centre, width = material.signature
    return 1.0 - depth * np.exp(-0.5 * ((bands - centre) / width) ** 2)


def hyperspectral(scene, tr, sky_colour) -> np.ndarray:
    """``uint8 (H, W, C)``: the scene's spectral radiance, gamma-encoded as the RGB is.
    ``sky_colour``: the scenes' linear sky colour along directions (the RGB's sky)."""
    basis = rgb_basis().astype(np.float32)  # (C, 3); float32: 8-bit bands need no more, and it is 2x faster

    def to_bands(rgb: np.ndarray) -> np.ndarray:  # linear RGB (3, ...) -> its spectrum (C, ...)
        return einsum(basis, rgb.astype(np.float32), "c k, k ... -> c ...")

    reflectance = to_bands(tr.albedo)  # (C, N)
    surfaces = [(MATERIALS["ground"], tr.which == 0)]
    surfaces += [(material_of(obj), mine) for obj, mine in zip(scene.objects, tr.masks, strict=True)]
    for material, mine in surfaces:
        reflectance[:, mine] *= signature(material).astype(np.float32)[:, None]
    radiance = tr.light(reflectance, to_bands(scene.horizon**2), to_bands(sky_colour(scene, tr.d)))
    cube = np.round(np.sqrt(np.clip(radiance, 0, 1)) * 255).astype(np.uint8)
    return rearrange(cube, "c (h w) -> h w c", h=tr.size)
