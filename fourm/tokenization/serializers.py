"""Sequence modalities <-> words of the shared WordPiece vocabulary, one serializer per modality.

4M-21 (arXiv 2406.09406, section 3 and appendix on tokenization) writes every non-text sequence
modality as text over one vocabulary: numbers become value tokens ``v0=k .. v3=k`` (1000 bins;
box corners use the first ``box_bins`` of them, default 1000),
codes of small tokenizers become code tokens, and class or field names stay words. A serializer
maps one corpus value (see :mod:`fourm.modalities`) to a list of *units* -- lists of words, the
smallest pieces truncation may drop -- and parses words back into a value. Parsing never raises on
bad input: a generated sequence is imperfect, so units that do not parse are dropped.

=============  ===========================================================================================
modality       words per unit
=============  ===========================================================================================
caption        the lower-cased words of the text (punctuation split off, as BERT does:
               :mod:`fourm.tokenization.words`); a unit = one whitespace-separated word, so
               truncation never cuts a word in half
det            ``v0=x0 v1=y0 v2=x1 v3=y1 label words`` per object, corners in [0, 1] binned to
               ``box_bins`` levels (default 1000); objects most confident first, equal scores left to
               right (x0, then y0)
color_palette  ``color=n`` then ``v1=r v2=g v3=b`` per colour, the exact 0-255 values (not rebinned to
               1000: lossless, and value embeddings are per modality anyway); at most 7 colours
metadata       ``<field> v1=bin`` per field of :data:`METADATA_FIELDS`, in the table's order
sam_instance   ``v0..v3`` box of the instance + ``mask=k`` codes of its mask, cropped to the box and
               resized to the :class:`MaskCoder`'s ``mask_size``; largest instances first
human_poses    ``v0..v3`` box of the person + ``pose=k`` codes of its keypoints in box coordinates
               from a :class:`PoseCoder`; largest people first
scene_graph    a node ``v0=i <size> , <colour> , <class>`` (``i`` its index; an attribute may be empty),
               then an edge ``v1=i <relation words> v2=j`` per edge, in the value's order
table          a row ``v0=r`` then ``v2=c <value>`` per filled cell, ``c`` the column's place in the schema;
               a number column's value is ``v3=k``, the number binned over the column's range into
               ``table_bins`` levels; a word column's value is its words
=============  ===========================================================================================

In scene graphs and tables, value tokens mark the structure, so parsing needs no word to be reserved and
any class, colour or relation words pass through.

Why a table is a serializer and not a kind of its own: a kind says how the *model* treats tokens
(:mod:`fourm.kinds`: storage, masking, positions, left-to-right decoding), and a table's (column,
value) tokens need exactly what the ``sequence`` kind already gives captions and boxes: a ragged id
list, 1D positions, spans decoded left to right up to ``[EOS]``, truncation at a whole row. What is
particular to tables is only how a row becomes words and back, which is what a serializer describes.
A ``table`` kind would repeat the sequence handler line for line; as a serializer the table shares the
vocabulary, the tokenizer, the trainer and the generation of every other sequence modality. Its schema
(columns, each number column's range) is part of the tokenizer's config (``TextConfig.table_columns``):
by default the built-in scenes' (:data:`fourm.data.scenes.TABLE_COLUMNS`), or what ``fourm
train-tokenizer`` reads from a corpus of other tables (:func:`infer_columns`).

This file holds the :class:`Serializer` protocol, the ``SERIALIZERS`` registry
(:func:`get_serializer`) and the eight serializers. What they are built from lives beside it: text
words in :mod:`fourm.tokenization.words`, value tokens in :mod:`fourm.tokenization.bins`, and the
mask and pose tokenizers (the :class:`~fourm.tokenization.coders.MaskCoder` /
:class:`~fourm.tokenization.coders.PoseCoder` protocols, their ``grid`` fallbacks and trained
``vqvae`` coders, the ``MASK_CODERS`` / ``POSE_CODERS`` registries) in :mod:`fourm.tokenization.coders`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fourm.data.scenes import TABLE_COLUMNS
from fourm.modalities import SCALE_PRESETS
from fourm.registry import Registry
from fourm.tokenization.bins import NUM_BINS, box_tokens, from_bin, parse_box, parse_token, to_bin
from fourm.tokenization.coders import GridMaskCoder, GridPoseCoder, MaskCoder, PoseCoder, instance_masks, resize_mask
from fourm.tokenization.words import join_words, split_words

log = logging.getLogger(__name__)

MAX_COLORS = 7
UNK_WORD = "[UNK]"


# ----------------------------------------------------------------------------- parsing
def _chunks(words: list[str], starts) -> list[list[str]]:
    """Words grouped into runs that begin where ``starts(word)``; words before the first start are dropped."""
    chunks: list[list[str]] = []
    for w in words:
        if starts(w):
            chunks.append([w])
        elif chunks:
            chunks[-1].append(w)
    return chunks


def _is_v0(word: str) -> bool:
    return word.startswith("v0=") and parse_token(word) is not None


# ----------------------------------------------------------------------------- the registry
class Serializer(Protocol):
    modality: str

    def to_units(self, value: Any) -> list[list[str]]: ...

    def to_tokens(self, value: Any) -> list[str]: ...

    def from_tokens(self, tokens: list[str]) -> Any: ...


SERIALIZERS: Registry[type] = Registry("serializer", sort=True, error="no serializer for {name!r}; known: {known}")


def serializer(modality: str):
    def deco(cls):
        cls.modality = modality
        SERIALIZERS[modality] = cls
        return cls

    return deco


def get_serializer(modality: str, **settings) -> Serializer:
    """The serializer of ``modality``; ``settings`` (mask_coder, pose_coder, image_size, box_bins) go where
    they apply."""
    cls = SERIALIZERS[modality]
    names = set(getattr(cls, "__dataclass_fields__", {}))
    return cls(**{k: v for k, v in settings.items() if k in names and v is not None})


class _Base:
    modality: str

    def to_tokens(self, value) -> list[str]:
        return [w for unit in self.to_units(value) for w in unit]


# ----------------------------------------------------------------------------- text, boxes, colours, metadata
@serializer("caption")
@dataclass
class CaptionSerializer(_Base):
    def to_units(self, text: str) -> list[list[str]]:
        return split_words(str(text))

    def from_tokens(self, tokens: list[str]) -> str:
        return join_words(tokens)


@serializer("det")
@dataclass
class DetSerializer(_Base):
    box_bins: int = NUM_BINS

    def to_units(self, objects: list[dict]) -> list[list[str]]:
        ordered = sorted(objects, key=lambda d: (-float(d.get("score", 1.0)), d["box"][0], d["box"][1]))
        units = []
        for d in ordered:
            label = [p for w in split_words(str(d["label"])) for p in w] or [UNK_WORD]
            units.append(box_tokens(d["box"], self.box_bins) + label)
        return units

    def from_tokens(self, tokens: list[str]) -> list[dict]:
        objects = []
        for chunk in _chunks(tokens, _is_v0):
            box, label = parse_box(chunk, self.box_bins), chunk[4:]
            if box is None or not label or any(parse_token(w) for w in label):
                continue
            objects.append({"box": box, "label": join_words(label), "score": 1.0})
        return objects


@serializer("color_palette")
@dataclass
class PaletteSerializer(_Base):
    def to_units(self, colours: list) -> list[list[str]]:
        colours = [[int(round(min(max(float(c), 0.0), 255.0))) for c in rgb] for rgb in colours[:MAX_COLORS]]
        return [[f"color={len(colours)}"]] + [[f"v1={r}", f"v2={g}", f"v3={b}"] for r, g, b in colours]

    def from_tokens(self, tokens: list[str]) -> list[list[int]]:
        # the count token is a condition for generation; the colours themselves are what the triples say
        colours = []
        for chunk in _chunks(tokens, lambda w: w.startswith("v1=")):
            parsed = [parse_token(w) for w in chunk]
            if len(parsed) == 3 and all(p and p[0] == f"v{i + 1}" for i, p in enumerate(parsed)):
                colours.append([min(p[1], 255) for p in parsed])
        return colours[:MAX_COLORS]


# (lo, hi, integer): values are clipped to [lo, hi] and binned to NUM_BINS levels, bin width (hi-lo)/999
METADATA_FIELDS: dict[str, tuple[float, float, bool]] = {
    "original_width": (0, 3996, True),  # pixels, 4 px bins
    "original_height": (0, 3996, True),
    "caption_chars": (0, 999, True),  # counts: exact up to 999
    "caption_words": (0, 999, True),
    "caption_sentences": (0, 999, True),
    "num_humans": (0, 999, True),
    "num_sam_instances": (0, 999, True),
    "num_coco_instances": (0, 999, True),
    "instance_diversity": (0.0, 1.0, False),
    "semantic_diversity": (0, 999, True),  # classes present
    "colourfulness": (0.0, 255.0, False),  # Hasler-Suesstrunk on the 0-255 scale, bins of 0.255
    "brightness": (0.0, 1.0, False),
    "contrast": (0.0, 0.5, False),  # std of luminance in [0, 1] never exceeds 0.5
    "saturation": (0.0, 1.0, False),
    "entropy": (0.0, 8.0, False),  # bits of an 8-bit grey image
    "walkability": (0.0, 1.0, False),
    "objectness": (0.0, 1.0, False),
    "geometric_complexity": (0.0, 1.0, False),
    "occlusion_score": (0.0, 1.0, False),
}
_warned_fields: set[str] = set()


@serializer("metadata")
@dataclass
class MetadataSerializer(_Base):
    def to_units(self, fields: dict) -> list[list[str]]:
        for name in set(fields) - set(METADATA_FIELDS) - _warned_fields:
            log.warning("metadata field %r has no binning in METADATA_FIELDS: left out", name)
            _warned_fields.add(name)
        units = []
        for name, (lo, hi, _) in METADATA_FIELDS.items():
            value = fields.get(name)
            if value is not None and math.isfinite(float(value)):
                units.append([name, f"v1={to_bin(value, lo, hi)}"])
        return units

    def from_tokens(self, tokens: list[str]) -> dict:
        out: dict = {}
        for chunk in _chunks(tokens, lambda w: w in METADATA_FIELDS):
            parsed = parse_token(chunk[1]) if len(chunk) == 2 else None
            if parsed is None or parsed[0] != "v1" or parsed[1] >= NUM_BINS or chunk[0] in out:
                continue
            lo, hi, integer = METADATA_FIELDS[chunk[0]]
            value = from_bin(parsed[1], lo, hi)
            out[chunk[0]] = int(round(value)) if integer else round(value, 4)
        return out


# ----------------------------------------------------------------------------- boxes with mask and pose codes
def _pixel_span(lo: float, hi: float, size: int) -> tuple[int, int]:
    a = min(max(int(round(lo * size)), 0), size - 1)
    return a, min(max(int(round(hi * size)), a + 1), size)


@serializer("sam_instance")
@dataclass
class SamInstanceSerializer(_Base):
    """Instance id maps ``uint16 (H, W)`` (0 = none); decoded maps are ``(image_size, image_size)`` with
    ids 1..N in token order, later (smaller) instances drawn over earlier ones."""

    mask_coder: MaskCoder = field(default_factory=GridMaskCoder)
    image_size: int = SCALE_PRESETS["cpu"]["image_size"]
    box_bins: int = NUM_BINS

    def to_units(self, ids: np.ndarray) -> list[list[str]]:
        return self.to_units_batch([ids])[0]

    def to_units_batch(self, values: list) -> list[list[list[str]]]:
        """:meth:`to_units` of many id maps with one coder call: a trained coder costs per call more than
        per mask (2.7x faster encoding of scenes with the mask VQ-VAE)."""
        found = [instance_masks(ids) for ids in values]
        s = self.mask_coder.mask_size
        masks = [resize_mask(m, s, s) for instances in found for _, m in instances]
        codes = iter(self.mask_coder.encode(np.stack(masks)) if masks else ())
        return [[box_tokens(box, self.box_bins) + [f"mask={int(c)}" for c in next(codes)] for box, _ in instances]
                for instances in found]

    def from_tokens(self, tokens: list[str]) -> np.ndarray:
        n, size = self.mask_coder.num_tokens, self.image_size
        boxes, codes = [], []
        for chunk in _chunks(tokens, _is_v0):
            box, parsed = parse_box(chunk, self.box_bins), [parse_token(t) for t in chunk[4:]]
            if box is None or len(parsed) != n or \
                    any(p is None or p[0] != "mask" or p[1] >= self.mask_coder.vocab_size for p in parsed):
                continue
            boxes.append(box)
            codes.append([p[1] for p in parsed])
        canvas = np.zeros((size, size), np.uint16)
        if not boxes:
            return canvas
        masks = self.mask_coder.decode(np.array(codes, np.int64))
        next_id = 1
        for (x0, y0, x1, y1), mask in zip(boxes, masks, strict=True):
            (c0, c1), (r0, r1) = _pixel_span(x0, x1, size), _pixel_span(y0, y1, size)
            pasted = resize_mask(mask, r1 - r0, c1 - c0, decoding=True)
            if pasted.any():
                canvas[r0:r1, c0:c1][pasted] = next_id
                next_id += 1
        return canvas


@serializer("human_poses")
@dataclass
class PosesSerializer(_Base):
    """People ``[{"box", "keypoints": [[x, y, visibility] x K]}]`` in image units [0, 1]."""

    pose_coder: PoseCoder = field(default_factory=GridPoseCoder)
    box_bins: int = NUM_BINS

    def to_units(self, people: list[dict]) -> list[list[str]]:
        if not people:
            return []
        boxes = [self._box(p) for p in people]
        areas = [(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes]
        order = sorted(range(len(people)), key=lambda i: (-areas[i], i))
        rel = np.stack([self._relative(people[i]["keypoints"], boxes[i]) for i in order])
        codes = self.pose_coder.encode(rel)
        return [box_tokens(boxes[i], self.box_bins) + [f"pose={int(c)}" for c in row]
                for i, row in zip(order, codes, strict=True)]

    def from_tokens(self, tokens: list[str]) -> list[dict]:
        n = self.pose_coder.num_tokens
        boxes, codes = [], []
        for chunk in _chunks(tokens, _is_v0):
            box, parsed = parse_box(chunk, self.box_bins), [parse_token(t) for t in chunk[4:]]
            if box is None or len(parsed) != n or \
                    any(p is None or p[0] != "pose" or p[1] >= self.pose_coder.vocab_size for p in parsed):
                continue
            boxes.append(box)
            codes.append([p[1] for p in parsed])
        if not boxes:
            return []
        people = []
        for box, rel in zip(boxes, self.pose_coder.decode(np.array(codes, np.int64)), strict=True):
            x0, y0, x1, y1 = box
            xy = np.clip(rel[:, :2] * [x1 - x0, y1 - y0] + [x0, y0], 0.0, 1.0)
            people.append({"box": box, "keypoints": [[round(float(x), 4), round(float(y), 4), float(v)]
                                                     for (x, y), v in zip(xy, rel[:, 2], strict=True)]})
        return people

    @staticmethod
    def _box(person: dict) -> list[float]:
        if person.get("box") is not None:
            return [min(max(float(v), 0.0), 1.0) for v in person["box"]]
        xy = np.asarray(person["keypoints"], np.float64)[:, :2]
        return [*np.clip(xy.min(0), 0, 1), *np.clip(xy.max(0), 0, 1)]

    def _relative(self, keypoints, box) -> np.ndarray:
        points = np.asarray(keypoints, np.float64)
        if points.shape != (self.pose_coder.num_keypoints, 3):
            raise ValueError(f"human_poses: expected {self.pose_coder.num_keypoints} keypoints [x, y, visibility], "
                             f"got shape {points.shape}")
        x0, y0, x1, y1 = box
        scale = np.maximum([x1 - x0, y1 - y0], 1e-6)
        return np.concatenate([(points[:, :2] - [x0, y0]) / scale, points[:, 2:]], 1)


NODE_FIELDS = ("size", "colour", "class")  # a node's attributes, in the order a caption says them
_SEPARATOR = ","  # between a node's attributes: one pre-token that no attribute of the scenes holds
TABLE_BINS = 100  # levels per number column: 1% of its range, one value token a small model learns soon
_warned: set[str] = set()


def _words(value) -> list[str]:
    return [p for w in split_words(str(value)) for p in w]


def _has_value_token(words: list[str]) -> bool:
    return any(parse_token(w) for w in words)


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def _index(word: str, family: str) -> int | None:
    parsed = parse_token(word)
    return parsed[1] if parsed is not None and parsed[0] == family else None


# ----------------------------------------------------------------------------- scene graphs and tables
@serializer("scene_graph")
@dataclass
class SceneGraphSerializer(_Base):
    """``{"nodes": [{"size", "colour", "class"}], "edges": [{"subject", "relation", "object"}]}``, nodes
    and edges in order; subject and object are node indices. Decoding gives the same value back for
    attributes and relations in normalised words (lower case); a node whose index repeats, an edge to a
    node that is not there, and anything that does not parse are dropped."""

    def to_units(self, graph: dict) -> list[list[str]]:
        nodes = list(graph.get("nodes", []))[:NUM_BINS]
        units = []
        for i, node in enumerate(nodes):
            attributes = [_words(node[f]) if node.get(f) is not None else [] for f in NODE_FIELDS]
            units.append([f"v0={i}", *attributes[0], _SEPARATOR, *attributes[1], _SEPARATOR, *attributes[2]])
        for edge in graph.get("edges", []):
            s, o = int(edge["subject"]), int(edge["object"])
            if 0 <= s < len(nodes) and 0 <= o < len(nodes):
                units.append([f"v1={s}", *(_words(edge["relation"]) or ["[UNK]"]), f"v2={o}"])
        return units

    def from_tokens(self, tokens: list[str]) -> dict:
        nodes, place = [], {}  # place: a node's index token -> its position in the decoded list
        edges = []
        for chunk in _chunks(tokens, lambda w: _index(w, "v0") is not None or _index(w, "v1") is not None):
            head, rest = chunk[0], chunk[1:]
            if (i := _index(head, "v0")) is not None:
                parts = join_words(rest).split(_SEPARATOR) if not _has_value_token(rest) else []
                if len(parts) == len(NODE_FIELDS) and i not in place:
                    place[i] = len(nodes)
                    nodes.append({f: p.strip() for f, p in zip(NODE_FIELDS, parts, strict=True) if p.strip()})
                continue
            target = _index(rest[-1], "v2") if rest else None
            relation = rest[:-1]
            if target is None or not relation or _has_value_token(relation):
                continue
            edges.append({"subject": _index(head, "v1"), "relation": join_words(relation), "object": target})
        edges = [{**e, "subject": place[e["subject"]], "object": place[e["object"]]} for e in edges
                 if e["subject"] in place and e["object"] in place]
        return {"nodes": nodes, "edges": edges}


def _number(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def default_columns() -> list[list]:
    """The built-in scenes' table schema (:data:`fourm.data.scenes.TABLE_COLUMNS`) as ``table_columns``."""
    return [[name, None if span is None else list(span)] for name, span in TABLE_COLUMNS.items()]


