"""Nearest-neighbour search over unit vectors by inner product (= cosine similarity), behind a registry.

* ``torch`` -- exact: the gallery in chunks, each scored with one matmul, a running top-k merged
  across chunks, so memory stays at Q x (chunk + k) scores whatever the gallery size.
* ``faiss`` -- exact inner product on faiss' kernels (``IndexFlatIP``): the same ranking as ``torch``.
* ``faiss-hnsw`` -- approximate (HNSW graph, arXiv 1603.09320): sub-linear search for galleries of
  millions, at a small loss of recall.

The faiss backends need ``pip install faiss-cpu``; asking for one without it is a one-line error.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch
from torch import Tensor

from fourm.registry import Registry


class SearchBackend:
    """Built once over the gallery (N, C) unit vectors; ``search(queries (Q, C), k)`` -> scores (Q, k),
    positions (Q, k) long, best first."""

    def __init__(self, vectors: Tensor):
        self.vectors = vectors

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return True, ""


SEARCH_BACKENDS: Registry[type[SearchBackend]] = Registry("search backend")
search_backend = SEARCH_BACKENDS.register


@search_backend("torch")
class TorchSearch(SearchBackend):
    """Exact: gallery chunks of ``chunk`` rows, each scored with one matmul; a running top-k keeps
    memory at Q x (chunk + k) scores whatever the gallery size."""

    chunk = 65536

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        q = queries.to(self.vectors.dtype)
        best_s = q.new_empty(len(q), 0)
        best_i = torch.empty(len(q), 0, dtype=torch.long)
        for start in range(0, len(self.vectors), self.chunk):
            scores = q @ self.vectors[start: start + self.chunk].T  # (Q, chunk)
            s, i = scores.topk(min(k, scores.shape[1]), dim=1)
            best_s, pick = torch.cat([best_s, s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
            best_i = torch.cat([best_i, i + start], 1).gather(1, pick)
        return best_s.float(), best_i


class _Faiss(SearchBackend):
    @classmethod
    def available(cls) -> tuple[bool, str]:
        if importlib.util.find_spec("faiss") is None:
            return False, "search backend needs faiss: pip install faiss-cpu (or faiss-gpu)"
        return True, ""

    def __init__(self, vectors: Tensor):
        super().__init__(vectors)
        self.index = self.build(np.ascontiguousarray(vectors.float().numpy()))

    def build(self, x: np.ndarray):
        raise NotImplementedError

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        scores, ids = self.index.search(np.ascontiguousarray(queries.float().numpy()), k)
        return torch.from_numpy(scores), torch.from_numpy(ids).long()


@search_backend("faiss")
class FaissFlat(_Faiss):
    """Exact inner product (faiss ``IndexFlatIP``): the same ranking as ``torch``. On this AVX2 CPU it is
    slower than torch (``benchmarks/retrieval.py --speed``); it is here for faiss-gpu and faiss tooling."""

    def build(self, x):
        import faiss

        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        return index


@search_backend("faiss-hnsw")
class FaissHNSW(_Faiss):
    """Approximate (HNSW graph, arXiv 1603.09320): sub-linear search for galleries of millions, at a
    small loss of recall; ``ef_search`` trades speed for recall."""

    neighbours, ef_construction, ef_search = 32, 80, 128

    def build(self, x):
        import faiss

        index = faiss.IndexHNSWFlat(x.shape[1], self.neighbours, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_search
        index.add(x)
        return index


def backend_class(name: str) -> type[SearchBackend]:
    """The backend ``name``, or a one-line error: unknown, or its package is missing."""
    cls = SEARCH_BACKENDS[name]
    ok, why = cls.available()
    if not ok:
        raise ValueError(f"{name}: {why}")
    return cls


def make_backend(name: str, vectors: Tensor) -> SearchBackend:
    return backend_class(name)(vectors)
