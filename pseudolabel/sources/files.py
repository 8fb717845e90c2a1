"""Sources of real images: a folder tree, or existing webdataset shards (with optional captions).

Images are centre-cropped to a square and resized to ``image_size`` (``None`` keeps them as they
are; the corpus then holds images of mixed sizes, which tokenizers cannot batch). The original size
travels along as ``__size__`` for the metadata labeller. An unreadable or empty file is skipped
and reported, never fatal.
"""

from __future__ import annotations

import io
import re
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
        image = ImageOps.exif_transpose(image).convert("RGB")
    size = image.size
    if image_size is not None:
        image = ImageOps.fit(image, (image_size, image_size), Image.Resampling.BICUBIC)
    return np.asarray(image), size


def _safe_key(prefix: str, name: str) -> str:
    # webdataset splits a member name at the first dot of its base name: keys hold none
    return f"{prefix}_{re.sub(r'[^A-Za-z0-9_-]+', '_', name)[:80]}"


@source
class Folder(Source):
    """Every jpg/png/webp file below ``path``, in sorted order; shard ``i`` is files ``[i*K, (i+1)*K)``."""

    name: ClassVar[str] = "folder"
    path: str = "."
    image_size: int | None = 64

    def __post_init__(self):
        root = Path(self.path)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {self.path!r} does not exist")
        self._files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self._files:
            raise ValueError(f"no {'/'.join(e[1:] for e in IMAGE_SUFFIXES)} images below {self.path!r}")

    @classmethod
    def from_arg(cls, arg: str, **options) -> Folder:
        return cls(path=arg, **options)

    def num_shards(self, shard_size: int) -> int:
        return -(-len(self._files) // shard_size)

    def num_samples(self) -> int:
        return len(self._files)

    def shard(self, index: int, shard_size: int) -> Iterator[dict | Skipped]:
        root = Path(self.path)
        for i in range(index * shard_size, min((index + 1) * shard_size, len(self._files))):
            path = self._files[i]
            rel = str(path.relative_to(root))
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
        import glob

        from webdataset.shardlists import expand_urls

        urls = [u for part in expand_urls(self.pattern) for u in (sorted(glob.glob(part)) or [part])]
        self._urls = [u for u in urls if Path(u).is_file()]
        if not self._urls:
            raise FileNotFoundError(f"no webdataset shards match {self.pattern!r}")
        first = next(self._samples(self._urls[0]), {})
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
    def _samples(url: str, errors: list | None = None) -> Iterator[dict]:
        from webdataset.tariterators import group_by_keys, tar_file_iterator

        def handler(exn):
            if errors is None:
                raise exn
            errors.append(f"{type(exn).__name__}: {exn}")
            return False  # a damaged tar stream cannot be resynchronised: stop this shard

        with open(url, "rb") as f:
            members = ({**m, "__url__": url} for m in tar_file_iterator(f, handler=handler))
            yield from group_by_keys(members, handler=handler)

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