@serializer("table")
@dataclass
class TableSerializer(_Base):
    """Rows ``[{column: value}]``, a number or words per cell; a missing (or None) cell is left out.

    ``table_columns`` is the schema, ``[[name, span], ...]`` in column order (a list, not a mapping: a
    saved config sorts mapping keys, and a column's place is its token): ``span`` is ``[lo, hi]`` for a
    number column (values clipped to it and binned into ``table_bins`` levels: a round trip is within
    half a level), or None for a word column (a round trip gives its words normalised). Columns the
    schema lacks are left out, with a warning; decoded rows hold their cells in the schema's order."""

    table_columns: list = field(default_factory=default_columns)
    table_bins: int = TABLE_BINS

    def __post_init__(self):
        if not 2 <= self.table_bins <= NUM_BINS:
            raise ValueError(f"table_bins must be in [2, {NUM_BINS}] (value tokens per number), got {self.table_bins}")
        self._spans = {str(name): span for name, span in self.table_columns}
        if len(self._spans) != len(self.table_columns) or len(self._spans) > NUM_BINS:
            raise ValueError(f"a table schema holds distinct columns, at most {NUM_BINS}: {self.table_columns}")
        self._names = list(self._spans)
        for name, span in self._spans.items():
            if span is not None and (len(span) != 2 or not float(span[0]) < float(span[1])):
                raise ValueError(f"table column {name!r}: a number column's range is [lo, hi] with lo < hi, not {span}")

    def to_units(self, rows: list[dict]) -> list[list[str]]:
        units = []
        for r, row in enumerate(list(rows)[:NUM_BINS]):
            for name in set(row) - set(self._names):
                _warn_once(f"table column {name!r} is not in the tokenizer's schema: left out")
            unit = [f"v0={r}"]
            for c, name in enumerate(self._names):
                cell = self._cell(name, row.get(name))
                if cell:
                    unit += [f"v2={c}", *cell]
            units.append(unit)
        return units

    def _cell(self, name: str, value) -> list[str]:
        if value is None:
            return []
        span = self._spans[name]
        if span is None:
            return _words(value)
        x = _number(value)
        if x is None:
            _warn_once(f"table column {name!r} holds numbers, not {value!r}: cell left out")
            return []
        return [f"v3={to_bin(x, float(span[0]), float(span[1]), self.table_bins)}"]

    def from_tokens(self, tokens: list[str]) -> list[dict]:
        rows = []
        for chunk in _chunks(tokens, lambda w: _index(w, "v0") is not None):
            cells = {}
            for cell in _chunks(chunk[1:], lambda w: _index(w, "v2") is not None):
                c, value = _index(cell[0], "v2"), cell[1:]
                if c >= len(self._names) or not value or self._names[c] in cells:
                    continue
                span = self._spans[self._names[c]]
                if span is None:
                    if not _has_value_token(value):
                        cells[self._names[c]] = join_words(value)
                elif len(value) == 1 and (k := _index(value[0], "v3")) is not None and k < self.table_bins:
                    cells[self._names[c]] = round(from_bin(k, float(span[0]), float(span[1]), self.table_bins), 6)
            if cells:
                rows.append({n: cells[n] for n in self._names if n in cells})
        return rows


def infer_columns(tables: list[list[dict]]) -> list[list]:
    """A schema for ``tables`` (lists of row dicts) as ``table_columns``: every column in the order first
    seen; a column whose every cell is a number gets the range of its values (a single value widened by 1
    either side), any other is a word column."""
    spans: dict[str, list[float] | None] = {}
    for rows in tables:
        for row in rows:
            for name, value in row.items():
                if value is None:
                    continue
                x = _number(value) if not isinstance(value, bool) else None
                if name not in spans:
                    spans[name] = None if x is None else [x, x]
                elif spans[name] is not None:
                    span = spans[name]
                    spans[name] = None if x is None else [min(span[0], x), max(span[1], x)]
    # a constant column still needs lo < hi
    return [[n, s if s is None or s[0] < s[1] else [s[0] - 1.0, s[1] + 1.0]] for n, s in spans.items()]
