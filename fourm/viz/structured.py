"""Renderers of structured labels: a scene graph as nodes and labelled edges, a table as a grid of cells.

Registered in :data:`fourm.viz.render.RENDERERS` like the others (the package ``fourm.viz`` imports this
module beside ``render.py``), drawn with Pillow. A node or cell that names one of the scenes' colours is
filled with it, so a generated graph or table can be checked against the image at a glance.
"""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from fourm.data.scenes import COLOURS, TABLE_COLUMNS
from fourm.viz.render import RenderContext, _fit, _font, _font_px, _ink, _label_colour, _tag, _text_tile, renderer

_BACKGROUND = (250, 250, 248)
_EDGE = (90, 90, 90)
_GRID = (200, 200, 200)


def _fill(word: str | None) -> tuple[int, int, int]:
    """The scene colour a word names, else a fixed colour of the word (light grey for none)."""
    if not word:
        return (225, 225, 225)
    return COLOURS.get(str(word), _label_colour(str(word), []))


@renderer("graph")
def render_graph(value, context: RenderContext) -> Image.Image:
    """Nodes on a circle, the first at the left and the rest clockwise (the scenes list them left to right),
    each a disc in its colour labelled ``size class``; one line per related pair, labelled with every
    relation of the pair, a line each, read from subject to object, an arrowhead at the object."""
    size = context.size
    nodes, edges = list(value.get("nodes", [])), list(value.get("edges", []))
    if not nodes:
        return _text_tile(["(no objects)"], size)
    font = _font(max(9, _font_px(size) - 2))
    tile = Image.new("RGB", (size, size), _BACKGROUND)
    draw = ImageDraw.Draw(tile)
    radius, disc = size * 0.32, max(5.0, size / (4 + 2 * len(nodes)))
    centre = size / 2
    places = [(centre - radius * math.cos(2 * math.pi * i / len(nodes)),
               centre - radius * math.sin(2 * math.pi * i / len(nodes))) for i in range(len(nodes))]
    pairs: dict[tuple[int, int], list[str]] = {}
    for e in edges:
        s, o = int(e["subject"]), int(e["object"])
        if s != o and 0 <= s < len(nodes) and 0 <= o < len(nodes):
            pairs.setdefault((s, o), []).append(str(e["relation"]))
    for s, o in pairs:
        (x0, y0), (x1, y1) = places[s], places[o]
        draw.line((x0, y0, x1, y1), fill=_EDGE, width=max(1, size // 128))
        # an arrowhead where the line meets the object's disc
        angle = math.atan2(y1 - y0, x1 - x0)
        tip = (x1 - disc * math.cos(angle), y1 - disc * math.sin(angle))
        wing = disc * 0.8
        draw.polygon([tip, *[(tip[0] - wing * math.cos(angle + d), tip[1] - wing * math.sin(angle + d))
                             for d in (0.4, -0.4)]], fill=_EDGE)
    for (s, o), relations in pairs.items():
        (x0, y0), (x1, y1) = places[s], places[o]
        draw.multiline_text(((x0 + x1) / 2, (y0 + y1) / 2), "\n".join(relations), fill=(0, 0, 0), font=font,
                            anchor="mm", align="center", stroke_width=2, stroke_fill=_BACKGROUND)
    for node, (x, y) in zip(nodes, places, strict=True):
        colour = _fill(node.get("colour"))
        draw.ellipse((x - disc, y - disc, x + disc, y + disc), fill=colour, outline=(0, 0, 0))
        label = " ".join(str(node[f]) for f in ("size", "class") if node.get(f))
        _tag(draw, (round(x - disc), round(y + disc + font.size + 4)), label or "?", (255, 255, 255), font, size)
    return tile


def _format(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


@renderer("table")
def render_table(value, context: RenderContext) -> Image.Image:
    """A grid of cells, a header of column names, drawn at a legible size and fitted into the tile. Rows run
    down the page, or across it when that is the squarer picture (a table of few rows and many columns:
    the scenes' 1-4 objects by 8 columns). Cells naming a scene colour are filled with it."""
    rows = list(value)
    if not rows:
        return _text_tile(["(empty table)"], context.size)
    # the scenes' columns in their order (a corpus stores rows as JSON with sorted keys), then any others
    found = list(dict.fromkeys(name for row in rows for name in row))
    order = list(TABLE_COLUMNS)
    columns = sorted(found, key=lambda n: (order.index(n), 0) if n in order else (len(order), found.index(n)))
    cells = [[name, *[_format(row[name]) if name in row else "" for row in rows]] for name in columns]  # by column
    font = _font(12)
    pad, height = 4, font.getbbox("Ag|")[3] + 6
    across = len(rows) + 1 < len(columns)  # transposed: a line per column, a column per row
    grid = cells if across else [list(line) for line in zip(*cells, strict=True)]  # grid[line][place]
    places = [max(font.getlength(line[p]) for line in grid) + 2 * pad for p in range(len(grid[0]))]
    image = Image.new("RGB", (round(sum(places)) + 1, height * len(grid) + 1), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(grid):
        x = 0.0
        for j, text in enumerate(line):
            box = (x, i * height, x + places[j], (i + 1) * height)
            header = (j == 0) if across else (i == 0)
            fill = COLOURS.get(text, (232, 232, 226) if header else _BACKGROUND)
            draw.rectangle(box, fill=fill, outline=_GRID)
            draw.text((x + pad, i * height + 3), text, fill=_ink(fill), font=font)
            x += places[j]
    if max(image.size) <= context.size:  # never blown up: a small table stays at its legible size
        tile = Image.new("RGB", (context.size, context.size), _BACKGROUND)
        tile.paste(image, ((context.size - image.width) // 2, (context.size - image.height) // 2))
        return tile
    return _fit(image, context.size)[0]
