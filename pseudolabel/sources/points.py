"""A source of real point clouds: every ``.ply``, ``.npy``, ``.xyz`` and ``.txt`` file below a folder.

Each file becomes one ``point_cloud`` sample in the corpus convention (``float32 (N, 7)``: xyz, rgb
0-255, class; :mod:`fourm.data.points`), resampled to ``num_points`` by farthest-point sampling (or
repeated, for smaller clouds). What a file may hold:

* ``.ply`` (read with ``plyfile``, ASCII or binary): the ``vertex`` element's ``x, y, z``, and where
  present ``red, green, blue`` and a class in ``class``, ``label`` or ``scalar_label``; faces are ignored.
* ``.npy`` (no pickles) and ``.xyz`` / ``.txt`` (numbers separated by spaces or commas, ``#`` comments):
  one point a row, columns ``x y z``, ``x y z class``, ``x y z r g b`` or ``x y z r g b class``.

Colours whose values all lie in [0, 1] are read as fractions and scaled to 0-255; a cloud without
colours is mid grey (128), one without classes is unlabelled (-1). An unreadable file is skipped and
reported, never fatal.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np

from fourm.data.points import NO_CLASS, NUM_FIELDS, check_points, resample
from pseudolabel.sources.base import Skipped, source
from pseudolabel.sources.files import FileFolder, _safe_key

POINT_SUFFIXES = (".ply", ".npy", ".xyz", ".txt")
_GREY = 128.0
_PLY_CLASS = ("class", "label", "scalar_label")


def _from_columns(array: np.ndarray, name: str) -> np.ndarray:
    """Rows of 3, 4, 6 or 7 numbers -> a cloud ``(M, 7)``."""
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 1 and array.size in (3, 4, 6, 7):
        array = array[None]
    if array.ndim != 2 or array.shape[1] not in (3, 4, 6, 7):
        raise ValueError(f"{name}: expected one point a row with 3, 4, 6 or 7 columns (x y z [r g b] [class]), "
                         f"got shape {array.shape}")
    xyz = array[:, :3]
    rgb = array[:, 3:6] if array.shape[1] >= 6 else None
    cls = array[:, -1] if array.shape[1] in (4, 7) else None
    return _cloud(xyz, rgb, cls)


def _cloud(xyz: np.ndarray, rgb: np.ndarray | None, cls: np.ndarray | None) -> np.ndarray:
    points = np.empty((len(xyz), NUM_FIELDS), np.float32)
    points[:, :3] = xyz
    if rgb is None:
        points[:, 3:6] = _GREY
    else:
        rgb = np.asarray(rgb, dtype=np.float64)
        points[:, 3:6] = np.clip(rgb * 255 if rgb.size and rgb.max() <= 1.0 else rgb, 0, 255).round()
    points[:, 6] = NO_CLASS if cls is None else np.asarray(cls).round()
    return points


def read_points(path: str | Path) -> np.ndarray:
    """One point file -> a cloud ``float32 (M, 7)`` (see the module notes); raises on a bad file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".ply":
        from plyfile import PlyData

        ply = PlyData.read(str(path))
        if "vertex" not in ply:
            raise ValueError(f"{path.name}: a ply file without a vertex element")
        vertex = ply["vertex"].data
        names = vertex.dtype.names
        if not {"x", "y", "z"} <= set(names):
            raise ValueError(f"{path.name}: vertices have no x, y, z (have {', '.join(names)})")
        xyz = np.stack([vertex[a] for a in "xyz"], axis=-1)
        rgb = np.stack([vertex[c] for c in ("red", "green", "blue")], axis=-1) if "red" in names else None
        if rgb is not None and np.issubdtype(rgb.dtype, np.integer):
            rgb = rgb.astype(np.float64) * (255.0 / np.iinfo(rgb.dtype).max)  # uchar or ushort colours
        label = next((vertex[c] for c in _PLY_CLASS if c in names), None)
        cloud = _cloud(xyz, rgb, label)
    elif suffix == ".npy":
        cloud = _from_columns(np.load(path, allow_pickle=False), path.name)
    elif suffix in (".xyz", ".txt"):
        text = path.read_text().replace(",", " ")
        rows = [line.split("#")[0].split() for line in text.splitlines()]
        rows = [r for r in rows if r]
        if len({len(r) for r in rows}) > 1:
            raise ValueError(f"{path.name}: rows of different lengths")
        cloud = _from_columns(np.array(rows, dtype=np.float64), path.name)
    else:
        raise ValueError(f"{path.name}: not a point file ({', '.join(POINT_SUFFIXES)})")
    return check_points(cloud, path.name)


@source
class Points(FileFolder):
    """Every point file below ``path``, in sorted order; shard ``i`` is files ``[i*K, (i+1)*K)``."""

    name: ClassVar[str] = "points"
    provides: ClassVar[tuple[str, ...]] = ("point_cloud",)
    suffixes: ClassVar[tuple[str, ...]] = POINT_SUFFIXES
    files_are: ClassVar[str] = "point"
    num_points: int = 1024

    def __post_init__(self):
        if self.num_points < 1:
            raise ValueError(f"points: num_points must be at least 1, not {self.num_points}")
        super().__post_init__()

    def shard(self, index: int, shard_size: int) -> Iterator[dict | Skipped]:
        for i, path, rel in self.files(index, shard_size):
            try:
                cloud = read_points(path)
            except Exception as e:  # plyfile, numpy and text parsing raise many types on bad files
                yield Skipped(rel, f"unreadable point file: {type(e).__name__}: {e}")
                continue
            key = _safe_key(f"{i:08d}", str(Path(rel).with_suffix("")))
            yield {"__key__": key, "point_cloud": resample(cloud, self.num_points)}
