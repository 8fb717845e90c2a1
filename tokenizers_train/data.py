"""Tokenizer training data: one corpus series held in memory, split, and served in a fixed order.

At the scales a tokenizer is trained here (thousands of 64-224 px samples) the series fits in
memory, which keeps a CPU busy with the model instead of PNG decoding.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from fourm.data.corpus import CorpusReader
from fourm.modalities import MODALITIES


def load_series(corpus: str, name: str, eval_samples: int, limit: int | None = None) -> tuple[list, list, dict]:
    """Values of series ``name``: (train, held-out = the last ``eval_samples``, manifest)."""
    reader = CorpusReader(corpus, [name])
    total = len(reader) if limit is None else min(limit, len(reader))
    values = []
    for sample in tqdm(reader, total=total, desc=f"load {name}", unit="sample", leave=False):
        values.append(sample[name])
        if len(values) == total:
            break
    if eval_samples >= len(values):
        raise ValueError(f"{corpus} has {len(values)} {name} samples: too few to hold out {eval_samples}")
    return values[:-eval_samples or None], values[len(values) - eval_samples:], reader.manifest


def index_batches(n: int, batch_size: int, seed: int, start_step: int, rank: int = 0,
                  world_size: int = 1) -> Iterator[torch.Tensor]:
    """Index batches over ``n`` items: a fresh seeded permutation per epoch, any step restartable.

    Each rank takes its own slice of every global batch, so ranks never see the same item at once.
    """
    global_batch = batch_size * world_size
    per_epoch = max(1, n // global_batch)
    step = start_step
    while True:
        epoch, offset = divmod(step, per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        start = offset * global_batch + rank * batch_size
        yield order[start:start + batch_size]
        step += 1


def tokenizer_dir(out: str | Path, key: str) -> Path:
    """Where the tokenizer ``key`` is saved in the tokenizers folder ``out``: ``out/<key>`` for a model
    modality, ``out/parts/<key>`` for a part of a serializer (mask and pose coders), so that
    ``load_tokenizers(out)`` only ever meets model modalities."""
    return Path(out) / key if key in MODALITIES else Path(out) / "parts" / key
