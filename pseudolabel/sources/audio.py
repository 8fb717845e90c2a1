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

from fourm.data.audio import AUDIO_SUFFIXES, MAX_SECONDS, SAMPLE_RATE, read_audio
from pseudolabel.sources.base import Skipped, source
from pseudolabel.sources.files import FileFolder, _safe_key


def transcript_of(path: Path) -> Path:
    return path.with_suffix(".txt")


@source
class Audio(FileFolder):
    """Every audio file below ``path``, in sorted order; shard ``i`` is files ``[i*K, (i+1)*K)``."""

    name: ClassVar[str] = "audio"
    provides: ClassVar[tuple[str, ...]] = ("speech",)
    suffixes: ClassVar[tuple[str, ...]] = AUDIO_SUFFIXES
    files_are: ClassVar[str] = "audio"
    transcripts: bool | None = None
    max_seconds: float = MAX_SECONDS

    def __post_init__(self):
        if not self.max_seconds > 0:
            raise ValueError(f"audio: max_seconds must be positive, not {self.max_seconds}")
        super().__post_init__()
        if self.transcripts is None:  # decided here, once: every shard must agree on the series
            self.transcripts = all(transcript_of(p).is_file() for p in self._files)
        self.provides = ("speech", "caption") if self.transcripts else ("speech",)

    def shard(self, index: int, shard_size: int) -> Iterator[dict | Skipped]:
        for i, path, rel in self.files(index, shard_size):
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
