"""Corpus -> token corpus: every tokenizer of a folder applied to its series, shard by shard.

The token corpus has the corpus' shards and keys, one series per model modality (``tok_rgb``,
``caption``, ...) holding ``.npy`` ids, plus the raw inputs the model reads without a tokenizer
(``rgb`` pixels, ``t5_caption`` vectors) copied as they are, so training reads one folder. Like
the pseudo-labelling pipeline it is resumable shard by shard, refuses to mix settings, and splits
the work by shard over ranks (``RANK``/``WORLD_SIZE``, as ``accelerate launch``, ``torchrun`` or a
SLURM array set them): rank ``r`` of ``W`` tokenizes the shards ``i`` with ``i % W == r``, each rank
rewrites the manifest when it is done, and the last one to finish marks it complete.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fourm.data.corpus import (
    CorpusReader,
    finished_shards,
    planned,
    read_manifest,
    storage_entry,
    write_manifest,
    write_shard,
)
from fourm.kinds import handler, token_count_key
from fourm.modalities import CORPUS, MODALITIES, ModalityScale, Storage, get_modality
from fourm.tokenization.base import load_tokenizers, token_count

log = logging.getLogger(__name__)


@dataclass
class TokenizeConfig:
    corpus: str = "runs/corpus"
    tokenizers: str = "runs/tokenizers"
    out: str = "runs/tokens"
    modalities: list[str] | None = None  # model modalities to tokenize; None: every tokenizer in the folder
    passthrough: list[str] | None = None  # raw model inputs to copy; None: the input-only ones the corpus has
    batch_size: int = 64
    device: str = "cpu"
    # read when the config is made, not when the module is imported (a launcher sets them per process)
    rank: int = field(default_factory=lambda: int(os.environ.get("RANK", 0)))
    world_size: int = field(default_factory=lambda: int(os.environ.get("WORLD_SIZE", 1)))

    def __post_init__(self):
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")


def _passthrough(cfg: TokenizeConfig, corpus_series: list[str]) -> list[str]:
    if cfg.passthrough is not None:
        names = [get_modality(m).key for m in cfg.passthrough]
        bad = [m for m in names if MODALITIES[m].tokenizer is not None]
        if bad:
            raise ValueError(f"{', '.join(bad)} have tokenizers: tokenize them instead of copying")
        return names
    return [m.key for m in MODALITIES.values()
            if handler(m).continuous and m.source in corpus_series]  # raw inputs: copied as they are


def _tokens(tokenizer, values: list) -> list[np.ndarray]:
    """One id array per sample, in the storage dtype of the modality."""
    dtype = MODALITIES[tokenizer.modality].token_dtype
    with torch.no_grad():
        ids = tokenizer.encode(values)
    if isinstance(ids, torch.Tensor):
        ids = ids.cpu().numpy()
    return [np.asarray(row, dtype=dtype) for row in ids]


def tokenize_corpus(cfg: TokenizeConfig, progress: bool = True) -> dict:
    """Write (or finish) the token corpus ``cfg.out``; return its manifest."""
    corpus = read_manifest(cfg.corpus)
    tokenizers = load_tokenizers(cfg.tokenizers, cfg.modalities, cfg.device)
    missing = {m: t for m, t in tokenizers.items() if MODALITIES[m].source not in corpus["modalities"]}
    if missing:
        if cfg.modalities is not None:  # asked for by name: that is an error
            m = next(iter(missing))
            raise ValueError(f"{cfg.corpus} has no {MODALITIES[m].source} series to make {m} from")
        log.info("skipping %s: the corpus lacks their series", ", ".join(missing))
        tokenizers = {m: t for m, t in tokenizers.items() if m not in missing}
    if not tokenizers:
        raise ValueError(f"no tokenizer in {cfg.tokenizers} applies to {cfg.corpus}")
    copied = _passthrough(cfg, list(corpus["modalities"]))
    storages = {m: Storage("npy", MODALITIES[m].token_dtype) for m in tokenizers}
    storages.update({m: CORPUS[MODALITIES[m].source].storage for m in copied})
    plan = {
        "corpus": {"num_samples": corpus["num_samples"], "shard_samples": corpus["shard_samples"],
                   "source": corpus.get("source")},
        "tokenizers": {m: {"class": type(t).__name__, "vocab_size": t.vocab_size,
                           token_count_key(MODALITIES[m]): token_count(t)} for m, t in tokenizers.items()},
        "passthrough": copied,
    }
    with planned(cfg.out, plan):
        sources = sorted({MODALITIES[m].source for m in [*tokenizers, *copied]})
        reader = CorpusReader(cfg.corpus, sources)
        done = finished_shards(cfg.out)
        todo = [i for i in range(reader.num_shards) if i % cfg.world_size == cfg.rank and i not in done]
        mine = sum(n for i, n in enumerate(corpus["shard_samples"]) if i % cfg.world_size == cfg.rank)
        with tqdm(total=mine, initial=sum(r["num_samples"] for i, r in done.items() if i % cfg.world_size == cfg.rank),
                  unit="sample",
                  desc="tokenize", disable=not progress or not todo) as bar:
            for index in todo:
                before = len(reader.skipped.items)
                raw = list(reader.shard(index))
                samples = [{"__key__": s["__key__"]} for s in raw]
                for start in range(0, len(raw), cfg.batch_size):
                    batch, out = raw[start:start + cfg.batch_size], samples[start:start + cfg.batch_size]
                    for m, tokenizer in tokenizers.items():
                        values = [s[MODALITIES[m].source] for s in batch]
                        for sample, ids in zip(out, _tokens(tokenizer, values), strict=True):
                            sample[m] = ids
                    for m in copied:
                        for sample, s in zip(out, batch, strict=True):
                            sample[m] = s[MODALITIES[m].source]
                write_shard(cfg.out, index, samples, storages, {"skipped": reader.skipped.items[before:]})
                bar.update(len(samples))
    records = finished_shards(cfg.out)
    grids = {m: t.num_tokens for m, t in tokenizers.items() if MODALITIES[m].is_image}
    return write_manifest(cfg.out, {
        **plan,
        "modalities": {m: storage_entry(s, **plan["tokenizers"].get(m, {"copied_from": MODALITIES[m].source}))
                       for m, s in storages.items()},
        "classes": corpus.get("classes", {}),
        "image_size": corpus.get("image_size"),
        # the scale the model must train at: image size and patches (read by fourm.data.loader.manifest_scale)
        **({"scale": ModalityScale.from_grids(corpus["image_size"], grids).record()}
           if grids and corpus.get("image_size") else {}),
        "complete": len(records) == reader.num_shards,
        "corpus_path": str(Path(cfg.corpus).resolve()) if os.path.isdir(cfg.corpus) else cfg.corpus,
    })
