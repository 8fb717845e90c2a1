"""Sources of real images: a folder tree, or existing webdataset shards (with optional captions).

Images are centre-cropped to a square and resized to ``image_size`` (``None`` keeps them as they
are; the corpus then holds images of mixed sizes, which tokenizers cannot batch). The original size
travels along as ``__size__`` for the metadata labeller. High-bit-depth grey (16-bit, float) is
scaled to 8 bits by its range (see :func:`_to_rgb`). An unreadable or empty file is skipped and
reported, never fatal; so is the rest of a damaged webdataset shard, after the samples before the
damage.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np

from fourm.data.codecs import IMAGE_SUFFIXES
from pseudolabel.sources.base import Skipped, Source, source


def load_image(data: bytes | str | Path, image_size: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode (and square-crop/resize) an image -> (uint8 (H, W, 3), original (W, H)); raises on bad data."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        image.load()  # decode now: a truncated file fails here, not later in a labeller
        image = _to_rgb(ImageOps.exif_transpose(image))
    size = image.size
    if image_size is not None:
        image = ImageOps.fit(image, (image_size, image_size), Image.Resampling.BICUBIC)
    return np.asarray(image), size


def _to_rgb(image):
    """``image`` (a PIL image) as 8-bit RGB, with high-bit-depth grey scaled by its range.

    Pillow's ``convert("RGB")`` clips 16-bit and float grey at 255 instead of scaling it, which turns
    a 16-bit photo almost white. Integer grey (``I;16``, ``I;16B``..., and ``I``, Pillow's mode for
    16-bit PGM and some 16-bit TIFF and PNG data) is read as 16-bit: divided by 257 (65535 -> 255),
    anything outside 0..65535 clipped. Float grey (``F``, 32-bit TIFF) in [0, 1] is multiplied by 255;
    floats beyond it have no standard range (metres, radiance), so they are stretched from their
    minimum to their maximum (a constant image becomes black), NaN is 0 and infinities clip. 16-bit
    RGB(A) needs none of this: Pillow decodes it to 8 bits itself.
    """
    from PIL import Image

    if image.mode.startswith("I"):
        values = np.asarray(image, np.float64) / 257
    elif image.mode == "F":
        values = np.asarray(image, np.float64)
        finite = values[np.isfinite(values)]
        lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
        if lo < 0 or hi > 1:
            values = (values - lo) / ((hi - lo) or 1.0)
        values = np.nan_to_num(values * 255, nan=0.0)
    else:
        return image.convert("RGB")
    return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8)).convert("RGB")


def _tar_files(f, url: str, damage: list[str]) -> Iterator[dict]:
    """The files of the tar stream ``f``, as webdataset's ``{"fname", "data", "__url__"}`` dicts.

    Damage ends the stream and adds a line to ``damage``: a read error (a file cut inside a member),
    and also a stream that stops without the end-of-archive block (all zeros) every tar writer puts
    last, which Python's tarfile takes for a normal end (a file cut on a 512-byte block boundary,
    a garbled header): the samples after the cut would otherwise vanish without a record.
    """
    last = [b""]  # the last header block read

    class Header(tarfile.TarInfo):
        @classmethod
        def frombuf(cls, buf, encoding, errors):
            last[0] = buf
            return super().frombuf(buf, encoding, errors)

    after = "the start"
    try:
        with tarfile.open(fileobj=f, mode="r|*", tarinfo=Header) as stream:
            for info in stream:
                if info.isreg() and not re.match(r"__[^/]*__($|/)", info.name):  # webdataset's meta files
                    yield {"fname": info.name, "data": stream.extractfile(info).read(), "__url__": url}
                after = info.name
                stream.members = []  # stream mode otherwise keeps every header of the shard
    except Exception as e:  # ReadError, EOFError, zlib.error...: a damaged shard is never fatal
        damage.append(f"{type(e).__name__}: {e} after {after}")
        return
    if last[0] != bytes(tarfile.BLOCKSIZE):
        damage.append(f"no end-of-archive block after {after} (cut short, or a header is garbled)")


def _safe_key(prefix: str, name: str) -> str:
    # webdataset splits a member name at the first dot of its base name: keys hold none
    return f"{prefix}_{re.sub(r'[^A-Za-z0-9_-]+', '_', name)[:80]}"


@dataclasses.dataclass
class FileFolder(Source):
    """Every file below ``path`` with one of ``suffixes``, in sorted order; shard ``i`` is files
    ``[i*K, (i+1)*K)``. The folder sources (images, point clouds, audio) differ only in how a file is read."""

    suffixes: ClassVar[tuple[str, ...]]
    files_are: ClassVar[str]  # what the files are, for the messages: "image", "point", "audio"
    path: str = "."

    def __post_init__(self):
        root = Path(self.path)
        if not root.is_dir():
            raise FileNotFoundError(f"{self.files_are} folder {self.path!r} does not exist")
        self._files = sorted(p for p in root.rglob("*") if p.suffix.lower() in self.suffixes and p.is_file())
        if not self._files:
            raise ValueError(f"no {'/'.join(e[1:] for e in self.suffixes)} {self.files_are} files below {self.path!r}")

    @classmethod
    def from_arg(cls, arg: str, **options) -> FileFolder:
        return cls(path=arg, **options)

    def num_shards(self, shard_size: int) -> int:
        return -(-len(self._files) // shard_size)

    def num_samples(self) -> int:
        return len(self._files)

    def files(self, index: int, shard_size: int) -> Iterator[tuple[int, Path, str]]:
        """Shard ``index``'s files: (index in the folder, path, path relative to the folder)."""
        root = Path(self.path)
        for i in range(index * shard_size, min((index + 1) * shard_size, len(self._files))):
            yield i, self._files[i], str(self._files[i].relative_to(root))


