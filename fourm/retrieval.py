"""Retrieval with global embeddings, as in 4M-21 (arXiv 2406.09406, Sec. 5 and Fig. 6).

A global-embedding modality (``tok_caption_global``: the MiniLM vector of a caption;
``tok_dinov2_global``: the DINOv2 CLS vector of an image) is a few tokens of an MLP VQ-VAE over one
vector. Retrieval puts queries and gallery items in that vector space, unit length, and ranks the
gallery by cosine similarity.

* **Embedders** (``EMBEDDERS``) turn samples (``{modality: value}`` as the corpus stores them) into
  vectors of a modality's space:

  - ``corpus`` reads the vector the corpus already stores (``caption_global`` of each scene);
  - ``labeller`` runs the labeller that makes that series on a raw query (MiniLM on a caption string);
  - ``model`` predicts the modality's tokens with FourM from any subset of inputs and decodes them
    with the modality's tokenizer. This is 4M-21's way: one model maps every input modality to the
    space. ``decode="expected"`` (default) decodes the expectation of each token's code under the
    predicted distribution, from one forward pass; ``decode="argmax"`` decodes the tokens MaskGIT
    picks (``steps``, ``temperature``), 4M-21's notebook route. On held-out scenes the expectation
    found the image of a perturbed copy 2-5x more often at rank 1 (benchmarks/retrieval.py: a nano
    model at 500, 1000, 1500 and 3000 steps, R@1 0.15 / 0.12 / 0.09 / 0.07 against 0.05 / 0.04 / 0.04 /
    0.01) and costs half the time: the expectation moves smoothly with the input, while argmax vectors jump when a small
    change flips one token (and, early in training, distinct images share tokens and tie).

* An :class:`EmbeddingIndex` is a gallery: keys, unit vectors and how they were made (modality,
  embedder, inputs, corpus, model and tokenizer with fingerprints of their weights). It is saved as a
  folder (``vectors.safetensors`` + ``index.json``), written atomically. A query is embedded the same
  way the index says, and an index made by another model or tokenizer is refused.

* Search runs on a backend of :mod:`fourm.search`: ``torch`` exact search by default, ``faiss``
  (exact) and ``faiss-hnsw`` (approximate, for galleries of millions) when faiss is installed.

Caption -> image, 4M-21 style: each gallery image's vector is the model's prediction of
``tok_caption_global`` from its rgb (an index ``from_="model"``, ``inputs=["rgb"]``). A caption
query can be embedded two ways, both offered: predicted by the model from the caption
(``query_embedder="model"``, the default of a model-built index) or the caption's own MiniLM vector
(``"labeller"``). We default to the model: it needs no text encoder at query time, works the same for
every query modality and every global target (DINOv2 has no text encoder at all), and puts query and
gallery through the same tokenizer bottleneck, so both sides carry the same quantisation.
``benchmarks/retrieval.py`` measures both: on a nano model (3000 steps on 960 scenes, 256 held-out)
the MiniLM query did better (R@5 / R@10 0.059 / 0.098 against 0.035 / 0.062; chance 0.020 / 0.039), as
the model's own caption -> global prediction adds its error to the query; with a caption_global
gallery and MiniLM at hand, ``embedder="labeller"`` is the better choice for caption queries.

Example::

    from fourm.retrieval import build_index, load_index, search_samples
    index = build_index("corpus/", "tok_caption_global", from_="model", inputs=["rgb"],
                        model="run/model", tokenizers="tokenizers/")
    index.save("gallery.index")
    hits = search_samples(load_index("gallery.index"), [{"caption": "a large red cube"}], k=5)
    hits[0]  # [Hit(key="000123", score=0.83, rank=1), ...]

Shapes: ``N`` gallery size, ``Q`` queries, ``C`` vector width, ``k`` hits per query.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fourm.modalities import MODALITIES, Kind, get_modality
from fourm.pretrained import CONFIG_NAME, WEIGHTS_NAME
from fourm.search import SearchBackend, backend_class, make_backend

FORMAT_VERSION = 1
VECTORS_NAME, INFO_NAME = "vectors.safetensors", "index.json"


class RetrievalError(ValueError):
    """An index that cannot serve a request: empty, another model's, another modality's."""


# ----------------------------------------------------------------------------- embedding specs
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
        _lookup(EMBEDDERS, self.embedder, "embedder")
        _lookup(DECODERS, self.decode, "decode")
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
    from fourm.modalities import CORPUS

    return name if name in CORPUS else get_modality(name).key


def _corpus_key(name: str) -> str:
    return MODALITIES[name].source if name in MODALITIES else name


def _lookup(table: dict, name: str, what: str):
    if name not in table:
        raise LookupError(f"unknown {what} {name!r}; known: {', '.join(table)}")
    return table[name]


def normalize(x: Tensor | np.ndarray) -> Tensor:
    """Rows -> float32 unit vectors (cosine similarity is then a dot product)."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float32) if isinstance(x, np.ndarray) else x).float()
    if not torch.isfinite(x).all():
        raise ValueError("embedding vectors hold NaN or infinite values")
    return F.normalize(x, dim=-1)


