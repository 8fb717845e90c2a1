"""The demo's pictures: tokenizer round trips, chained generations and retrieval hits, as PNG grids.

Every tile is drawn by :mod:`fourm.render` (the corpus' renderers); generation goes through the
:class:`fourm.evaluate.Generator` the evaluation uses, so the pictures show what the table measures.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fourm.modalities import MODALITIES

TILE = 128  # px per tile: the 64 px scenes, doubled so a person can see them
CHAINS: dict[str, tuple[str, list[str]]] = {  # picture name -> (given modality, targets in order)
    "chain-caption": ("caption", ["tok_rgb", "tok_depth", "tok_normal", "tok_semseg", "tok_canny_edge"]),
    "rgb-to-all": ("tok_rgb", ["tok_depth", "tok_normal", "tok_semseg", "tok_canny_edge", "det", "caption"]),
    "depth-to-rgb": ("tok_depth", ["tok_rgb", "tok_semseg"]),
}


def _heldout(corpus: str | os.PathLike, samples: int) -> tuple[list[dict], dict]:
    from fourm.data.corpus import CorpusReader

    reader = CorpusReader(corpus)
    return [reader.sample(i) for i in range(min(samples, len(reader)))], reader.manifest.get("classes", {})


def _tile(modality: str, value, rgb=None, classes=None):
    from fourm.render import render

    key = MODALITIES[modality].source if modality in MODALITIES else modality
    return render(key, value, size=TILE, rgb=rgb, classes=classes or {})


def save_reconstructions(tokenizers: str | os.PathLike, corpus: str | os.PathLike, out: str | os.PathLike,
                         samples: int = 4) -> Path:
    """Rows of held-out scenes; per image tokenizer two columns: the truth and its round trip."""
    import torch

    from fourm.modalities import Kind
    from fourm.render import image_grid
    from fourm.tokenization.base import load_tokenizers

    data, classes = _heldout(corpus, samples)
    names = [n for n in sorted(load_tokenizers(tokenizers)) if MODALITIES[n].kind == Kind.IMAGE]
    tokenizers = load_tokenizers(tokenizers, names)
    columns, cells = [], [[] for _ in data]
    for name, tok in tokenizers.items():
        source = MODALITIES[name].source
        truth = [s[source] for s in data]
        with torch.no_grad():
            back = tok.decode(tok.encode(truth))
        columns += [source, f"{source} round trip"]
        for row, s, t, b in zip(cells, data, truth, back, strict=True):
            row += [_tile(name, t, s["rgb"], classes), _tile(name, b, s["rgb"], classes)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(cells, column_titles=columns, row_titles=[s["__key__"][-4:] for s in data]).save(out)
    return out


def save_chains(generator, corpus: str | os.PathLike, out: str | os.PathLike, samples: int = 4,
                seed: int = 0) -> dict[str, str]:
    """One grid per entry of ``CHAINS``: for each held-out sample a row of generations, the truth below it."""
    from fourm.render import image_grid

    data, classes = _heldout(corpus, samples)
    written = {}
    for name, (given, targets) in CHAINS.items():
        missing = [m for m in [given, *targets] if m not in generator.modalities]
        if missing:
            written[name] = f"skipped: the model has no {', '.join(missing)}"
            continue
        source = MODALITIES[given].source
        made = generator.generate({given: [s[source] for s in data]}, targets, seed=seed)
        rows, titles = [], []
        for i, s in enumerate(data):
            image = made["tok_rgb"][i] if "tok_rgb" in made else s["rgb"]
            rows.append([_tile(given, s[source], s["rgb"], classes),
                         *[_tile(t, made[t][i], image, classes) for t in targets]])
            rows.append([None, *[_tile(t, s[MODALITIES[t].source], s["rgb"], classes) for t in targets]])
            titles += [f"{s['__key__'][-4:]} generated", "truth"]
        path = Path(out) / f"{name}.png"
        columns = [f"given: {source}", *[MODALITIES[t].source for t in targets]]
        image_grid(rows, row_titles=titles, column_titles=columns).save(path)
        written[name] = str(path)
    return written


def save_retrieval(generator, corpus: str | os.PathLike, out: str | os.PathLike, queries: int = 4,
                   gallery: int = 64, k: int = 5, seed: int = 0) -> dict:
    """For the first ``queries`` held-out captions, the ``k`` gallery images ranked best; the true one framed."""
    from PIL import ImageOps

    from fourm.render import image_grid

    data, _ = _heldout(corpus, gallery)
    vectors = np.stack(generator.generate({"tok_rgb": [s["rgb"] for s in data]}, ["tok_caption_global"],
                                          seed=seed)["tok_caption_global"]).astype(np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)
    rows, hits = [], []
    for i, s in enumerate(data[:queries]):
        q = np.asarray(s["caption_global"], np.float64)
        order = np.argsort(-(vectors @ (q / max(np.linalg.norm(q), 1e-9))))[:k]
        tiles = [ImageOps.expand(_tile("caption", s["caption"]), 4, fill=(255, 255, 255))]
        for j in order:
            tile = _tile("tok_rgb", data[j]["rgb"])
            tiles.append(ImageOps.expand(tile, 4, fill=(0, 170, 0) if j == i else (255, 255, 255)))
        rows.append(tiles)
        hits.append(int(i in order))
    path = Path(out) / "retrieval.png"
    image_grid(rows, column_titles=["query", *[f"rank {r + 1}" for r in range(k)]]).save(path)
    return {"picture": str(path), "queries": len(rows), "found_in_top_k": sum(hits), "gallery": len(data)}
