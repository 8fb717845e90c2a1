"""Retrieval with global embeddings, as in 4M-21 (arXiv 2406.09406, Sec. 5 and Fig. 6).

A global-embedding modality (``tok_caption_global``: the MiniLM vector of a caption;
``tok_dinov2_global``: the DINOv2 CLS vector of an image) is a few tokens of an MLP VQ-VAE over one
vector. Retrieval puts queries and gallery items in that vector space, unit length, and ranks the
gallery by cosine similarity.

* **Embedders** (:mod:`fourm.retrieval.embed`) turn samples (``{modality: value}`` as the corpus
  stores them) into vectors of a modality's space: the corpus' own vectors, the labeller that made
  them, or FourM's prediction from any inputs.

* An :class:`EmbeddingIndex` is a gallery: keys, unit vectors and how they were made (modality,
  embedder, inputs, corpus, model and tokenizer with fingerprints of their weights). It is saved as a
  folder (``vectors.safetensors`` + ``index.json``), written atomically. A query is embedded the same
  way the index says, and an index made by another model or tokenizer is refused.

* Search runs on a backend of :mod:`fourm.retrieval.search`: ``torch`` exact search by default, ``faiss``
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
import hashlib
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from fourm.data.corpus import CorpusReader, finished_shards, read_manifest
from fourm.generation.output import corpus_key, read_input
from fourm.io import atomic_dir, atomic_path, load_tensors, read_json, write_json
from fourm.modalities import get_modality
from fourm.pretrained import CONFIG_NAME, WEIGHTS_NAME
from fourm.retrieval.embed import SETTINGS, EmbedSpec, corpus_labeller, embed, normalize
from fourm.retrieval.search import SearchBackend, backend_class, make_backend
from fourm.viz.render import image_grid, render

FORMAT_VERSION = 1
VECTORS_NAME, INFO_NAME = "vectors.safetensors", "index.json"


class RetrievalError(ValueError):
    """An index that cannot serve a request: empty, another model's, another modality's."""


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
    if from_ not in ("corpus", "model"):
        raise ValueError(f"an index is built from 'corpus' or 'model', not {from_!r}")
    if from_ == "model" and (model is None or tokenizers is None):
        raise ValueError("an index from the model's predictions needs --model and --tokenizers")
    inputs = list(inputs or (["rgb"] if from_ == "model" else []))
    spec = EmbedSpec(modality, from_, inputs if from_ == "model" else [], _absolute(model), _absolute(tokenizers),
                     **settings, labeller=corpus_labeller(corpus, get_modality(modality).source))
    prints = _fingerprints(spec)
    fields = {spec.source: spec.source} if from_ == "corpus" else {m: corpus_key(m) for m in inputs}
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
    available = read_manifest(index.info["corpus"])["modalities"]
    shown = [m for m in ("rgb", "caption") if m in available]
    samples = read_samples(index.info["corpus"], [h.key for h in hits], shown) if shown else {}
    tiles = [render(corpus_key(k), v, size=size, rgb=query.get("rgb"))
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
        out = Path(out)
        write_json(out / "hits.json", [h._asdict() for h in hits])
        with atomic_path(out / "hits.png") as tmp:
            hits_grid(loaded, sample, hits).save(tmp, format="PNG")
    return hits
