"""Modality -> picture, so a person can check labels and generations by eye.

Each corpus entry names a renderer (``CorpusModality.render`` in :mod:`fourm.modalities`); this
module holds one function per renderer name in ``RENDERERS``. A renderer maps a value in the corpus'
in-memory convention to a square RGB tile of ``context.size`` pixels. :func:`sample_grid` lays out
every modality of one sample (``fourm show``); :func:`image_grid` is the general layout that
generation and report grids use (rows = samples, columns = modalities).

matplotlib is imported inside the functions that need a colour map, so ``import fourm.viz.render``
costs only numpy and Pillow.
"""

from __future__ import annotations

import colorsys
import math
import textwrap
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fourm.modalities import corpus_modality
from fourm.registry import Registry


@dataclass(frozen=True)
class RenderContext:
    """What a renderer may know beyond the value itself.

    Args:
        size: side of the square tile in pixels.
        rgb: the sample's image ``uint8 (H, W, 3)``; boxes and poses are drawn over it.
        classes: label sets by modality key, ``{"semseg": [names], "det": [names]}``, for legends.
        modality: the corpus key being drawn, which picks its entry of ``classes``.
    """

    size: int = 192
    rgb: np.ndarray | Image.Image | None = None
    classes: dict[str, list[str]] = field(default_factory=dict)
    modality: str | None = None

    @property
    def class_names(self) -> list[str]:
        return list(self.classes.get(self.modality) or [])


Renderer = Callable[[object, RenderContext], Image.Image]
RENDERERS: Registry[Renderer] = Registry("renderer", sort=True)

_PAD = (32, 32, 32)  # letterbox colour: darker than any grey tile, lighter than "unknown" black
_NO_IMAGE = (128, 128, 128)  # what boxes and poses are drawn on when the sample has no rgb


def renderer(name: str):
    """Decorator: register ``fn(value, context) -> Image`` as the renderer ``name``."""

    def register(fn: Renderer) -> Renderer:
        if name in RENDERERS:
            raise ValueError(f"renderer {name!r} is registered twice")
        RENDERERS[name] = fn
        return fn

    return register


def render(name: str, value, **context) -> Image.Image:
    """Draw ``value`` of corpus modality ``name`` as an RGB tile; ``context`` fills :class:`RenderContext`."""
    return RENDERERS[corpus_modality(name).render](value, RenderContext(modality=name, **context))