# ----------------------------------------------------------------------------- embedders
Embedder = Callable[[list[dict], EmbedSpec], Tensor]  # samples -> (B, C) unit vectors
EMBEDDERS: dict[str, Embedder] = {}


def embedder(name: str):
    def register(fn: Embedder) -> Embedder:
        EMBEDDERS[name] = fn
        return fn

    return register


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


@functools.cache
def _labeller(source: str, described: str):
    from fourm.modalities import CORPUS
    from pseudolabel.registry import lookup

    described = json.loads(described)
    name = described.get("name") or CORPUS[source].labeller
    if name is None:
        raise ValueError(f"no labeller makes {source}: embed queries with the model instead")
    labeller = lookup("labeller", name)(**described.get("settings", {}))
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
    from fourm.data.corpus import read_manifest

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
    from fourm.generation.pipeline import Pipeline

    return Pipeline.from_pretrained(model, tokenizers, device=device)


def predict_vectors(pipeline, conditions: list[dict], spec: EmbedSpec) -> Tensor:
    """Raw conditions (one dict per sample) -> predicted, decoded vectors (B, C) of ``spec.modality``."""
    return _lookup(DECODERS, spec.decode, "decode")(pipeline, conditions, spec)


def _decode_tokens(pipeline, conditions: list[dict], spec: EmbedSpec) -> Tensor:
    """MaskGIT picks tokens (argmax at temperature 0), the tokenizer decodes them."""
    from fourm.generation.schedule import Target

    target = Target(spec.modality, scheme="maskgit", steps=spec.steps, temperature=spec.temperature)
    out = pipeline.generate(conditions, [target], seed=0)
    return torch.as_tensor(np.stack([np.asarray(v, np.float32) for v in out[spec.modality].values]))


@torch.no_grad()
def _decode_expected(pipeline, conditions: list[dict], spec: EmbedSpec) -> Tensor:
    """One forward pass gives every token's distribution; the tokenizer decodes the expected code
    ``sum_v p(v) code(v)`` of each position. Unlike argmax tokens, near-certain and unsure predictions
    differ, and two images rarely get the very same vector (no ties)."""
    from einops import rearrange

    from fourm.generation.sampler import guided_logits
    from fourm.generation.schedule import Guidance

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


DECODERS = {"argmax": _decode_tokens, "expected": _decode_expected}


SETTINGS = ("steps", "temperature", "batch_size", "device", "decode")  # what a caller may set beyond the paths


def parse_settings(overrides: list[str]) -> dict:
    """``["steps=2", "batch_size=64"]`` -> typed :class:`EmbedSpec` settings (unknown keys: an error)."""
    from fourm.config import load_config

    names = [o.partition("=")[0] for o in overrides]
    bad = [n for n in names if n not in SETTINGS]
    if bad:
        raise ValueError(f"unknown setting {bad[0]!r}; known: {', '.join(SETTINGS)}")
    spec = load_config(EmbedSpec, overrides=overrides)
    return {n: getattr(spec, n) for n in names}


def embed(samples: list[dict], spec: EmbedSpec, progress: bool = False) -> Tensor:
    """Samples -> (B, C) unit vectors with ``spec``'s embedder, ``spec.batch_size`` at a time."""
    fn = _lookup(EMBEDDERS, spec.embedder, "embedder")
    if not samples:
        raise ValueError("nothing to embed: no samples")
    from tqdm.auto import tqdm

    batches = range(0, len(samples), spec.batch_size)
    parts = [fn(samples[i: i + spec.batch_size], spec)
             for i in tqdm(batches, desc=f"embed {spec.modality} ({spec.embedder})", disable=not progress)]
    return torch.cat(parts)


