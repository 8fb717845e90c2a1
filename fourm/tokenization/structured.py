"""Scene graphs and tables <-> words of the shared WordPiece vocabulary (two serializers of ``SERIALIZERS``).

Both are sequence modalities the way ``det`` is (4M-21, arXiv 2406.09406: every non-text sequence is
written as text over one vocabulary, numbers as value tokens). Value tokens mark the structure, so
parsing needs no word to be reserved and any class, colour or relation words pass through:

=============  ==========================================================================================
modality       words per unit
=============  ==========================================================================================
scene_graph    a node ``v0=i <size> , <colour> , <class>`` (``i`` its index; an attribute may be empty),
               then an edge ``v1=i <relation words> v2=j`` per edge, in the value's order
table          a row ``v0=r`` then ``v2=c <value>`` per filled cell, ``c`` the column's place in the schema;
               a number column's value is ``v3=k``, the number binned over the column's range into
               ``table_bins`` levels; a word column's value is its words
=============  ==========================================================================================

Why a table is a serializer and not a kind of its own: a kind says how the *model* treats tokens
(:mod:`fourm.kinds`: storage, masking, positions, left-to-right decoding), and a table's (column,
value) tokens need exactly what the ``sequence`` kind already gives captions and boxes: a ragged id
list, 1D positions, spans decoded left to right up to ``[EOS]``, truncation at a whole row. What is
particular to tables is only how a row becomes words and back, which is what a serializer describes.
A ``table`` kind would repeat the sequence handler line for line, and the vocabulary would have to
be shared across two kinds; as a serializer the table shares the vocabulary, the tokenizer, the
trainer and the generation of every other sequence modality, and the model learns its column and
value tokens like any others.

The schema of a table (its columns, and each number column's range) is part of the tokenizer's
config (``TextConfig.table_columns``): by default the built-in scenes' (:data:`fourm.data.scenes.TABLE_COLUMNS`),
or what ``fourm train-tokenizer`` reads from a corpus of other tables (:func:`infer_columns`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from fourm.data.scenes import TABLE_COLUMNS
from fourm.tokenization.bins import NUM_BINS, from_bin, parse_token, to_bin
from fourm.tokenization.serializers import _Base, _chunks, serializer
from fourm.tokenization.words import join_words, split_words

log = logging.getLogger(__name__)

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


# ----------------------------------------------------------------------------- scene graphs
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


# ----------------------------------------------------------------------------- tables
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
