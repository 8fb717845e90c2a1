"""The demo's pictures: tokenizer round trips, chained generations and retrieval hits, as PNG grids.

Every tile is drawn by :mod:`fourm.viz.render` (the corpus' renderers); generation goes through the
:class:`fourm.eval.evaluate.Generator` the evaluation uses, so the pictures show what the table measures.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import ImageOps

from fourm.data.corpus import CorpusReader
from fourm.modalities import MODALITIES, Kind, readers
from fourm.retrieval.index import build_index, search_samples
from fourm.tokenization.base import load_tokenizers
from fourm.viz.render import image_grid, render

TILE = 128  # px per tile: the 64 px scenes, doubled so a person can see them
CHAINS: dict[str, tuple[str, list[str]]] = {  # picture name -> (given modality, targets in order)
    "chain-caption": ("caption", ["tok_rgb", "tok_depth", "tok_normal", "tok_semseg", "tok_canny_edge"]),
    "rgb-to-all": ("tok_rgb", ["tok_depth", "tok_normal", "tok_semseg", "tok_canny_edge", "det", "caption"]),
    "depth-to-rgb": ("tok_depth", ["tok_rgb", "tok_semseg"]),
}


def _heldout(corpus: str | os.PathLike, samples: int | None) -> tuple[list[dict], dict]:
    reader = CorpusReader(corpus)
    return reader.head(samples), reader.manifest.get("classes", {})


def _tile(modality: str, value, rgb=None, classes=None):
    key = MODALITIES[modality].source if modality in MODALITIES else modality
    return render(key, value, size=TILE, rgb=rgb, classes=classes or {})


def save_reconstructions(tokenizers: str | os.PathLike, corpus: str | os.PathLike, out: str | os.PathLike,
                         samples: int = 4) -> Path:
    """Rows of held-out scenes; per image tokenizer two columns: the truth and its round trip."""
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
                seed: int = 0, chains: dict[str, tuple[str, list[str]]] | None = None) -> dict[str, str]:
    """One grid per chain (default ``CHAINS``): for each held-out sample a row of generations, the truth below it."""
    data, classes = _heldout(corpus, samples)
    Path(out).mkdir(parents=True, exist_ok=True)
    written = {}
    for name, (given, targets) in (CHAINS if chains is None else chains).items():
        missing = [m for m in [given, *targets] if m not in generator.modalities]
        if missing:
            written[name] = f"skipped: the model has no {', '.join(missing)}"
            continue
        source = MODALITIES[given].source
        # as the evaluation gives it: every modality that reads the given series (rgb pixels and tokens)
        given_as = [m for m in readers(source, generator.modalities) if m not in targets] or [given]
        made = generator.generate({m: [s[source] for s in data] for m in given_as}, targets, seed=seed)
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


def save_retrieval(model: str | os.PathLike, tokenizers: str | os.PathLike, corpus: str | os.PathLike,
                   out: str | os.PathLike, queries: int = 4, gallery: int | None = 64, k: int = 5,
                   index_out: str | os.PathLike | None = None) -> dict:
    """Caption -> image with :mod:`fourm.retrieval.index`, 4M-21 style: the gallery is the model's prediction of
    ``tok_caption_global`` from each held-out image, a caption query the model's prediction from the caption.
    One row per query: the caption, then the ``k`` best images, the true one framed in green. With
    ``index_out`` the gallery is saved there too (``fourm serve --index`` searches it)."""
    index = build_index(corpus, "tok_caption_global", from_="model", inputs=["rgb"], model=model,
                        tokenizers=tokenizers, limit=gallery, progress=False)
    if index_out is not None:
        index.save(index_out)
    data, _ = _heldout(corpus, gallery)
    by_key = {s["__key__"]: s for s in data}
    asked = data[:queries]
    hits = search_samples(index, [{"caption": s["caption"]} for s in asked], k=k)
    rows, found = [], 0
    for s, row in zip(asked, hits, strict=True):
        tiles = [ImageOps.expand(_tile("caption", s["caption"]), 4, fill=(255, 255, 255))]
        for hit in row:
            own = hit.key == s["__key__"]
            found += own
            tiles.append(ImageOps.expand(_tile("tok_rgb", by_key[hit.key]["rgb"]), 4,
                                         fill=(0, 170, 0) if own else (255, 255, 255)))
        rows.append(tiles)
    path = Path(out) / "retrieval.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(rows, column_titles=["query", *[f"rank {r + 1}" for r in range(k)]]).save(path)
    return {"picture": str(path), "queries": len(rows), "found_in_top_k": found, "gallery": len(index)}