# ----------------------------------------------------------------------------- drawing helpers
@cache
def _font(px: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1 has only the fixed-size bitmap font
        return ImageFont.load_default()


def _font_px(size: int) -> int:
    return max(10, size // 15)


def _line_height(font) -> int:
    top, bottom = font.getbbox("Ag|")[1::2]
    return bottom - top + 3


def _ink(colour) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``colour``."""
    r, g, b = colour[:3]
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def _fit(image: Image.Image, size: int, smooth: bool = True) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Letterbox ``image`` into a square tile; also return where it landed, ``(x0, y0, w, h)``.

    Upscaling is always NEAREST so that 64 px labels stay crisp; downscaling averages (``smooth``)
    except for id maps, where an average of two class colours would be a third, wrong class.
    """
    w, h = image.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.BOX if smooth and scale < 1 else Image.Resampling.NEAREST
    tile = Image.new("RGB", (size, size), _PAD)
    x0, y0 = (size - new[0]) // 2, (size - new[1]) // 2
    tile.paste(image.convert("RGB").resize(new, resample), (x0, y0))
    return tile, (x0, y0, *new)


def _array_tile(array: np.ndarray, size: int, smooth: bool = True) -> Image.Image:
    return _fit(Image.fromarray(np.ascontiguousarray(array)), size, smooth)[0]


def _ellipsize(text: str, font, width: float) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _text_tile(lines: list[str], size: int, background=(245, 245, 240), wrap: bool = True) -> Image.Image:
    """Lines of text on a plain tile, wrapped to its width and cut with an ellipsis at the bottom."""
    font = _font(_font_px(size))
    margin = max(4, size // 32)
    width = size - 2 * margin
    per_char = font.getlength("abcdefghijklmnopqrstuvwxyz") / 26
    if wrap:
        chars = max(8, int(width / per_char))
        lines = [part for line in lines for part in (textwrap.wrap(line, chars) or [""])]
    step = _line_height(font)
    fits = max(1, (size - 2 * margin) // step)
    if len(lines) > fits:
        last = lines[fits - 1]
        while last and font.getlength(last + " …") > width:
            last = last[:-1]
        lines = [*lines[: fits - 1], last + " …"]
    tile = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(tile)
    ink = _ink(background)
    for i, line in enumerate(lines):
        draw.text((margin, margin + i * step), _ellipsize(line, font, width), fill=ink, font=font)
    return tile


def _tag(draw: ImageDraw.ImageDraw, xy, text: str, colour, font, bounds: int) -> None:
    """A filled label at ``xy`` (its bottom-left corner), kept inside the tile."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 4, bottom - top + 3
    x = min(max(0, xy[0]), bounds - w)
    y = xy[1] - h if xy[1] - h >= 0 else xy[1]
    draw.rectangle((x, y, x + w, y + h), fill=tuple(colour))
    draw.text((x + 2 - left, y + 1 - top), text, fill=_ink(colour), font=font)


def _backdrop(context: RenderContext) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The sample's image as a tile (or plain grey), and the rectangle normalised coordinates map to."""
    if context.rgb is None:
        return Image.new("RGB", (context.size,) * 2, _NO_IMAGE), (0, 0, context.size, context.size)
    image = context.rgb if isinstance(context.rgb, Image.Image) else Image.fromarray(np.asarray(context.rgb))
    return _fit(image, context.size)


@cache
def _colormap(name: str) -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def _apply_colormap(t: np.ndarray, name: str) -> np.ndarray:
    """``t`` in [0, 1] -> ``uint8 (..., 3)``."""
    return _colormap(name)[np.clip(np.nan_to_num(t) * 255, 0, 255).round().astype(np.intp)]


@cache
def class_colours(n: int = 256) -> np.ndarray:
    """A fixed colour per class id, ``uint8 (n, 3)``, the same in every picture.

    Golden-ratio hue steps keep neighbouring ids (often related classes) far apart in hue; value and
    saturation cycle too, so ids a full hue turn apart still differ. 255, the usual "unlabelled" id,
    is black.
    """
    colours = []
    for i in range(n):
        hue = (i * 0.618033988749895) % 1.0
        value = (0.95, 0.75, 0.55)[i % 3]
        saturation = (0.85, 0.55)[(i // 3) % 2]
        colours.append([round(c * 255) for c in colorsys.hsv_to_rgb(hue, saturation, value)])
    table = np.array(colours, dtype=np.uint8)
    if n > 255:
        table[255] = 0
    return table


@cache
def _instance_colours() -> np.ndarray:
    # Random colours (seeded, so fixed) tell adjacent instances apart better than any hue order.
    table = np.random.default_rng(2406).integers(48, 256, size=(65536, 3), dtype=np.uint8)
    table[0] = 0
    return table


def _label_colour(label: str, names: list[str]) -> tuple[int, int, int]:
    index = names.index(label) if label in names else zlib.crc32(label.encode())  # crc32: stable across runs
    return tuple(int(c) for c in class_colours()[index % 255])


# ----------------------------------------------------------------------------- dense maps
@renderer("rgb")
def render_rgb(value, context: RenderContext) -> Image.Image:
    image = value if isinstance(value, Image.Image) else Image.fromarray(np.asarray(value, dtype=np.uint8))
    return _fit(image, context.size)[0]


@renderer("depth")
def render_depth(value, context: RenderContext) -> Image.Image:
    """Near = bright (magma); range from percentiles of valid pixels; unknown (0) black.

    The colour follows inverse depth, as depth viewers do: it spends the colour range on the near
    scene, where the detail is, instead of on the far background.
    """
    depth = np.asarray(value, dtype=np.float32)
    valid = np.isfinite(depth) & (depth > 0)
    colours = np.zeros((*depth.shape, 3), np.uint8)
    if valid.any():
        inverse = 1.0 / depth[valid]
        lo, hi = np.percentile(inverse, [2, 98])
        t = (inverse - lo) / (hi - lo) if hi > lo else np.ones_like(inverse)
        # the colour map starts at 0.15: its first entries are near black, which would read as unknown
        colours[valid] = _apply_colormap(0.15 + 0.85 * np.clip(t, 0, 1), "magma")
    return _array_tile(colours, context.size)


@renderer("normal")
def render_normal(value, context: RenderContext) -> Image.Image:
    """``(n + 1) / 2`` as RGB: x right -> red, y up -> green, z to the viewer -> blue; unknown black."""
    normal = np.asarray(value, dtype=np.float32)
    # unknown is the zero vector, stored and read back as a length of ~0.007, far from unit length
    known = np.linalg.norm(normal, axis=-1) > 0.5
    colours = np.clip((normal + 1) * 127.5, 0, 255).round().astype(np.uint8)
    colours[~known] = 0
    return _array_tile(colours, context.size)


@renderer("semseg")
def render_semseg(value, context: RenderContext) -> Image.Image:
    """Class colours from :func:`class_colours`; a legend of the largest classes when names are known."""
    ids = np.asarray(value).astype(np.intp)
    tile = _array_tile(class_colours()[ids % 256], context.size, smooth=False)
    names = context.class_names
    if names:
        present, counts = np.unique(ids, return_counts=True)
        order = [int(present[i]) for i in np.argsort(-counts, kind="stable")]
        entries = [(names[i] if i < len(names) else str(i), class_colours()[i % 256]) for i in order]
        tile = _legend(tile, entries)
    return tile


def _legend(tile: Image.Image, entries: list[tuple[str, np.ndarray]]) -> Image.Image:
    """Swatch + name rows on a translucent panel in the bottom-left corner (at most ~40% of the tile)."""
    size = tile.size[0]
    font = _font(max(9, _font_px(size) - 1))
    step = _line_height(font)
    rows = max(1, int(0.4 * size) // step)
    if len(entries) > rows:
        entries = [*entries[: rows - 1], (f"+{len(entries) - rows + 1} more", None)]
    swatch = step - 3
    width = min(size, 8 + swatch + max(int(font.getlength(name)) for name, _ in entries))
    top = size - len(entries) * step - 4
    overlay = Image.new("RGBA", tile.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    draw.rectangle((0, top, width + 4, size), fill=(0, 0, 0, 160))
    for i, (name, colour) in enumerate(entries):
        y = top + 2 + i * step
        if colour is not None:
            fill = (*map(int, colour), 255)
            draw.rectangle((3, y + 1, 3 + swatch, y + swatch), fill=fill, outline=(255,) * 4)
        draw.text((7 + swatch, y), _ellipsize(name, font, size - swatch - 10), fill=(255,) * 4, font=font)
    return Image.alpha_composite(tile.convert("RGBA"), overlay).convert("RGB")


@renderer("instances")
def render_instances(value, context: RenderContext) -> Image.Image:
    ids = np.asarray(value).astype(np.intp) % 65536
    return _array_tile(_instance_colours()[ids], context.size, smooth=False)


@renderer("edges")
def render_edges(value, context: RenderContext) -> Image.Image:
    edges = np.asarray(value)
    return _array_tile(np.where(edges > 0, 255, 0).astype(np.uint8), context.size)


@renderer("features")
def render_features(value, context: RenderContext) -> Image.Image:
    """The first three principal components of the patch features as RGB (each stretched to [0, 1])."""
    features = np.asarray(value, dtype=np.float32)
    if features.ndim != 3:
        raise ValueError(f"features must be (h, w, C), got shape {features.shape}")
    h, w, c = features.shape
    x = features.reshape(h * w, c)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    basis = vt[:3]
    # SVD leaves each component's sign free; fix it so the same features always give the same colours
    basis = basis * np.sign(basis[np.arange(len(basis)), np.abs(basis).argmax(axis=1)])[:, None]
    projected = np.zeros((h * w, 3), np.float32)
    projected[:, : len(basis)] = x @ basis.T
    lo, hi = np.percentile(projected, [1, 99], axis=0)
    stretched = (projected - lo) / np.where(hi > lo, hi - lo, 1.0)
    rgb = (np.clip(stretched, 0, 1) * 255).round().astype(np.uint8).reshape(h, w, 3)
    return _array_tile(rgb, context.size, smooth=False)


@renderer("vector")
def render_vector(value, context: RenderContext) -> Image.Image:
    """A diverging heat map: rows of a (C,) vector folded to a block, or the (L, C) matrix as is."""
    values = np.asarray(value, dtype=np.float32)
    shape = values.shape
    if values.ndim == 1:  # fold into rows of 32 so a 768-d vector is a readable block, not a hairline
        cols = min(32, max(1, values.size))
        values = np.pad(values, (0, -values.size % cols), constant_values=np.nan).reshape(-1, cols)
    elif values.ndim != 2:
        raise ValueError(f"a vector must be (C,) or (L, C), got shape {shape}")
    finite = values[np.isfinite(values)]
    scale = float(np.percentile(np.abs(finite), 99)) if finite.size else 0.0
    colours = _apply_colormap(0.5 + 0.5 * values / (scale or 1.0), "RdBu_r")
    colours[~np.isfinite(values)] = _PAD
    size = context.size
    font = _font(_font_px(size))
    caption_h = _line_height(font) + 4
    heat = Image.fromarray(colours).resize((size, size - caption_h), Image.Resampling.NEAREST)
    tile = Image.new("RGB", (size, size), (245, 245, 240))
    tile.paste(heat, (0, caption_h))
    norm = float(np.linalg.norm(finite)) if finite.size else 0.0
    caption = f"{'x'.join(map(str, shape))}  |v|={norm:.3g}  ±{scale:.2g}"
    ImageDraw.Draw(tile).text((3, 2), _ellipsize(caption, font, size - 6), fill=(0, 0, 0), font=font)
    return tile


# ----------------------------------------------------------------------------- structured labels
@renderer("text")
def render_text(value, context: RenderContext) -> Image.Image:
    return _text_tile(str(value).splitlines() or [""], context.size)


@renderer("metadata")
def render_metadata(value, context: RenderContext) -> Image.Image:
    lines = [f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in sorted(dict(value).items())]
    return _text_tile(lines or ["(no metadata)"], context.size, wrap=False)


@renderer("palette")
def render_palette(value, context: RenderContext) -> Image.Image:
    """One horizontal band per colour, most frequent on top, with its hex code."""
    size = context.size
    colours = [tuple(int(c) for c in rgb[:3]) for rgb in value]
    if not colours:
        return _text_tile(["(no colours)"], size)
    tile = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(tile)
    font = _font(_font_px(size))
    edges = np.linspace(0, size, len(colours) + 1).round().astype(int)
    for colour, top, bottom in zip(colours, edges[:-1], edges[1:], strict=True):
        draw.rectangle((0, top, size, bottom), fill=colour)
        text = "#{:02x}{:02x}{:02x}".format(*colour)
        draw.text((size / 2, (top + bottom) / 2), text, fill=_ink(colour), font=font, anchor="mm")
    return tile


@renderer("boxes")
def render_boxes(value, context: RenderContext) -> Image.Image:
    """Rectangles with ``label score`` tags over the image; colour by class (names in ``classes``)."""
    tile, (x0, y0, w, h) = _backdrop(context)
    draw = ImageDraw.Draw(tile)
    font = _font(max(9, _font_px(context.size) - 2))
    width = max(1, context.size // 96)
    names = context.class_names
    for obj in value:
        bx0, by0, bx1, by1 = (float(v) for v in obj["box"])
        rect = (x0 + bx0 * w, y0 + by0 * h, x0 + bx1 * w, y0 + by1 * h)
        label = str(obj.get("label", "?"))
        colour = _label_colour(label, names)
        draw.rectangle(rect, outline=colour, width=width)
        text = f"{label} {obj['score']:.2f}" if "score" in obj else label
        _tag(draw, (round(rect[0]), round(rect[1])), text, colour, font, context.size)
    if not value:
        _tag(draw, (2, context.size - 2), "no objects", (255, 255, 255), font, context.size)
    return tile


# A subset of mediapipe's POSE_CONNECTIONS (33 landmarks): face outline, arms, hands, torso, legs, feet.
POSE_CONNECTIONS = (
    (0, 1), (1, 2), (2, 3), (3, 7), (0, 4), (4, 5), (5, 6), (6, 8), (9, 10),
    (11, 12), (11, 13), (13, 15), (15, 17), (15, 19), (15, 21), (17, 19),
    (12, 14), (14, 16), (16, 18), (16, 20), (16, 22), (18, 20),
    (11, 23), (12, 24), (23, 24),
    (23, 25), (25, 27), (27, 29), (29, 31), (27, 31),
    (24, 26), (26, 28), (28, 30), (30, 32), (28, 32),
)  # fmt: skip
_LEFT, _RIGHT, _CENTRE = (255, 140, 0), (0, 200, 255), (255, 255, 255)  # mediapipe: odd ids are left
_VISIBLE = 0.5


def _side(a: int, b: int) -> tuple[int, int, int]:
    return _CENTRE if 0 in (a, b) or a % 2 != b % 2 else _LEFT if a % 2 else _RIGHT


@renderer("poses")
def render_poses(value, context: RenderContext) -> Image.Image:
    """Skeletons (left orange, right blue) and visible keypoints over the image; person boxes thin."""
    tile, (x0, y0, w, h) = _backdrop(context)
    draw = ImageDraw.Draw(tile)
    width = max(1, context.size // 80)
    radius = max(1.5, context.size / 110)
    for person in value:
        if "box" in person:
            bx0, by0, bx1, by1 = (float(v) for v in person["box"])
            draw.rectangle((x0 + bx0 * w, y0 + by0 * h, x0 + bx1 * w, y0 + by1 * h), outline=(255, 255, 0))
        points = [(x0 + float(k[0]) * w, y0 + float(k[1]) * h, float(k[2]) if len(k) > 2 else 1.0)
                  for k in person.get("keypoints", [])]
        for a, b in POSE_CONNECTIONS:
            if max(a, b) < len(points) and min(points[a][2], points[b][2]) >= _VISIBLE:
                draw.line((points[a][:2], points[b][:2]), fill=_side(a, b), width=width)
        for i, (x, y, visibility) in enumerate(points):
            if visibility >= _VISIBLE:
                dot = (x - radius, y - radius, x + radius, y + radius)
                draw.ellipse(dot, fill=_side(i, i), outline=(0, 0, 0))
    if not value:
        font = _font(_font_px(context.size))
        _tag(draw, (2, context.size - 2), "no people", (255, 255, 255), font, context.size)
    return tile


# ----------------------------------------------------------------------------- grids
def render_sample(sample: dict, modalities: list[str] | None = None, classes: dict | None = None,
                  size: int = 192) -> dict[str, Image.Image]:
    """``{modality: tile}`` for a corpus sample (default: every key not starting with ``__``)."""
    names = [k for k in sample if not k.startswith("__")] if modalities is None else list(modalities)
    context = {"size": size, "rgb": sample.get("rgb"), "classes": dict(classes or {})}
    return {name: render(name, sample[name], **context) for name in names}


def sample_grid(sample: dict, modalities: list[str] | None = None, classes: dict | None = None,
                size: int = 192, columns: int | None = None) -> Image.Image:
    """Every modality of one sample as titled tiles in a near-square grid, the sample key on top."""
    tiles = render_sample(sample, modalities, classes, size)
    names = list(tiles)
    columns = columns or max(1, math.ceil(math.sqrt(len(names))))
    chunks = [names[i: i + columns] for i in range(0, len(names), columns)]
    return image_grid([[tiles[n] for n in chunk] for chunk in chunks], titles=chunks,
                      caption=str(sample.get("__key__", "")) or None)


def image_grid(rows: list[list[Image.Image | None]], titles: list[list[str | None]] | None = None,
               row_titles: list[str] | None = None, column_titles: list[str] | None = None,
               caption: str | None = None, gap: int = 6) -> Image.Image:
    """Lay out images in rows, on white.

    Args:
        rows: ``rows[r][c]`` is an image or None (an empty cell); rows may differ in length.
        titles: a title above each cell, same shape as ``rows``.
        row_titles: a label left of each row (for generation grids: the sample).
        column_titles: a header above each column (for generation grids: the modality).
        caption: a line above everything.
    """
    ncols = max((len(r) for r in rows), default=0)
    cells = [[im for im in (r[c] for r in rows if c < len(r)) if im is not None] for c in range(ncols)]
    col_w = [max((im.width for im in column), default=0) for column in cells]
    row_h = [max((im.height for im in r if im is not None), default=0) for r in rows]
    font = _font(max(11, min(16, (max(col_w, default=0) or 192) // 14)))
    line = _line_height(font) + 2
    title_h = line if titles and any(t for r in titles for t in r) else 0
    left = gap + (max(int(font.getlength(t)) for t in row_titles) + gap if row_titles else 0)
    top = gap + (line if caption else 0) + (line if column_titles else 0)
    width = left + sum(col_w) + gap * ncols
    height = top + sum(h + title_h for h in row_h) + gap * len(rows)
    grid = Image.new("RGB", (max(width, 1), max(height, 1)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    xs = [left + sum(col_w[:c]) + gap * c for c in range(ncols)]
    if caption:
        draw.text((gap, gap), _ellipsize(caption, font, width - 2 * gap), fill=(0, 0, 0), font=font)
    for c, text in enumerate(column_titles or []):
        if c < ncols and text:
            draw.text((xs[c], top - line), _ellipsize(text, font, col_w[c]), fill=(0, 0, 0), font=font)
    y = top
    for r, row in enumerate(rows):
        if row_titles and r < len(row_titles) and row_titles[r]:
            middle = y + title_h + row_h[r] // 2
            draw.text((gap, middle), row_titles[r], fill=(0, 0, 0), font=font, anchor="lm")
        for c, image in enumerate(row):
            text = titles[r][c] if titles and r < len(titles) and c < len(titles[r]) else None
            if text:
                draw.text((xs[c], y), _ellipsize(text, font, col_w[c]), fill=(60, 60, 60), font=font)
            if image is not None:
                grid.paste(image.convert("RGB"), (xs[c], y + title_h))
        y += title_h + row_h[r] + gap
    return grid
