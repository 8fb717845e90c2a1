"""Tokenizer training data: one corpus series held in memory, split, and served in a fixed order.

At the scales a tokenizer is trained here (thousands of 64-224 px samples) the series fits in
memory, which keeps a CPU busy with the model instead of PNG decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

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


class TensorTask:
    """A :class:`fourm.train.loop.Task` over in-memory tensors, the shape every vector / signal / cloud
    tokenizer trains in: seeded random batches, the model's own loss, held-out metrics. A family sets
    ``model_class`` (built from ``cfg.model``, normalised on the training set), ``score`` (model, held-out
    tensor -> metrics) and which loss terms it logs (name -> output attribute)."""

    model_class: ClassVar[type]
    score: ClassVar[Callable[[Any, torch.Tensor], dict[str, float]]]
    logged: ClassVar[dict[str, str]] = {"recon": "recon_loss", "commit": "aux_loss"}

    def __init__(self, cfg, train_x: torch.Tensor, eval_x: torch.Tensor):
        self.cfg, self.train_x, self.eval_x = cfg, train_x, eval_x

    def build_model(self):
        model = self.model_class(self.cfg.model)
        model.fit_normalization(self.train_x)
        return model

    def train_batches(self, start_step: int, rank: int, world_size: int):
        micro = start_step * self.cfg.train.grad_accum
        for idx in index_batches(len(self.train_x), self.cfg.batch_size, self.cfg.train.seed, micro, rank, world_size):
            yield self.train_x[idx]

    def loss(self, model, batch):
        out = model(batch)
        return out.loss, {name: getattr(out, attr).detach() for name, attr in self.logged.items()}

    def evaluate(self, model) -> dict[str, float]:
        return type(self).score(model, self.eval_x)


def tokenizer_dir(out: str | Path, key: str) -> Path:
    """Where the tokenizer ``key`` is saved in the tokenizers folder ``out``: ``out/<key>`` for a model
    modality, ``out/parts/<key>`` for a part of a serializer (mask and pose coders), so that
    ``load_tokenizers(out)`` only ever meets model modalities."""
    return Path(out) / key if key in MODALITIES else Path(out) / "parts" / key
