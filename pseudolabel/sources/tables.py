"""A source of real tables: a CSV file keyed by sample (``csv:PATH``, or ``csv:PATH@COLUMN``).

Every row belongs to the sample its key column names, and the rows of one key become that sample's
``table`` (``[{column: value}]``, the corpus convention of :mod:`fourm.modalities`): a table of objects
per image, say, one line per object. The key column is ``COLUMN`` when given, else a column named
``key``, else the first one. Samples come in the order their keys first appear, and a key is the
sample's corpus key as it is (characters a webdataset key cannot hold become ``_``), so a CSV keyed by
another corpus's keys (``scene-00000003``) makes a table series for the same samples. Cells that parse as
numbers are numbers, other cells words, empty cells are left out. A row without a key is skipped and
reported. Python's ``csv`` module reads the file (quoting, embedded commas and new lines as RFC 4180).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from pseudolabel.sources.base import Skipped, Source, source


def parse_cell(text: str) -> int | float | str:
    """A CSV cell as a number where it is one (``"3"`` -> 3, ``"2.5"`` -> 2.5), else its stripped text."""
    text = text.strip()
    for cast in (int, float):
        try:
            value = cast(text)
        except ValueError:
            continue
        return value if math.isfinite(value) else text
    return text


def read_keyed_csv(path: str | Path, key_column: str | None = None) -> tuple[dict[str, list[dict]], list[Skipped]]:
    """``{key: rows}`` in the order keys first appear, and the rows skipped for want of a key."""
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte order mark
        reader = csv.DictReader(f)
        columns = reader.fieldnames
        if not columns:
            raise ValueError(f"csv:{path}: no header row")
        key = key_column or ("key" if "key" in columns else columns[0])
        if key not in columns:
            raise ValueError(f"csv:{path}: no key column {key!r}; columns: {', '.join(columns)}")
        tables: dict[str, list[dict]] = {}
        skipped = []
        for row in reader:
            name = (row.get(key) or "").strip()
            if not name:
                skipped.append(Skipped(f"{Path(path).name}:{reader.line_num}", f"no value in key column {key!r}"))
                continue
            cells = {c: parse_cell(v) for c, v in row.items() if c != key and c is not None and v and v.strip()}
            tables.setdefault(name, []).append(cells)
    return tables, skipped


@source
class CsvTable(Source):
    """The tables of a keyed CSV file (see the module notes); shard ``i`` is keys ``[i*K, (i+1)*K)``."""

    name: ClassVar[str] = "csv"
    provides: ClassVar[tuple[str, ...]] = ("table",)
    path: str = "table.csv"
    key_column: str | None = None

    def __post_init__(self):
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"csv:{self.path}: no such file")
        tables, self._skipped = read_keyed_csv(self.path, self.key_column)
        # webdataset splits a member name at the first dot of its base name: keys hold none
        self._samples = [(re.sub(r"[^A-Za-z0-9_-]+", "_", k), rows) for k, rows in tables.items()]

    @classmethod
    def from_arg(cls, arg: str, **options) -> CsvTable:
        path, at, column = arg.rpartition("@")
        return cls(path=path, key_column=column) if at and column and "/" not in column else cls(path=arg)

    def num_shards(self, shard_size: int) -> int:
        return max(1, math.ceil(len(self._samples) / shard_size))

    def num_samples(self) -> int:
        return len(self._samples)

    def shard(self, index: int, shard_size: int) -> Iterator[dict | Skipped]:
        if index == 0:
            yield from self._skipped
        seen = {k for k, _ in self._samples[: index * shard_size]}
        for key, rows in self._samples[index * shard_size: (index + 1) * shard_size]:
            if key in seen:
                yield Skipped(key, "its key is another row's key once made safe for webdataset")
                continue
            seen.add(key)
            yield {"__key__": key, "table": rows}