# ----------------------------------------------------------------------------- fingerprints
def fingerprint(folder: str | os.PathLike | None) -> str | None:
    """A short hash of a pretrained folder's config and weights: which model made an index."""
    if folder is None:
        return None
    folder = Path(folder)
    files = [folder / CONFIG_NAME, folder / WEIGHTS_NAME]
    if not all(f.is_file() for f in files):
        raise FileNotFoundError(f"{folder} is not a pretrained folder ({CONFIG_NAME}, {WEIGHTS_NAME})")
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _fingerprints(spec: EmbedSpec) -> dict[str, str | None]:
    tokenizer = None if spec.tokenizers is None else Path(spec.tokenizers) / spec.modality
    if tokenizer is not None and not tokenizer.is_dir():
        raise FileNotFoundError(f"{spec.tokenizers} has no tokenizer for {spec.modality}")
    return {"model": fingerprint(spec.model), "tokenizer": fingerprint(tokenizer)}


def _absolute(path: str | os.PathLike | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


# ----------------------------------------------------------------------------- the index
class Hit(NamedTuple):
    key: str
    score: float
    rank: int  # 1 = best


@dataclass
class EmbeddingIndex:
    """A gallery: ``keys`` (N,), unit ``vectors`` (N, C) float32, and ``info`` on how they were made.

    ``info`` holds ``spec`` (the :class:`EmbedSpec` of the gallery, paths absolute), ``corpus`` (the
    folder the keys come from), ``fingerprints`` of the model and tokenizer weights, and
    ``query_embedder`` (how queries are embedded unless the caller says otherwise).
    """

    keys: list[str]
    vectors: Tensor
    info: dict

    def __post_init__(self):
        if self.vectors.ndim != 2 or len(self.keys) != len(self.vectors):
            raise ValueError(f"{len(self.keys)} keys for vectors of shape {tuple(self.vectors.shape)}")
        self._backends: dict[str, SearchBackend] = {}

    @property
    def spec(self) -> EmbedSpec:
        return EmbedSpec(**self.info["spec"])

    @property
    def modality(self) -> str:
        return self.info["spec"]["modality"]

    def __len__(self) -> int:
        return len(self.keys)

    def save(self, path: str | os.PathLike) -> Path:
        """``path/vectors.safetensors`` + ``path/index.json``, swapped in whole (no half-written index)."""
        from safetensors.torch import save_file

        from fourm.io import atomic_dir

        with atomic_dir(path) as tmp:
            save_file({"vectors": self.vectors.contiguous()}, str(tmp / VECTORS_NAME))
            info = {"format_version": FORMAT_VERSION, **self.info, "count": len(self), "keys": self.keys}
            (tmp / INFO_NAME).write_text(json.dumps(info, indent=1) + "\n")
        return Path(path)

    def search(self, queries: Tensor, k: int = 5, backend: str = "torch") -> tuple[Tensor, Tensor]:
        """Unit queries (Q, C) -> cosine scores (Q, k) and gallery positions (Q, k), best first."""
        if len(self) == 0:
            raise RetrievalError("the index is empty: its corpus had no samples to embed")
        if queries.ndim != 2 or queries.shape[1] != self.vectors.shape[1]:
            raise ValueError(f"queries of shape {tuple(queries.shape)} do not fit the index's "
                             f"{self.vectors.shape[1]}-d vectors")
        if k < 1:
            raise ValueError(f"k must be >= 1, not {k}")
        if backend not in self._backends:
            self._backends[backend] = make_backend(backend, self.vectors)
        return self._backends[backend].search(normalize(queries), min(k, len(self)))

    def hits(self, queries: Tensor, k: int = 5, backend: str = "torch") -> list[list[Hit]]:
        scores, positions = self.search(queries, k, backend)
        return [[Hit(self.keys[p], s, r + 1) for r, (s, p) in enumerate(zip(srow, prow, strict=True)) if p >= 0]
                for srow, prow in zip(scores.tolist(), positions.tolist(), strict=True)]  # faiss pads with -1


def load_index(path: str | os.PathLike) -> EmbeddingIndex:
    from fourm.io import load_tensors, read_json

    path = Path(path)
    if not (path / INFO_NAME).is_file() or not (path / VECTORS_NAME).is_file():
        raise FileNotFoundError(f"{path} is not an index (no {INFO_NAME} and {VECTORS_NAME}); make one with "
                                "`fourm index`")
    info = read_json(path / INFO_NAME, {"format_version": int, "keys": list, "count": int})
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: index format_version {info.get('format_version')} is not {FORMAT_VERSION}")
    keys = info.pop("keys")
    for name in ("format_version", "count"):
        info.pop(name)
    tensors = load_tensors(path / VECTORS_NAME)
    if "vectors" not in tensors or tensors["vectors"].ndim != 2 or len(tensors["vectors"]) != len(keys):
        raise ValueError(f"{path / VECTORS_NAME} is damaged: no (count, dim) 'vectors' for the {len(keys)} keys")
    return EmbeddingIndex(keys, tensors["vectors"], info)


def build_index(corpus: str | os.PathLike, modality: str = "tok_caption_global", from_: str = "corpus",
                inputs: list[str] | None = None, model: str | os.PathLike | None = None,
                tokenizers: str | os.PathLike | None = None, limit: int | None = None, progress: bool = True,
                **settings) -> EmbeddingIndex:
    """Embed every sample of ``corpus`` (or the first ``limit``) into ``modality``'s space.

    ``from_="corpus"`` takes the vectors the corpus stores; ``"model"`` predicts them with ``model``
    from ``inputs`` (default ``["rgb"]``). ``model``/``tokenizers`` given with ``from_="corpus"`` are
    recorded so that queries can be embedded by the model. ``settings`` go to :class:`EmbedSpec`
    (``steps``, ``temperature``, ``batch_size``, ``device``).
    """
    from fourm.data.corpus import CorpusReader

    if from_ not in ("corpus", "model"):
        raise ValueError(f"an index is built from 'corpus' or 'model', not {from_!r}")
    if from_ == "model" and (model is None or tokenizers is None):
        raise ValueError("an index from the model's predictions needs --model and --tokenizers")
    inputs = list(inputs or (["rgb"] if from_ == "model" else []))
    spec = EmbedSpec(modality, from_, inputs if from_ == "model" else [], _absolute(model), _absolute(tokenizers),
                     **settings, labeller=corpus_labeller(corpus, get_modality(modality).source))
    prints = _fingerprints(spec)
    from tqdm.auto import tqdm

    fields = {spec.source: spec.source} if from_ == "corpus" else {m: _corpus_key(m) for m in inputs}
    reader = CorpusReader(corpus, sorted(set(fields.values())))
    total = len(reader) if limit is None else min(limit, len(reader))
    if total == 0:
        raise RetrievalError(f"{corpus} holds no samples: the gallery would be empty")
    samples = itertools.islice(reader, total)
    keys, parts = [], []
    # a batch at a time: the gallery's images never sit in memory all at once, only its vectors
    with tqdm(total=total, desc=f"index {modality} ({from_})", unit="sample", disable=not progress) as bar:
        while batch := list(itertools.islice(samples, spec.batch_size)):
            parts.append(embed([{k: s[v] for k, v in fields.items()} for s in batch], spec))
            keys += [s["__key__"] for s in batch]
            bar.update(len(batch))
    if not keys:
        raise RetrievalError(f"{corpus} has no readable samples: the gallery would be empty")
    info = {"spec": dataclasses.asdict(spec), "corpus": _absolute(corpus), "fingerprints": prints,
            "query_embedder": "model" if spec.model is not None else "labeller"}
    return EmbeddingIndex(keys, torch.cat(parts), info)


# ----------------------------------------------------------------------------- queries
def query_spec(index: EmbeddingIndex, embedder: str | None = None, inputs: list[str] | None = None,
               model: str | os.PathLike | None = None, tokenizers: str | os.PathLike | None = None,
               **settings) -> EmbedSpec:
    """How to embed queries for ``index``: its recorded model and tokenizer unless others are given,
    and these must be the ones that made the index (same weights), or vectors would not compare."""
    saved = index.info["spec"]
    model = _absolute(model) or saved["model"]
    tokenizers = _absolute(tokenizers) or saved["tokenizers"]
    spec = EmbedSpec(saved["modality"], embedder or index.info["query_embedder"], list(inputs or []), model,
                     tokenizers, **{k: saved[k] for k in SETTINGS if k in saved and k not in settings}, **settings,
                     labeller=saved.get("labeller"))
    if spec.embedder == "model":
        if model is None or tokenizers is None:
            raise ValueError("this index records no model: pass --model and --tokenizers, or embed queries "
                             "with the labeller")
        now = _fingerprints(spec)
        for what, made in index.info["fingerprints"].items():
            if made is not None and made != now[what]:
                raise RetrievalError(f"the index was built with another {what} (weights {made}, these are "
                                     f"{now[what]}): rebuild it with `fourm index` or pass the original")
    return spec


def search_samples(index: EmbeddingIndex, queries: list[dict], k: int = 5, embedder: str | None = None,
                   backend: str = "torch", **spec_args) -> list[list[Hit]]:
    """Raw query samples (``{"caption": "..."}``, ``{"rgb": uint8 (H, W, 3)}``, several keys for a
    multi-modal query) -> the ``k`` best gallery hits of each."""
    backend_class(backend)  # a bad name fails before the model runs
    return index.hits(embed(queries, query_spec(index, embedder, **spec_args)), k, backend)


def read_samples(corpus: str | os.PathLike, keys: list[str], modalities: list[str]) -> dict[str, dict]:
    """The samples of ``keys`` (series ``modalities``), reading only the shards that hold them."""
    from fourm.data.corpus import CorpusReader, finished_shards

    reader = CorpusReader(corpus, modalities)
    wanted, out = set(keys), {}
    for index, record in sorted(finished_shards(corpus).items()):
        if wanted & set(record["keys"]):
            out.update({s["__key__"]: s for s in reader.shard(index) if s["__key__"] in wanted})
    return out



# ----------------------------------------------------------------------------- the `fourm retrieve` job
def parse_query(items: list[str]) -> dict:
    """``["caption=a red cube", "rgb=photo.png"]`` -> one query sample in corpus units (files read as
    ``fourm generate`` reads its ``--input``)."""
    from fourm.generation.output import read_input

    if not items:
        raise ValueError("no query: give --query modality=value")
    sample = {}
    for item in items:
        key, value = read_input(item, "--query")
        sample[key] = value
    return sample


def hits_grid(index: EmbeddingIndex, query: dict, hits: list[Hit], size: int = 160):
    """The query's tiles, then each hit's rgb (titled rank, key, score) and, where the corpus has
    captions, each hit's caption below it."""
    from fourm.data.corpus import read_manifest
    from fourm.render import image_grid, render

    available = read_manifest(index.info["corpus"])["modalities"]
    shown = [m for m in ("rgb", "caption") if m in available]
    samples = read_samples(index.info["corpus"], [h.key for h in hits], shown) if shown else {}
    tiles = [render(_corpus_key(k), v, size=size, rgb=query.get("rgb"))
             for k, v in query.items() if not k.startswith("__")]
    rows = [[*tiles], [None] * len(tiles)]
    titles = [[f"query: {k}" for k in query if not k.startswith("__")], [None] * len(tiles)]
    for hit in hits:
        sample = samples.get(hit.key, {})
        rows[0].append(render("rgb", sample["rgb"], size=size) if "rgb" in sample else None)
        rows[1].append(render("caption", sample["caption"], size=size) if "caption" in sample else None)
        titles[0].append(f"#{hit.rank} {hit.key} {hit.score:.3f}")
        titles[1].append(None)
    if "caption" not in shown:
        rows, titles = rows[:1], titles[:1]
    return image_grid(rows, titles, caption=f"{index.modality} ({index.info['spec']['embedder']} gallery of "
                                            f"{len(index)})")


def retrieve(index: str | os.PathLike, query: list[str] | dict, k: int = 5, out: str | os.PathLike | None = None,
             embedder: str | None = None, backend: str = "torch", **spec_args) -> list[Hit]:
    """`fourm retrieve`: the ``k`` best hits of one query; with ``out``, ``hits.json`` and ``hits.png`` there."""
    loaded = load_index(index)
    sample = parse_query(query) if isinstance(query, list) else query
    hits = search_samples(loaded, [sample], k, embedder, backend, **spec_args)[0]
    if out is not None:
        from fourm.io import atomic_path, write_json

        out = Path(out)
        write_json(out / "hits.json", [h._asdict() for h in hits])
        with atomic_path(out / "hits.png") as tmp:
            hits_grid(loaded, sample, hits).save(tmp, format="PNG")
    return hits
