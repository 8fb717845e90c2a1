"""Look at a corpus: one sample, every modality side by side, so labels can be checked by eye (and
by ear: a sample's speech is written beside the picture as ``<out>.speech.wav``)."""

from __future__ import annotations

import os
from pathlib import Path

from fourm.data.corpus import CorpusReader
from fourm.viz.render import sample_grid


def save_sample_grid(corpus: str | os.PathLike, index: int, out: str | os.PathLike,
                     modalities: str | list[str] | None = None) -> Path:
    reader = CorpusReader(corpus, modalities)
    sample = reader.sample(index)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sample_grid(sample, reader.modalities, classes=reader.manifest.get("classes")).save(out)
    if "speech" in sample:  # a picture of a sound is half of it
        from fourm.data.audio import write_wav

        write_wav(out.with_suffix(".speech.wav"), sample["speech"])
    return out
