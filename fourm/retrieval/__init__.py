"""Retrieval with global embeddings (4M-21 Sec. 5): :mod:`~fourm.retrieval.embed` turns samples into unit
vectors, :mod:`~fourm.retrieval.index` keeps a gallery of them and answers queries, on a backend of
:mod:`~fourm.retrieval.search`."""

from fourm.retrieval.embed import EmbedSpec, embed, use_labellers
from fourm.retrieval.index import EmbeddingIndex, Hit, RetrievalError, build_index, load_index, retrieve, search_samples

__all__ = ["EmbedSpec", "EmbeddingIndex", "Hit", "RetrievalError", "build_index", "embed", "load_index", "retrieve",
           "search_samples", "use_labellers"]
