"""Hyperspectral bands, and the one map between spectra and RGB that every side shares.

A hyperspectral image holds ``HYPERSPECTRAL_BANDS`` planes, band ``i`` centred on ``WAVELENGTHS[i]`` nm
(400-710 nm in 10 nm steps, the visible range of common push-broom sensors). Values are kept as the RGB
is: linear radiance, gamma-encoded as ``round(sqrt(radiance) * 255)`` in ``uint8 (H, W, C)``.

Spectra and colours meet through :func:`rgb_basis`: three smooth bands (red, green, blue) that sum to 1 at
every wavelength. The scenes turn a linear RGB albedo into a reflectance spectrum with it (a white surface
reflects a flat 1), and :func:`false_colour` projects a spectrum back with its pseudo-inverse, so a
surface's false colour is the RGB its spectrum came from, up to what its material adds (CIE colour
matching would need a display model that these scenes do not have). Defined in the core: the scenes
(``pseudolabel``), the renderer and the evaluation all use it, and the core imports none of them.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from einops import einsum

from fourm.modalities import HYPERSPECTRAL_BANDS

WAVELENGTHS = 400.0 + 10.0 * np.arange(HYPERSPECTRAL_BANDS)  # nm, band centres
_RGB_PEAKS, _RGB_WIDTHS = (610.0, 545.0, 455.0), (40.0, 35.0, 30.0)  # nm: where red, green, blue reflect


@cache
def rgb_basis(bands: int = HYPERSPECTRAL_BANDS) -> np.ndarray:
    """``(bands, 3)``: the spectrum of unit linear red, green and blue; rows sum to 1 (white is flat)."""
    wavelengths = 400.0 + 10.0 * np.arange(bands)
    bumps = np.exp(-0.5 * ((wavelengths[:, None] - np.array(_RGB_PEAKS)) / np.array(_RGB_WIDTHS)) ** 2)
    return bumps / bumps.sum(1, keepdims=True)


@cache
def _projection(bands: int) -> np.ndarray:
    return np.linalg.pinv(rgb_basis(bands))  # (3, bands): rgb_basis's left inverse


def to_linear(cube: np.ndarray) -> np.ndarray:
    """Stored ``uint8`` bands -> linear radiance, float64 in [0, 1]."""
    return (np.asarray(cube, np.float64) / 255.0) ** 2


def false_colour(cube: np.ndarray) -> np.ndarray:
    """A stored hyperspectral image ``uint8 (..., C)`` -> the RGB its spectra imply, ``uint8 (..., 3)``."""
    cube = np.asarray(cube)
    rgb = einsum(to_linear(cube), _projection(cube.shape[-1]), "... c, k c -> ... k")
    return np.round(np.sqrt(np.clip(rgb, 0, 1)) * 255).astype(np.uint8)


def spectral_angle(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """The angle in degrees between the linear spectra of stored images ``uint8 (..., C)``, per pixel
    (``...``): the spectral angle mapper's measure, blind to brightness. A pixel dark in both is 0; dark in
    one, 90."""
    p, t = to_linear(pred), to_linear(true)
    dot = (p * t).sum(-1)
    norms = np.linalg.norm(p, axis=-1) * np.linalg.norm(t, axis=-1)
    cos = np.where(norms > 0, dot / np.maximum(norms, 1e-300), (np.abs(p).sum(-1) == np.abs(t).sum(-1)) * 1.0)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
