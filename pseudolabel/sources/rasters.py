"""A source of aligned image-like data: one subfolder per corpus series, files matched by name (``rasters:PATH``).

``PATH/rgb/a.png``, ``PATH/thermal/a.tiff`` and ``PATH/xray/a.npy`` are the series ``rgb``, ``thermal`` and
``xray`` of sample ``a`` (the path below the series folder, without its suffix, is the sample's name; nested
folders are fine). Every series folder must be one of ``RASTER_SERIES``; a sample that lacks one of the
series is skipped and reported, as is a file that cannot be read. Values become the corpus' units:

* ``rgb``: any image Pillow reads (``pseudolabel.sources.files.load_image``).
* measures, one value a pixel (``depth`` in metres, ``xray`` attenuation, ``thermal`` kelvin): ``.npy`` and
  float TIFF (mode ``F``) as they are; a 16-bit PNG or TIFF as the corpus stores that series (``value /
  scale - offset``: centi-kelvin for thermal, thousandths for X-ray and depth), so files that fourm wrote
  read back exactly.
* ``hyperspectral``: ``.npy`` of ``(H, W, C)`` bands, or a TIFF (``tifffile``) of them, either as samples of
  a pixel or as pages (one band a page, the layout of most hyperspectral TIFFs: the file's axes tell which);
  ``uint8`` is taken as stored (gamma-encoded, as the corpus keeps it), floats as linear radiance in [0, 1]
  and other integers as linear over their type's range.

Each value is centre-cropped to a square and resized to ``image_size`` (colours and measures bilinear).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np

from fourm.data.codecs import IMAGE_SUFFIXES
from fourm.kinds import resize
from fourm.modalities import CORPUS
from pseudolabel.sources.base import Skipped, source
from pseudolabel.sources.files import FileFolder, _safe_key, load_image

RASTER_SUFFIXES = (*IMAGE_SUFFIXES, ".npy")


def _array(path: Path) -> np.ndarray:
    """A file's numbers as they are, channels last: ``.npy`` (no pickles), TIFF through tifffile (pages of
    planes moved last), other images through Pillow."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            array = series.asarray()
        planes_first = array.ndim == 3 and series.axes.endswith("YX")  # one plane a page, not samples of a pixel
        return np.moveaxis(array, 0, -1) if planes_first else array
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image)


def _square(value: np.ndarray, key: str, size: int | None) -> np.ndarray:
    h, w = value.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    value = value[top:top + side, left:left + side]
    return value if size is None else resize(value, key, size)


def read_measure(path: Path, key: str, size: int | None) -> np.ndarray:
    """One value a pixel, in the series' units -> ``float32 (size, size)``."""
    value = _array(path)
    if value.ndim == 3 and value.shape[-1] in (3, 4) and np.ptp(value[..., :3], axis=-1).max() == 0:
        value = value[..., 0]  # grey saved as RGB(A)
    if value.ndim != 2:
        raise ValueError(f"{path.name}: expected one value a pixel (H, W), got shape {value.shape}")
    storage = CORPUS[key].storage
    if value.dtype.kind in "iu" and path.suffix.lower() != ".npy" and storage.scale is not None:
        value = value.astype(np.float64) / storage.scale - storage.offset  # the corpus' own PNG encoding
    value = value.astype(np.float32)
    if not np.isfinite(value).all():
        raise ValueError(f"{path.name}: values that are not finite")
    return _square(value, key, size)


def read_bands(path: Path, key: str, size: int | None) -> np.ndarray:
    """Spectral bands -> ``uint8 (size, size, C)``, gamma-encoded as the corpus keeps them."""
    value = _array(path)
    if value.ndim != 3:
        raise ValueError(f"{path.name}: expected bands (H, W, C), got shape {value.shape}")
    if value.dtype != np.uint8:
        if value.dtype.kind in "iu":
            linear = value.astype(np.float64) / np.iinfo(value.dtype).max
        else:
            linear = np.nan_to_num(value.astype(np.float64))
        value = np.round(np.sqrt(np.clip(linear, 0, 1)) * 255).astype(np.uint8)
    return _square(value, key, size)


def read_colour(path: Path, key: str, size: int | None) -> np.ndarray:
    return _square(load_image(path, None)[0], key, size)  # cropped as the other series are: pixels stay aligned


# series -> reader(path, series, image_size) -> value
RASTER_SERIES: dict[str, Callable[[Path, str, int | None], np.ndarray]] = {
    "rgb": read_colour, "depth": read_measure, "xray": read_measure, "thermal": read_measure,
    "hyperspectral": read_bands,
}


@source
class Rasters(FileFolder):
    """Samples of aligned series below ``path`` (see the module notes); shard ``i`` is samples ``[i*K, (i+1)*K)``
    in sorted order of their names."""

    name: ClassVar[str] = "rasters"
    suffixes: ClassVar[tuple[str, ...]] = RASTER_SUFFIXES
    files_are: ClassVar[str] = "raster"
    image_size: int | None = 64

    def __post_init__(self):
        super().__post_init__()
        root = Path(self.path)
        self._by_name: dict[str, dict[str, Path]] = {}
        for file in self._files:
            series, *rest = file.relative_to(root).parts
            if not rest:
                raise ValueError(f"rasters: {file.name} lies in {self.path} itself; put each series in a folder "
                                 f"named after it ({', '.join(RASTER_SERIES)})")
            if series not in RASTER_SERIES:
                raise ValueError(f"rasters: folder {series!r} is no series this source reads; known: "
                                 f"{', '.join(RASTER_SERIES)}")
            self._by_name.setdefault(str(Path(*rest).with_suffix("")), {})[series] = file
        found = {s for files in self._by_name.values() for s in files}
        self.provides = tuple(s for s in RASTER_SERIES if s in found)  # in the table's order: rgb first
        self._names = sorted(self._by_name)

    def num_shards(self, shard_size: int) -> int:
        return -(-len(self._names) // shard_size)

    def num_samples(self) -> int:
        return len(self._names)

    def shard(self, index: int, shard_size: int) -> Iterator[dict | Skipped]:
        for i in range(index * shard_size, min((index + 1) * shard_size, len(self._names))):
            name = self._names[i]
            files = self._by_name[name]
            missing = [s for s in self.provides if s not in files]
            if missing:
                yield Skipped(name, f"no {', '.join(missing)} file (every sample needs each series)")
                continue
            sample = {"__key__": _safe_key(f"{i:08d}", name)}
            try:
                for series in self.provides:
                    sample[series] = RASTER_SERIES[series](files[series], series, self.image_size)
            except Exception as e:  # Pillow, tifffile and numpy raise many types on bad files
                yield Skipped(name, f"unreadable {series} file {files[series].name}: {type(e).__name__}: {e}")
                continue
            yield sample