@source
class Folder(FileFolder):
    """Every jpg/png/webp file below ``path``, in sorted order; shard ``i`` is files ``[i*K, (i+1)*K)``."""

    name: ClassVar[str] = "folder"
    suffixes: ClassVar[tuple[str, ...]] = IMAGE_SUFFIXES
    files_are: ClassVar[str] = "image"
    image_size: int | None = 64

    def shard(self, index: int, shard_size: int) -> Iterator[dict | Skipped]:
        for i, path, rel in self.files(index, shard_size):
            if path.stat().st_size == 0:
                yield Skipped(rel, "empty file")
                continue
            try:
                rgb, size = load_image(path, self.image_size)
            except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
                yield Skipped(rel, f"unreadable image: {type(e).__name__}: {e}")
                continue
            yield {"__key__": _safe_key(f"{i:08d}", str(Path(rel).with_suffix(""))), "__size__": size, "rgb": rgb}


@source
class WebDataset(Source):
    """Existing webdataset shards of images; input shard ``i`` becomes corpus shard ``i``.

    ``pattern`` is a brace pattern (``data/shard-{000000..000009}.tar``) or a glob. Any member with
    an image extension is the image; a ``txt`` member, when the first sample has one, the caption.
    Shards keep their own size (``shard_size`` does not apply).
    """

    name: ClassVar[str] = "wds"
    pattern: str = ""
    image_size: int | None = 64

    def __post_init__(self):
        from webdataset.shardlists import expand_urls

        urls = [u for part in expand_urls(self.pattern) for u in (sorted(glob.glob(part)) or [part])]
        self._urls = [u for u in urls if Path(u).is_file()]
        if not self._urls:
            raise FileNotFoundError(f"no webdataset shards match {self.pattern!r}")
        # the first sample that can be read tells whether there are captions; a damaged shard is
        # reported when its turn comes, not here
        first = next((sample for url in self._urls for sample in self._samples(url, [])), {})
        self._captions = "txt" in first

    @property
    def provides(self) -> tuple[str, ...]:
        return ("rgb", "caption") if self._captions else ("rgb",)

    @classmethod
    def from_arg(cls, arg: str, **options) -> WebDataset:
        return cls(pattern=arg, **options)

    def num_shards(self, shard_size: int) -> int:
        return len(self._urls)

    @staticmethod
    def _samples(url: str, errors: list[str]) -> Iterator[dict]:
        """The samples of shard ``url``; damage ends the shard early and adds a line to ``errors``."""
        from webdataset.tariterators import group_by_keys

        def handler(exn):
            errors.append(f"{type(exn).__name__}: {exn}")
            return False  # a damaged tar stream cannot be resynchronised: stop this shard

        with open(url, "rb") as f:
            yield from group_by_keys(_tar_files(f, url, errors), handler=handler)

    def shard(self, index: int, shard_size: int) -> Iterator[dict | Skipped]:
        url = self._urls[index]
        errors: list[str] = []
        for n, raw in enumerate(self._samples(url, errors)):
            key = raw["__key__"]
            image_ext = next((e for e in raw if "." + e in IMAGE_SUFFIXES), None)
            if image_ext is None:
                yield Skipped(f"{url}:{key}", "no image member")
                continue
            try:
                rgb, size = load_image(raw[image_ext], self.image_size)
            except Exception as e:
                yield Skipped(f"{url}:{key}", f"unreadable image: {type(e).__name__}: {e}")
                continue
            sample = {"__key__": _safe_key(f"{index:06d}-{n:06d}", Path(key).name), "__size__": size, "rgb": rgb}
            if self._captions:
                if "txt" not in raw:
                    yield Skipped(f"{url}:{key}", "no caption")
                    continue
                sample["caption"] = raw["txt"].decode("utf-8", errors="replace").strip()
            yield sample
        for error in errors:
            yield Skipped(url, f"damaged shard: {error}")
