"""Features of a trained FourM: encoder outputs of any subset of input modalities, pooled.

The use of 4M as a backbone (the reference's issues #2 and #10) and Meta-Transformer's recipe (one
frozen shared encoder, light task heads; Zhang et al. 2023, arXiv 2307.10802): the encoder reads only
the chosen inputs, nothing is decoded. Samples come from a corpus (raw, tokenized with the model's
tokenizers, or a token corpus read as it is) and are tokenized once (:class:`EncoderInputs`), so a
fine-tuning run re-batches them every epoch without re-running an image tokenizer.

A features file is safetensors: ``features`` (N, ...) float32, ``valid`` (N, ...) bool (and ``mod``,
``pos`` with ``pool=none``), and in its metadata the sample ``keys`` as a JSON list, the ``inputs``
and the ``pool``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fourm.data.corpus import CorpusReader, read_manifest
from fourm.generation.pipeline import Pipeline
from fourm.io import atomic_path
from fourm.model.batch import Batch
from fourm.model.fourm import POOLS, FourM


def input_series(pipeline: Pipeline, corpus: str | os.PathLike, inputs: Sequence[str]) -> dict[str, str]:
    """Model modality -> the corpus series it is read from: the modality's own series in a token
    corpus (``tok_depth``), else its source (raw ``depth``, tokenized on reading)."""
    if not inputs:
        raise ValueError("no input modalities given")
    held = read_manifest(corpus)["modalities"]
    out = {}
    for name in inputs:
        for key in pipeline.model_keys(name):  # unknown names, modalities the model lacks: one line
            series = key if key in held else pipeline.specs[key].source
            if series not in held:
                raise ValueError(f"{corpus} has no {key} or {pipeline.specs[key].source} series for input "
                                 f"{name!r}; it holds: {', '.join(held)}")
            out[key] = series
    return out


class EncoderInputs:
    """Samples tokenized once for the encoder; :meth:`batch` packs any of them into a model Batch.

    Args:
        pipeline: the model and its tokenizers.
        keys: N sample keys.
        tokenized: model modality -> N model-ready values (``Pipeline.tokenize``'s form).
    """

    def __init__(self, pipeline: Pipeline, keys: list[str], tokenized: dict[str, list]):
        self.pipeline, self.keys, self.tokenized = pipeline, list(keys), tokenized
        self.modalities = list(tokenized)

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def from_samples(cls, pipeline: Pipeline, samples: list[dict], batch_size: int = 64,
                     progress: bool = False) -> EncoderInputs:
        """``{"__key__": ..., model modality: raw value or tokens}`` dicts, tokenized in chunks."""
        tokenized: dict[str, list] = {}
        for start in tqdm(range(0, len(samples), batch_size), desc="tokenize", unit="batch", disable=not progress):
            chunk = [{k: v for k, v in s.items() if k != "__key__"} for s in samples[start: start + batch_size]]
            for name, values in pipeline.tokenize(chunk).items():
                tokenized.setdefault(name, [None] * start).extend(values)
        for values in tokenized.values():  # a modality first met in a later chunk, or absent at the end
            values.extend([None] * (len(samples) - len(values)))
        return cls(pipeline, [str(s.get("__key__", i)) for i, s in enumerate(samples)], tokenized)

    @classmethod
    def from_corpus(cls, pipeline: Pipeline, corpus: str | os.PathLike, inputs: Sequence[str],
                    limit: int | None = None, batch_size: int = 64, progress: bool = False,
                    extra: Sequence[str] = ()) -> tuple[EncoderInputs, list[dict]]:
        """The ``inputs`` of a corpus' samples (the first ``limit``); also returns, per sample, the
        ``extra`` series (labels) read in the same pass."""
        series = input_series(pipeline, corpus, inputs)
        reader = CorpusReader(corpus, list(dict.fromkeys([*series.values(), *extra])))
        samples, extras = [], []
        for i, sample in enumerate(reader):
            if limit is not None and i >= limit:
                break
            samples.append({"__key__": sample["__key__"], **{k: sample.get(s) for k, s in series.items()}})
            extras.append({"__key__": sample["__key__"], **{s: sample.get(s) for s in extra}})
        if not samples:
            raise ValueError(f"{corpus} has no samples")
        return cls.from_samples(pipeline, samples, batch_size, progress), extras

    def batch(self, index: Sequence[int]) -> Batch:
        """An encoder-only Batch of samples ``index`` (every token of each input they have)."""
        index = [int(i) for i in index]
        chosen = {n: [v[i] for i in index] for n, v in self.tokenized.items()}
        chosen = {n: v for n, v in chosen.items() if any(x is not None for x in v)}
        return self.pipeline.state_of(chosen, len(index)).encoder_batch()


def _pad(parts: list[torch.Tensor], value=0) -> torch.Tensor:
    """Concatenate along dim 0 tensors whose dim 1 (tokens, with pool none) may differ."""
    if parts[0].dim() < 2 or len({p.shape[1] for p in parts}) == 1:
        return torch.cat(parts)
    n = max(p.shape[1] for p in parts)
    out = parts[0].new_full((sum(len(p) for p in parts), n, *parts[0].shape[2:]), value)
    start = 0
    for p in parts:
        out[start: start + len(p), : p.shape[1]] = p
        start += len(p)
    return out


@torch.no_grad()
def extract_features(model: FourM, inputs: EncoderInputs, pool: str = "mean", modalities: list[str] | None = None,
                     batch_size: int = 64, device: str = "cpu", progress: bool = True) -> dict[str, torch.Tensor]:
    """Features of every sample of ``inputs``: ``{"features", "valid"[, "mod", "pos"]}`` on the CPU."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
    model = model.to(device).eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for start in tqdm(range(0, len(inputs), batch_size), desc="features", unit="batch", disable=not progress):
        batch = inputs.batch(range(start, min(start + batch_size, len(inputs)))).to(device)
        out = model.encode_features(batch, pool, modalities or inputs.modalities)
        for name, value in zip(("features", "valid", "mod", "pos"), out, strict=True):
            if value is not None:
                parts.setdefault(name, []).append(value.float().cpu() if name == "features" else value.cpu())
    return {name: _pad(values) for name, values in parts.items()}


def write_features(path: str | os.PathLike, tensors: dict[str, torch.Tensor], keys: list[str],
                   **metadata) -> Path:
    """Write a features file atomically (temporary name, fsync, rename); keys go in the metadata."""
    from safetensors.torch import save_file

    if len(keys) != len(tensors["features"]):
        raise ValueError(f"{len(keys)} keys for {len(tensors['features'])} feature rows")
    meta = {"keys": json.dumps(list(keys)), **{k: json.dumps(v) for k, v in metadata.items()}}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    return Path(path)


def read_features(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], list[str], dict]:
    """(tensors, keys, other metadata) of a features file."""
    from safetensors import safe_open

    from fourm.io import load_tensors

    tensors = load_tensors(path)
    with safe_open(str(path), "pt") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    if "keys" not in meta:
        raise ValueError(f"{path} is not a fourm features file: its metadata has no keys")
    return tensors, meta.pop("keys"), meta


def run_features(model: str | os.PathLike, corpus: str | os.PathLike, inputs: Sequence[str],
                 out: str | os.PathLike, tokenizers: str | os.PathLike | None = None, pool: str = "mean",
                 batch_size: int = 64, limit: int | None = None, device: str = "cpu",
                 progress: bool = True) -> tuple[Path, int, float]:
    """``fourm features``: -> (path, samples, features per second of the encoder)."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
    pipeline = Pipeline.from_pretrained(model, tokenizers, device)
    data, _ = EncoderInputs.from_corpus(pipeline, corpus, inputs, limit, batch_size, progress)
    start = time.perf_counter()
    tensors = extract_features(pipeline.model, data, pool, None, batch_size, device, progress)
    rate = len(data) / max(time.perf_counter() - start, 1e-9)
    path = write_features(out, tensors, data.keys, inputs=data.modalities, pool=pool, model=str(model))
    return path, len(data), rate

