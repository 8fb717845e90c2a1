"""Name -> class tables for sources and labellers, filled by a decorator where each class is defined.

The modules holding the classes are imported on first lookup, so listing names costs nothing and a
labeller's heavy imports (transformers, mediapipe) happen only when it is built.
"""

from __future__ import annotations

import importlib

from fourm.registry import Registry

# Modules that define sources and labellers; each registers its classes on import.
_MODULES = {
    "source": ["pseudolabel.sources.scenes", "pseudolabel.sources.files", "pseudolabel.sources.points",
               "pseudolabel.sources.audio", "pseudolabel.sources.rasters", "pseudolabel.sources.tables"],
    "labeller": [
        "pseudolabel.labellers.classical",
        "pseudolabel.labellers.metadata",
        "pseudolabel.labellers.text",
        "pseudolabel.labellers.hf",
        "pseudolabel.labellers.hf_sam",
        "pseudolabel.labellers.pose",
    ],
}
_TABLES: dict[str, dict[str, type]] = {"source": {}, "labeller": {}}  # in registration order


def register(kind: str):
    def deco(cls):
        _TABLES[kind][cls.name] = cls
        return cls

    return deco


def table(kind: str) -> Registry[type]:
    """Name -> class, in the order of ``_MODULES`` and of definition in each module.

    Not in registration order: that follows whichever module was imported first (a test, a caller
    that imports one labeller), and the order of the labellers is part of a corpus' plan, which a
    resumed run must match.
    """
    modules = [importlib.import_module(m) for m in _MODULES[kind]]
    defined = [v for m in modules for v in vars(m).values() if isinstance(v, type) and v.__module__ == m.__name__]
    rank = {cls: i for i, cls in enumerate(defined)}
    return Registry(kind, sorted(_TABLES[kind].items(), key=lambda item: rank.get(item[1], len(rank))), sort=True)


def lookup(kind: str, name: str) -> type:
    return table(kind)[name]
