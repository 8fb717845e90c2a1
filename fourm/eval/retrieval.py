"""Retrieval recall on held-out data: caption -> image and image -> image, beside chance and a bound.

Each held-out sample is one gallery image and one query; query ``i``'s only relevant item is image
``i``. Recall@k is the share of queries whose image ranks among the first ``k``.

* caption -> image: the gallery is what the model predicts as the global modality from each image
  (rgb alone); the caption query is embedded by the model from the caption (``model``, 4M-21's way)
  and, as a second row, is the caption's own MiniLM vector (``labeller``; read from the corpus'
  ``caption_global``, which the labeller made from the same caption).
* image -> image: the query is a perturbed copy of each image (a shift of a few pixels, brightness
  and noise: :func:`perturb`), embedded by the model like the gallery, so a hit means the predicted
  vector is stable under changes that keep the content.
* bound: the true caption vectors as queries against a gallery of their tokenizer round trips, i.e.
  a model that predicts every image's caption tokens exactly; no model can beat this tokenizer.

Ties are real here: argmax tokens of a few-token global often coincide, giving identical vectors.
:func:`recall_at_k` scores a tie by its expectation under a random order (tied with 3 others at the
top: recall@1 = 1/4), neither in the query's favour nor against it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

from fourm.data.corpus import CorpusReader
from fourm.retrieval.embed import EmbedSpec, embed, normalize
from fourm.tokenization.base import load_tokenizer

TIE = 1e-6  # cosine scores closer than this are one score (identical vectors through different kernels)


def recall_at_k(queries: Tensor, gallery: Tensor, targets: Tensor | None = None, ks: Iterable[int] = (1, 5, 10),
                chunk: int = 1024) -> dict[int, float]:
    """Unit queries (Q, C), gallery (N, C), the gallery position of each query's item (default: ``i``)
    -> ``{k: recall@k}``, ties counted by expectation (module notes). Memory: ``chunk`` x N scores."""
    ks = list(ks)
    targets = torch.arange(len(queries)) if targets is None else torch.as_tensor(targets)
    if len(targets) != len(queries) or (len(targets) and int(targets.max()) >= len(gallery)):
        raise ValueError(f"{len(targets)} targets for {len(queries)} queries in a gallery of {len(gallery)}")
    hits = {k: 0.0 for k in ks}
    for start in range(0, len(queries), chunk):
        scores = queries[start: start + chunk].float() @ gallery.float().T  # (q, N)
        own = scores.gather(1, targets[start: start + chunk, None])  # (q, 1)
        above = (scores > own + TIE).sum(1).float()
        tied = ((scores - own).abs() <= TIE).sum(1).float()  # the item itself included
        for k in ks:
            hits[k] += float(((k - above) / tied).clamp(0, 1).sum())
    return {k: hits[k] / len(queries) for k in ks}


def chance_recall(n: int, ks: Iterable[int] = (1, 5, 10)) -> dict[int, float]:
    """Recall@k of a random ranking of ``n`` items with one relevant item each."""
    return {k: min(k, n) / n for k in ks}


def perturb(image: np.ndarray, rng: np.random.Generator, shift: int = 2, brightness: float = 0.1,
            noise: float = 4.0) -> np.ndarray:
    """uint8 (H, W, 3) -> a copy shifted by up to ``shift`` px (edges repeated), brightness scaled by
    up to +-``brightness`` and Gaussian noise of ``noise`` grey levels: the same scene, other pixels."""
    dy, dx = rng.integers(-shift, shift + 1, 2)
    h, w = image.shape[:2]
    rows = np.clip(np.arange(h) - dy, 0, h - 1)
    cols = np.clip(np.arange(w) - dx, 0, w - 1)
    out = image[rows][:, cols].astype(np.float32) * (1 + rng.uniform(-brightness, brightness))
    out += rng.normal(0, noise, out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def heldout_samples(corpus: str | os.PathLike, limit: int | None = None) -> list[dict]:
    """The first ``limit`` samples of ``corpus`` with rgb, caption and caption_global."""
    samples = []
    for s in CorpusReader(corpus, ["rgb", "caption", "caption_global"]):
        samples.append(s)
        if limit is not None and len(samples) >= limit:
            break
    if not samples:
        raise ValueError(f"{corpus} has no samples to evaluate retrieval on")
    return samples


def evaluate_retrieval(model: str | os.PathLike, tokenizers: str | os.PathLike, corpus: str | os.PathLike,
                       limit: int | None = None, ks: Iterable[int] = (1, 5, 10), modality: str = "tok_caption_global",
                       seed: int = 0, progress: bool = False, **settings) -> list[dict]:
    """Recall rows on the held-out ``corpus`` (module notes): ``{"task", "query", "gallery", "n",
    "recall": {k: r}, "chance": {k: r}}``. ``settings``: :class:`EmbedSpec` steps, batch_size, device."""
    ks = list(ks)
    samples = heldout_samples(corpus, limit)
    n = len(samples)

    def model_vectors(key: str, values: list) -> Tensor:
        spec = EmbedSpec(modality, "model", [key], str(model), str(tokenizers), **settings)
        return embed([{key: v} for v in values], spec, progress=progress)

    truth = normalize(np.stack([np.asarray(s["caption_global"], np.float32) for s in samples]))
    gallery = model_vectors("rgb", [s["rgb"] for s in samples])
    by_model = model_vectors("caption", [s["caption"] for s in samples])
    rng = np.random.default_rng(seed)
    perturbed = model_vectors("rgb", [perturb(s["rgb"], rng) for s in samples])
    tokenizer = load_tokenizer(os.path.join(tokenizers, modality))
    with torch.no_grad():
        round_trip = normalize(np.stack(tokenizer.decode(tokenizer.encode(list(truth.numpy())))).astype(np.float32))
    rows = [("caption -> image", "caption, model", "rgb, model", by_model, gallery),
            ("caption -> image", "caption, MiniLM", "rgb, model", truth, gallery),
            ("image -> image", "perturbed rgb, model", "rgb, model", perturbed, gallery),
            ("caption -> image bound", "caption, MiniLM", "true caption, tokenizer", truth, round_trip)]
    chance = chance_recall(n, ks)
    return [{"task": task, "query": query, "gallery": gal, "n": n, "recall": recall_at_k(q, g, ks=ks),
             "chance": chance} for task, query, gal, q, g in rows]


def format_rows(rows: list[dict]) -> str:
    """The rows as a plain-text table, chance beside each recall."""
    ks = list(rows[0]["recall"]) if rows else []
    head = f"{'task':24} {'query':22} {'gallery':24} {'n':>5} " + " ".join(f"{'R@' + str(k):>13}" for k in ks)
    lines = [head, " " * 78 + " ".join(f"{'(chance)':>13}" for _ in ks)]
    for r in rows:
        cells = " ".join(f"{r['recall'][k]:6.3f} ({r['chance'][k]:.3f})" for k in ks)
        lines.append(f"{r['task']:24} {r['query']:22} {r['gallery']:24} {r['n']:5d} {cells}")
    return "\n".join(lines)
