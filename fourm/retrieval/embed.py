"""Embedders: samples -> unit vectors in a global-embedding space, as in 4M-21 (arXiv 2406.09406, Sec. 5).

A global-embedding modality (``tok_caption_global``: the MiniLM vector of a caption;
``tok_dinov2_global``: the DINOv2 CLS vector of an image) is a few tokens of an MLP VQ-VAE over one
vector. An :class:`EmbedSpec` says how samples (``{modality: value}`` as the corpus stores them) become
vectors of that space; the embedders (``EMBEDDERS``) are:

- ``corpus`` reads the vector the corpus already stores (``caption_global`` of each scene);
- ``labeller`` runs the labeller that makes that series on a raw query (MiniLM on a caption string).
  Labellers belong to ``pseudolabel``, a wing built on this core, so the caller lends them with
  :func:`use_labellers` (``fourm retrieve`` lends pseudolabel's registry);
- ``model`` predicts the modality's tokens with FourM from any subset of inputs and decodes them
  with the modality's tokenizer. This is 4M-21's way: one model maps every input modality to the
  space. ``decode="expected"`` (default) decodes the expectation of each token's code under the
  predicted distribution, from one forward pass; ``decode="argmax"`` decodes the tokens MaskGIT
  picks (``steps``, ``temperature``), 4M-21's notebook route. On held-out scenes the expectation
  found the image of a perturbed copy 2-5x more often at rank 1 (benchmarks/retrieval.py: a nano
  model at 500, 1000, 1500 and 3000 steps, R@1 0.15 / 0.12 / 0.09 / 0.07 against 0.05 / 0.04 / 0.04 /
  0.01) and costs half the time: the expectation moves smoothly with the input, while argmax vectors jump when a small
  change flips one token (and, early in training, distinct images share tokens and tie).

Shapes: ``B`` samples, ``C`` vector width, ``n`` tokens of the global modality, ``V`` its vocabulary.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from tqdm.auto import tqdm

from fourm.config import load_config
from fourm.data.corpus import read_manifest
from fourm.generation.pipeline import Pipeline
from fourm.generation.sampler import guided_logits
from fourm.generation.schedule import Guidance, Target
from fourm.modalities import CORPUS, MODALITIES, Kind, get_modality
from fourm.registry import Registry


@dataclass
class EmbedSpec:
    """How vectors of one global modality are made from samples.

    Args:
        modality: the model modality whose space is used (``tok_caption_global``, ``tok_dinov2_global``).
        embedder: a name in ``EMBEDDERS``: ``corpus``, ``labeller`` or ``model``.
        inputs: model modalities the ``model`` embedder conditions on (``["rgb"]``, ``["caption"]``).
        model, tokenizers: FourM folder and tokenizers folder (``model`` embedder).
        steps: MaskGIT steps of the prediction; 1 reads every token off one forward pass.
        temperature: 0 takes the argmax token (deterministic vectors); above 0 samples.
        batch_size: samples per forward pass.
        device: torch device of the model.
        decode: ``argmax`` (tokens from MaskGIT, decoded) or ``expected`` (the decoded expectation of
            each token's code under the predicted distribution; one forward pass).
        labeller: ``{"name", "settings"}`` of the ``labeller`` embedder (default: the series' default
            labeller with default settings); an index records the one its corpus used.
    """

    modality: str = "tok_caption_global"
    embedder: str = "corpus"
    inputs: list[str] = field(default_factory=list)
    model: str | None = None
    tokenizers: str | None = None
    steps: int = 1
    temperature: float = 0.0
    batch_size: int = 32
    device: str = "cpu"
    decode: str = "expected"
    labeller: dict[str, Any] | None = None

    def __post_init__(self):
        m = get_modality(self.modality)  # unknown name: the registry's one-line error
        if m.kind is not Kind.GLOBAL:
            globals_ = ", ".join(k for k, v in MODALITIES.items() if v.kind is Kind.GLOBAL)
            raise ValueError(f"{self.modality} is not a global-embedding modality; retrieval uses one of: {globals_}")
        EMBEDDERS.check(self.embedder)
        DECODERS.check(self.decode)
        self.inputs = [_input_key(n) for n in self.inputs]
        if self.modality in self.inputs:
            raise ValueError(f"{self.modality} is the retrieval target: it cannot also be an input")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")

    @property
    def source(self) -> str:
        """The corpus series holding this space's vectors (``caption_global``)."""
        return MODALITIES[self.modality].source


def _input_key(name: str) -> str:
    """A model modality (``tok_rgb``, ``rgb`` pixels) or a corpus entry (``depth``, which the
    generation pipeline reads as ``tok_depth``)."""
    return name if name in CORPUS else get_modality(name).key


def normalize(x: Tensor | np.ndarray) -> Tensor:
    """Rows -> float32 unit vectors (cosine similarity is then a dot product)."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float32) if isinstance(x, np.ndarray) else x).float()
    if not torch.isfinite(x).all():
        raise ValueError("embedding vectors hold NaN or infinite values")
    return F.normalize(x, dim=-1)


# ----------------------------------------------------------------------------- embedders
Embedder = Callable[[list[dict], EmbedSpec], Tensor]  # samples -> (B, C) unit vectors
EMBEDDERS: Registry[Embedder] = Registry("embedder")
embedder = EMBEDDERS.register


def _missing(samples: list[dict], names: Iterable[str], what: str) -> None:
    for name in names:
        if any(name not in s for s in samples):
            have = sorted({k for s in samples for k in s if not k.startswith("__")})
            raise ValueError(f"{what} needs {name!r}; the query has: {', '.join(have) or 'nothing'}")


@embedder("corpus")
def embed_corpus(samples: list[dict], spec: EmbedSpec) -> Tensor:
    """The vectors the samples already carry in the modality's corpus series (``caption_global``)."""
    _missing(samples, [spec.source], f"embedder 'corpus' ({spec.modality})")
    return normalize(np.stack([np.asarray(s[spec.source], np.float32).reshape(-1) for s in samples]))


@embedder("labeller")
def embed_labeller(samples: list[dict], spec: EmbedSpec) -> Tensor:
    """Runs the labeller that makes the modality's series (MiniLM for ``caption_global``, DINOv2 for
    ``dinov2_global``) on raw samples, with the settings the gallery's corpus recorded (``spec.labeller``):
    the query's own vector, made as the corpus made the gallery's."""
    labeller = _labeller(spec.source, json.dumps(spec.labeller or {}, sort_keys=True))
    _missing(samples, labeller.needs, f"embedder 'labeller' ({labeller.name} for {spec.source})")
    return normalize(np.stack([np.asarray(out[spec.source], np.float32) for out in labeller.label(samples)]))


LabellerLookup = Callable[[str], type]  # a labeller's name -> its class (pseudolabel's registry)
_labellers: LabellerLookup | None = None


def use_labellers(lookup: LabellerLookup | None) -> None:
    """Lend the ``labeller`` embedder a table of labellers: ``lookup(name)`` gives the class of labeller
    ``name`` (``functools.partial(pseudolabel.registry.lookup, "labeller")``). The labellers live in
    ``pseudolabel``, which builds on this core, so the core takes them from its caller instead of
    importing them."""
    global _labellers
    _labellers = lookup
    _labeller.cache_clear()


@functools.cache
def _labeller(source: str, described: str):
    described = json.loads(described)
    name = described.get("name") or CORPUS[source].labeller
    if name is None:
        raise ValueError(f"no labeller makes {source}: embed queries with the model instead")
    if _labellers is None:
        raise ValueError(f"embedder 'labeller' ({name} for {source}) has no labellers to run: lend it "
                         "pseudolabel's with fourm.retrieval.embed.use_labellers, or embed queries with the model")
    labeller = _labellers(name)(**described.get("settings", {}))
    ok, why = labeller.available()
    if not ok:
        raise ValueError(f"labeller {name} for {source} cannot start: {why}")
    try:
        labeller.setup({})
    except Exception as e:  # weights that do not load (moved, not downloaded): one line, not a traceback
        raise ValueError(f"labeller {name} for {source} cannot start: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None
    return labeller


def corpus_labeller(corpus: str | os.PathLike, series: str) -> dict | None:
    """``{"name", "settings"}`` of the labeller that made ``series`` in ``corpus`` (None: the source's own)."""
    manifest = read_manifest(corpus)
    name = manifest["modalities"].get(series, {}).get("labeller")
    entry = next((e for e in manifest.get("labellers", []) if e["name"] == name), None)
    return None if entry is None else {"name": name, "settings": entry.get("settings", {})}


@embedder("model")
def embed_model(samples: list[dict], spec: EmbedSpec) -> Tensor:
    """FourM predicts the modality's tokens from ``spec.inputs`` of each sample; its tokenizer decodes them."""
    if spec.model is None or spec.tokenizers is None:
        raise ValueError("embedder 'model' needs a model folder and a tokenizers folder")
    inputs = spec.inputs or sorted({k for s in samples for k in s if not k.startswith("__") and k != spec.modality})
    if not inputs:
        raise ValueError(f"nothing to predict {spec.modality} from: give at least one input modality")
    _missing(samples, inputs, f"embedder 'model' (inputs {', '.join(inputs)})")
    pipeline = _pipeline(spec.model, spec.tokenizers, spec.device)
    return normalize(predict_vectors(pipeline, [{m: s[m] for m in inputs} for s in samples], spec))


@functools.cache
def _pipeline(model: str, tokenizers: str, device: str):
    return Pipeline.from_pretrained(model, tokenizers, device=device)


def predict_vectors(pipeline, conditions: list[dict], spec: EmbedSpec) -> Tensor:
    """Raw conditions (one dict per sample) -> predicted, decoded vectors (B, C) of ``spec.modality``."""
    return DECODERS[spec.decode](pipeline, conditions, spec)


def _decode_tokens(pipeline, conditions: list[dict], spec: EmbedSpec) -> Tensor:
    """MaskGIT picks tokens (argmax at temperature 0), the tokenizer decodes them."""
    target = Target(spec.modality, scheme="maskgit", steps=spec.steps, temperature=spec.temperature)
    out = pipeline.generate(conditions, [target], seed=0)
    return torch.as_tensor(np.stack([np.asarray(v, np.float32) for v in out[spec.modality].values]))


@torch.no_grad()
def _decode_expected(pipeline, conditions: list[dict], spec: EmbedSpec) -> Tensor:
    """One forward pass gives every token's distribution; the tokenizer decodes the expected code
    ``sum_v p(v) code(v)`` of each position. Unlike argmax tokens, near-certain and unsure predictions
    differ, and two images rarely get the very same vector (no ties)."""
    name, tokenizer = spec.modality, pipeline.tokenizers.get(spec.modality)
    if not hasattr(tokenizer, "embed_ids") or not hasattr(tokenizer, "decode_latents"):
        raise ValueError(f"decode=expected needs a code-space tokenizer for {name} (an MLP VQ-VAE)")
    state = pipeline.state(conditions)
    n = pipeline.specs[name].tokens
    empty = torch.zeros(state.batch_size, n, dtype=torch.long)
    state.set_grid(name, empty, torch.zeros_like(empty, dtype=torch.bool))
    pos = torch.arange(n).expand(state.batch_size, n)
    every = torch.ones_like(pos, dtype=torch.bool)
    _, logits = guided_logits(pipeline.model, state, name, Guidance.plain(), pos, every)
    # one codebook serves every token position: each id's code, read off position 0
    codes = tokenizer.embed_ids(torch.arange(tokenizer.vocab_size)[:, None].expand(-1, n))[:, 0]  # (V, d)
    probs = logits.float().softmax(-1).to(codes.device)  # (B * n, V), rows sample-major
    return tokenizer.decode_latents(rearrange(probs @ codes, "(b n) d -> b n d", n=n)).float().cpu()


DECODERS = Registry("decode", {"argmax": _decode_tokens, "expected": _decode_expected})


SETTINGS = ("steps", "temperature", "batch_size", "device", "decode")  # what a caller may set beyond the paths


def parse_settings(overrides: list[str]) -> dict:
    """``["steps=2", "batch_size=64"]`` -> typed :class:`EmbedSpec` settings (unknown keys: an error)."""
    names = [o.partition("=")[0] for o in overrides]
    bad = [n for n in names if n not in SETTINGS]
    if bad:
        raise ValueError(f"unknown setting {bad[0]!r}; known: {', '.join(SETTINGS)}")
    spec = load_config(EmbedSpec, overrides=overrides)
    return {n: getattr(spec, n) for n in names}


def embed(samples: list[dict], spec: EmbedSpec, progress: bool = False) -> Tensor:
    """Samples -> (B, C) unit vectors with ``spec``'s embedder, ``spec.batch_size`` at a time."""
    fn = EMBEDDERS[spec.embedder]
    if not samples:
        raise ValueError("nothing to embed: no samples")
    batches = range(0, len(samples), spec.batch_size)
    parts = [fn(samples[i: i + spec.batch_size], spec)
             for i in tqdm(batches, desc=f"embed {spec.modality} ({spec.embedder})", disable=not progress)]
    return torch.cat(parts)
