"""What every source is: a finite, shard-addressable stream of raw samples.

Shards are the unit of work: ``shard(i)`` can be produced by any process in any order, and always
yields the same samples, which is what makes the pipeline resumable and splittable across ranks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import ClassVar

from pseudolabel.registry import lookup, register


@dataclasses.dataclass(frozen=True)
class Skipped:
    """An input that could not be read: it yields no sample, only a line in the manifest."""

    item: str
    reason: str


@dataclasses.dataclass
class Source:
    name: ClassVar[str]
    # modalities every sample carries (ground truth for the scenes source)
    provides: ClassVar[tuple[str, ...]] = ("rgb",)

    def num_shards(self, shard_size: int) -> int:
        raise NotImplementedError

    def num_samples(self) -> int | None:
        """How many inputs there are, where that is known without reading them all (progress bars)."""
        return None

    def shard(self, index: int, shard_size: int) -> Iterator[dict | Skipped]:
        """Samples (``{"__key__": str, modality: value}``) of shard ``index``; unreadable inputs as Skipped."""
        raise NotImplementedError

    def extra_classes(self) -> dict:
        """Label sets the source defines (e.g. semantic class names), recorded in the manifest."""
        return {}

    def describe(self) -> dict:
        return {"name": self.name, "provides": list(self.provides), **dataclasses.asdict(self)}


def source(cls):
    """Class decorator: make ``cls`` a dataclass and register it under ``cls.name``."""
    return register("source")(dataclasses.dataclass(cls))


def parse_source(spec: str, **options) -> Source:
    """``"scenes:64"``, ``"folder:PATH"``, ``"wds:PATTERN"`` -> a Source.

    ``options`` are the pipeline's common settings (image_size, seed); each source takes those it has.
    """
    name, _, arg = spec.partition(":")
    if not arg:
        raise ValueError(f"source {spec!r} has no argument: use scenes:N, folder:PATH, wds:PATTERN, points:PATH, "
                         "audio:PATH, rasters:PATH or csv:PATH")
    cls = lookup("source", name)
    accepted = {f.name for f in dataclasses.fields(cls)}
    if options.get("series") and "series" not in accepted:  # silently dropped, the corpus would lack them
        raise ValueError(f"source {name!r} renders no extra series ({', '.join(options['series'])}): only scenes do")
    return cls.from_arg(arg, **{k: v for k, v in options.items() if k in accepted})
