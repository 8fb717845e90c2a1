"""Labels of a fine-tuning task: read from a corpus series, or from a CSV / JSON file of key -> label.

Corpus labels (``LABELS``) are exact on the built-in scenes, whose series hold what a task needs:

========================  ==============  ======================================================
name                      series          label
========================  ==============  ======================================================
count                     det             number of visible objects (a class, or a number)
shape                     det             which shapes are present (multi-label, 4)
colour_shape              caption         which <colour> <shape> pairs are present (multi-label,
                                          8 x 4; the caption names every visible object)
semseg                    semseg          class per pixel (dense, 6 classes)
depth                     depth           metres per pixel, 0 where unknown (dense regression)
========================  ==============  ======================================================

A file holds ``key,label`` rows (CSV, a header row ``key,label`` optional) or a JSON object
``{key: label}``. A label is a class name or number (classification), a number (regression), or a
list of class names (multi-label: a JSON list, or ``;``-separated in a CSV cell).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fourm.data.scenes import CLASSES, COLOURS, SHAPES
from fourm.eval.metrics import parse_objects
from fourm.registry import Registry

TASKS = ("classification", "multilabel", "regression", "dense_classification", "dense_regression")
COLOUR_SHAPES = [f"{c} {s}" for c in COLOURS for s in SHAPES]


@dataclass(frozen=True)
class CorpusLabel:
    series: str  # the corpus series read
    task: str  # the task it is natural for
    read: Callable[[object], object]  # series value -> label
    classes: list[str] | None = None  # class names (None: numbers, or classes found in the data)


def _count(det) -> int:
    return len(det or [])


def _presence(names: list[str], found: Sequence[str]) -> np.ndarray:
    out = np.zeros(len(names), np.float32)
    for name in found:
        out[names.index(name)] = 1.0
    return out


LABELS: Registry[CorpusLabel] = Registry("corpus label", {
    "count": CorpusLabel("det", "classification", _count),
    "shape": CorpusLabel("det", "multilabel", lambda det: _presence(SHAPES, [d["label"] for d in det or []]),
                         list(SHAPES)),
    "colour_shape": CorpusLabel("caption", "multilabel", lambda caption: _presence(
        COLOUR_SHAPES, [f"{c} {s}" for c, s in parse_objects(caption or "") if c is not None]), COLOUR_SHAPES),
    "semseg": CorpusLabel("semseg", "dense_classification", lambda m: np.asarray(m, np.int64), list(CLASSES)),
    "depth": CorpusLabel("depth", "dense_regression", lambda m: np.asarray(m, np.float32)),
})


def read_label_file(path: str | os.PathLike) -> dict[str, object]:
    """key -> label of a CSV or JSON file (see the module notes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file {path} does not exist")
    if path.suffix.lower() == ".json":
        from fourm.io import read_json

        data = read_json(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a JSON label file must be an object {{key: label}}")
        return {str(k): v for k, v in data.items()}
    out = {}
    with path.open(newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or (i == 0 and [c.strip().lower() for c in row[:2]] == ["key", "label"]):
                continue
            if len(row) != 2:
                raise ValueError(f"{path} line {i + 1}: expected key,label, got {len(row)} fields")
            key, value = row[0].strip(), row[1].strip()
            out[key] = [v.strip() for v in value.split(";") if v.strip()] if ";" in value else value
    return out


def _number(value, key: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"label of {key!r} is {value!r}, not a number") from None


def encode_labels(values: list, keys: list[str], task: str, classes: list[str] | None = None
                  ) -> tuple[torch.Tensor, list[str] | None]:
    """Per-sample labels -> one tensor for ``task``, and the class names (found in the data where not given).

    classification: (N,) int64; multilabel: (N, C) float 0/1; regression: (N,) float;
    dense_classification: (N, H, W) int64; dense_regression: (N, H, W) float.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    if task.startswith("dense"):
        return torch.from_numpy(np.stack([np.asarray(v) for v in values])), classes
    if task == "regression":
        return torch.tensor([_number(v, k) for v, k in zip(values, keys, strict=True)], dtype=torch.float32), None
    if task == "multilabel":
        if all(isinstance(v, np.ndarray) for v in values):  # a corpus label: multi-hot already
            return torch.from_numpy(np.stack(values)).float(), classes
        lists = [[str(x) for x in (v if isinstance(v, list) else [v] if str(v) else [])] for v in values]
        classes = classes or sorted({x for v in lists for x in v})
        unknown = sorted({x for v in lists for x in v} - set(classes))
        if unknown:
            raise ValueError(f"labels {', '.join(unknown)} are not among the classes {', '.join(classes)}")
        return torch.from_numpy(np.stack([_presence(classes, v) for v in lists])), classes
    # classification: integers are class indices (0..max); anything else a name
    if all(isinstance(v, (int, np.integer)) for v in values):
        top = max(int(v) for v in values)
        return torch.tensor([int(v) for v in values]), classes or [str(i) for i in range(top + 1)]
    names = [str(v) for v in values]
    classes = classes or sorted(set(names), key=lambda n: (len(n), n) if n.isdigit() else (1 << 30, n))
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise ValueError(f"labels {', '.join(unknown)} are not among the classes {', '.join(classes)}")
    return torch.tensor([classes.index(n) for n in names]), classes


def labels_for(keys: list[str], source: str, extras: list[dict] | None = None) -> list:
    """The raw label of each key: from corpus series ``extras`` (``LABELS[source]``) or from a file.

    A key without a label is an error naming how many lack one and the first of them.
    """
    if source in LABELS:
        spec = LABELS[source]
        return [spec.read(e.get(spec.series)) for e in extras]
    if Path(source).suffix.lower() not in (".csv", ".json"):
        LABELS.check(source)  # neither a corpus label nor a file: the registry's error, listing them
    table = read_label_file(source)
    missing = [k for k in keys if k not in table]
    if missing:
        raise ValueError(f"{source} has no label for {len(missing)} of {len(keys)} samples (first: {missing[0]!r})")
    return [table[k] for k in keys]
