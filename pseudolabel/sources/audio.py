"""A source of real speech: every ``.wav``, ``.flac`` and ``.ogg`` file below a folder (``audio:PATH``).

Each file becomes one ``speech`` sample as the corpus keeps speech (:mod:`fourm.data.audio`): read with
``soundfile``, channels averaged, resampled to 16 kHz (soxr), ``int16``, cut at ``max_seconds``.

Transcripts are optional: ``name.txt`` beside ``name.wav`` becomes the sample's ``caption``. A corpus
series needs a value in every sample, so ``transcripts`` decides: ``None`` (the default) takes them
when every audio file has one and leaves captions out otherwise; ``True`` requires them (a file without
one is skipped and reported); ``False`` ignores them. An unreadable file is skipped and reported.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from fourm.data.audio import MAX_SECONDS, SAMPLE_RATE, read_audio
from pseudolabel.sources.base import Skipped, Source, source
from pseudolabel.sources.files import _safe_key

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def transcript_of(path: Path) -> Path:
    return path.with_suffix(".txt")


@source
class Audio(Source):
    """Every audio file below ``path``, in sorted order; shard ``i`` is files ``[i*K, (i+1)*K)``."""

    name: ClassVar[str] = "audio"
    provides: ClassVar[tuple[str, ...]] = ("speech",)
    path: str = "."
    transcripts: bool | None = None
    max_seconds: float = MAX_SECONDS

    def __post_init__(self):
        root = Path(self.path)
        if not root.is_dir():
            raise FileNotFoundError(f"audio folder {self.path!r} does not exist")
        if not self.max_seconds > 0:
            raise ValueError(f"audio: max_seconds must be positive, not {self.max_seconds}")
        self._files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        if not self._files:
            raise ValueError(f"no {'/'.join(e[1:] for e in AUDIO_SUFFIXES)} audio files below {self.path!r}")
        if self.transcripts is None:  # decided here, once: every shard must agree on the series
            self.transcripts = all(transcript_of(p).is_file() for p in self._files)
        self.provides = ("speech", "caption") if self.transcripts else ("speech",)

    @classmethod
    def from_arg(cls, arg: str, **options) -> Audio:
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
            sample = {"__key__": _safe_key(f"{i:08d}", str(Path(rel).with_suffix("")))}
            if self.transcripts:
                text = transcript_of(path)
                if not text.is_file():
                    yield Skipped(rel, f"no transcript {text.name} beside it (transcripts are required)")
                    continue
                sample["caption"] = " ".join(text.read_text(encoding="utf-8", errors="replace").split())
            try:
                sample["speech"] = read_audio(path, int(self.max_seconds * SAMPLE_RATE))
            except Exception as e:  # soundfile raises its own LibsndfileError, RuntimeError or ValueError
                yield Skipped(rel, f"unreadable audio file: {type(e).__name__}: {e}")
                continue
            yield sample
