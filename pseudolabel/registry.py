"""Name -> class tables for sources and labellers, filled by a decorator where each class is defined.

The modules holding the classes are imported on first lookup, so listing names costs nothing and a
labeller's heavy imports (transformers, mediapipe) happen only when it is built.
"""

from __future__ import annotations

import importlib

# Modules that define sources and labellers; each registers its classes on import.
_MODULES = {
    "source": ["pseudolabel.sources.scenes", "pseudolabel.sources.files"],
    "labeller": [
        "pseudolabel.labellers.classical",
        "pseudolabel.labellers.metadata",
        "pseudolabel.labellers.text",
        "pseudolabel.labellers.hf",
        "pseudolabel.labellers.hf_sam",
        "pseudolabel.labellers.pose",
    ],
}
_TABLES: dict[str, dict[str, type]] = {"source": {}, "labeller": {}}


def register(kind: str):
    def deco(cls):
        _TABLES[kind][cls.name] = cls
        return cls

    return deco


def table(kind: str) -> dict[str, type]:
    for module in _MODULES[kind]:
        importlib.import_module(module)
    return _TABLES[kind]


def lookup(kind: str, name: str) -> type:
    entries = table(kind)
    if name not in entries:
        raise LookupError(f"unknown {kind} {name!r}; known: {', '.join(sorted(entries))}")
    return entries[name]
