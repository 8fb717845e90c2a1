"""Renderers beyond single images: a point cloud as two scatter views, a time series as lines, a video as
a contact sheet, speech as its log-mel spectrogram, X-ray and thermal images colour-mapped, a hyperspectral
image in false colour.

Registered in :data:`fourm.viz.render.RENDERERS` like the others (the package ``fourm.viz`` imports this
module beside ``render.py``), drawn with numpy and Pillow only: a scatter of 1024 points is one array
assignment.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from fourm.data.points import NO_CLASS, check_points
from fourm.viz.render import RenderContext, _apply_colormap, _array_tile, _font, _font_px, _tag, class_colours, renderer

_BACKGROUND = (250, 250, 248)
_LINE_COLOURS = [(214, 39, 40), (44, 160, 44), (31, 119, 180)]  # per channel of a panel: x, y, z


def _scatter(panel: np.ndarray, u: np.ndarray, v: np.ndarray, depth: np.ndarray, colours: np.ndarray) -> None:
    """Draw points at ``u, v`` in [0, 1] (v down) on ``panel (h, w, 3)`` as 2x2 squares, far to near, so
    that near points cover far ones (numpy's fancy assignment keeps the last write of a pixel)."""
    h, w = panel.shape[:2]
    order = np.argsort(-depth, kind="stable")
    cols = np.clip((u[order] * (w - 2)).astype(np.intp), 0, w - 2)
    rows = np.clip((v[order] * (h - 2)).astype(np.intp), 0, h - 2)
    for dr in (0, 1):
        for dc in (0, 1):
            panel[rows + dr, cols + dc] = colours[order]


def _unit(values: np.ndarray, lo: float, span: float) -> np.ndarray:
    return (values - lo) / span


@renderer("points")
def render_points(value, context: RenderContext) -> Image.Image:
    """Left: the cloud seen from the front (x right, y up), in its colours; right: from above (x right,
    z down the tile: near the viewer at the bottom), in its class colours (grey: no class). One scale
    for both views and all axes, so shapes keep their proportions."""
    points = check_points(value, "points renderer")
    xyz, rgb, cls = points[:, :3], points[:, 3:6].clip(0, 255).astype(np.uint8), points[:, 6].astype(np.intp)
    size = context.size
    half = size // 2
    lo, hi = xyz.min(0), xyz.max(0)
    span = float((hi - lo).max()) or 1.0
    centre = (lo + hi) / 2
    x = _unit(xyz[:, 0], centre[0] - span / 2, span)
    y = _unit(xyz[:, 1], centre[1] - span / 2, span)
    z = _unit(xyz[:, 2], centre[2] - span / 2, span)
    tile = np.full((size, size, 3), _BACKGROUND, np.uint8)
    _scatter(tile[:, :half], x, 1 - y, -z, rgb)  # front: the nearest (largest z) drawn last
    labels = np.where(cls == NO_CLASS, 0, cls)
    colours = np.where((cls == NO_CLASS)[:, None], np.uint8(160), class_colours()[labels % 256])
    _scatter(tile[:, half:], x, z, y.copy() * -1 + 1, colours)  # top: the highest (largest y) drawn last
    image = Image.fromarray(tile)
    draw = ImageDraw.Draw(image)
    draw.line([(half, 0), (half, size)], fill=(200, 200, 200))
    font = _font(_font_px(size))
    _tag(draw, (2, size - 2), "front", (255, 255, 255), font, size)
    _tag(draw, (half + 2, size - 2), "top", (255, 255, 255), font, size)
    return image


@renderer("series")
def render_series(value, context: RenderContext) -> Image.Image:
    """A (T, C) signal as lines, three channels a panel (an IMU: accelerometer above, gyroscope below),
    each panel scaled to its own range (printed on it)."""
    series = np.asarray(value, dtype=np.float64)
    if series.ndim != 2 or min(series.shape) == 0 or not np.isfinite(series).all():
        raise ValueError(f"series renderer: expected finite values (T, C), got shape {series.shape}")
    size = context.size
    image = Image.new("RGB", (size, size), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = _font(_font_px(size))
    steps, channels = series.shape
    panels = -(-channels // 3)
    height = size / panels
    u = np.linspace(2, size - 3, steps) if steps > 1 else np.full(1, size / 2)
    for p in range(panels):
        block = series[:, 3 * p: 3 * p + 3]
        lo, hi = float(block.min()), float(block.max())
        pad = (hi - lo) * 0.08 or 1.0
        top, bottom = p * height + 4, (p + 1) * height - 4
        v = bottom - (block - (lo - pad)) / (hi - lo + 2 * pad) * (bottom - top)  # (T, c)
        if p:
            draw.line([(0, p * height), (size, p * height)], fill=(200, 200, 200))
        for c in range(block.shape[1]):  # a few channels, each one polyline of T vertices
            draw.line(list(zip(u.tolist(), v[:, c].tolist(), strict=True)), fill=_LINE_COLOURS[c], width=1)
        _tag(draw, (2, bottom + 2), f"ch {3 * p}-{3 * p + block.shape[1] - 1}: {lo:.3g}..{hi:.3g}",
             (255, 255, 255), font, size)
    return image


@renderer("frames")
def render_frames(value, context: RenderContext) -> Image.Image:
    """A video ``(F, H, W, 3)`` as a contact sheet: frames left to right, top to bottom, numbered."""
    video = np.asarray(value)
    if video.ndim != 4 or video.shape[-1] != 3 or len(video) == 0:
        raise ValueError(f"frames renderer: expected frames (F, H, W, 3), got shape {video.shape}")
    size = context.size
    columns = math.ceil(math.sqrt(len(video)))
    cell = size // columns
    image = Image.new("RGB", (size, size), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = _font(max(8, _font_px(size) * 2 // 3))
    for i, frame in enumerate(video.astype(np.uint8)):  # F frames, one paste each
        row, col = divmod(i, columns)
        image.paste(Image.fromarray(frame).resize((cell - 2, cell - 2), Image.Resampling.BOX),
                    (col * cell + 1, row * cell + 1))
        draw.text((col * cell + 3, row * cell + 2), str(i), fill=(255, 255, 255), font=font)
    return image
# magma-like anchors, dark (the floor: silence) to bright (loud)
_RAMP = np.array([(0, 0, 4), (80, 18, 123), (182, 54, 121), (251, 136, 97), (252, 253, 191)], np.float64)


def spectrogram_image(features: np.ndarray, size: int, floor_db: float, label: str = "") -> Image.Image:
    """A log-mel spectrogram ``(T, n_mels)`` in dB as a square tile: time to the right, pitch up, colour
    from ``floor_db`` (dark) to the clip's peak (bright)."""
    db = np.asarray(features, dtype=np.float64)
    if db.ndim != 2 or min(db.shape) == 0 or not np.isfinite(db).all():
        raise ValueError(f"spectrogram: expected finite values (T, n_mels), got shape {db.shape}")
    top = max(float(db.max()), floor_db + 1.0)
    level = np.clip((db.T[::-1] - floor_db) / (top - floor_db), 0, 1) * (len(_RAMP) - 1)  # (n_mels, T), low bins down
    low = np.minimum(level.astype(np.intp), len(_RAMP) - 2)
    frac = (level - low)[..., None]
    pixels = (_RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac).astype(np.uint8)
    image = Image.fromarray(pixels).resize((size, size), Image.NEAREST)
    if label:
        _tag(ImageDraw.Draw(image), (2, size - 2), label, (255, 255, 255), _font(_font_px(size)), size)
    return image


@renderer("speech")
def render_speech(value, context: RenderContext) -> Image.Image:
    """Audio (16 kHz samples) as its log-mel spectrogram (the tokenizer's features), with its length."""
    from fourm.data.audio import SAMPLE_RATE, MelSpec, log_mel, to_float

    audio = to_float(value)  # the clear error on a bad value, before librosa sees it
    spec = MelSpec()
    return spectrogram_image(log_mel(audio, spec), context.size, spec.floor_db, f"{len(audio) / SAMPLE_RATE:.2f} s")


def _measure(value, what: str) -> np.ndarray:
    image = np.asarray(value, dtype=np.float64)
    if image.ndim != 2 or image.size == 0 or not np.isfinite(image).all():
        raise ValueError(f"{what} renderer: expected finite values (H, W), got shape {image.shape}")
    return image


def _labelled(colours: np.ndarray, context: RenderContext, label: str) -> Image.Image:
    tile = _array_tile(colours, context.size)
    _tag(ImageDraw.Draw(tile), (2, context.size - 2), label, (255, 255, 255), _font(_font_px(context.size)),
         context.size)
    return tile


@renderer("xray")
def render_xray(value, context: RenderContext) -> Image.Image:
    """An attenuation integral as a radiograph: ``1 - exp(-a)``, the share of the beam the matter stops, on
    one fixed scale (bone: dense white, nothing black), so that two pictures compare by eye."""
    attenuation = _measure(value, "xray")
    stopped = 1 - np.exp(-np.clip(attenuation, 0, None))
    return _labelled(_apply_colormap(stopped, "bone"), context, f"max {attenuation.max():.2f}")


@renderer("thermal")
def render_thermal(value, context: RenderContext) -> Image.Image:
    """Kelvin in inferno (cold dark, hot bright), stretched between the image's 1st and 99th percentiles, as
    thermal cameras show a scene; the range is printed on the tile."""
    kelvin = _measure(value, "thermal")
    lo, hi = np.percentile(kelvin, [1, 99])
    t = (kelvin - lo) / (hi - lo) if hi > lo else np.full_like(kelvin, 0.5)
    return _labelled(_apply_colormap(t, "inferno"), context, f"{lo:.0f}..{hi:.0f} K")


@renderer("spectral")
def render_spectral(value, context: RenderContext) -> Image.Image:
    """A hyperspectral image ``(H, W, C)`` in false colour: the RGB its spectra imply
    (:func:`fourm.data.spectra.false_colour`)."""
    from fourm.data.spectra import false_colour

    cube = np.asarray(value)
    if cube.ndim != 3 or cube.shape[-1] < 3 or cube.dtype != np.uint8:
        raise ValueError(f"spectral renderer: expected uint8 bands (H, W, C >= 3), got {cube.dtype} {cube.shape}")
    return _labelled(false_colour(cube), context, f"{cube.shape[-1]} bands")
