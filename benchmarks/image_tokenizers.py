"""Tokenizer quality and speed on held-out data: one row per tokenizer (or per test set).

    python benchmarks/image_tokenizers.py --tokenizers DIR [--eval-corpus DIR] [--samples 256]
    python benchmarks/image_tokenizers.py --tokenizers DIR --train-corpus CORPUS   # trains what DIR lacks

Held-out scenes come from a corpus rendered with another seed than the training corpus (made on the
first run: ``scenes:N`` with ``seed=1``), so no scene was seen in training. ``tok_rgb`` is also
scored on real photos that are nothing like the scenes (scikit-image's bundled samples, centre
cropped and resized), which shows how far it generalises. Speeds are images/s of ``encode`` and
``decode`` (values in, values out), median of 3 timed passes after a warm-up, at the process's
torch thread count (``--threads``).

Rows are data: a :class:`Row` names a tokenizer and a function that scores it; other tokenizer
families add theirs to ``ROWS``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from timing import timed

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "immunohistochemistry",
          "hubble_deep_field", "retina", "moon", "grass", "brick"]


@dataclass
class Context:
    tokenizers: Path
    eval_corpus: Path
    samples: int
    train_corpus: Path | None
    repeats: int


@dataclass
class Row:
    name: str  # shown in the table
    modality: str  # the tokenizer it scores (a sub-folder of --tokenizers)
    score: Callable[[Context, object], dict[str, float]]  # (context, tokenizer) -> figures
    config: str | None = None  # configs/tokenizers/<config>.yaml trains it when it is missing
    main: str = ""  # the figure the table leads with


def load_values(corpus: Path, name: str, samples: int) -> list:
    from fourm.data.corpus import CorpusReader

    values = []
    for sample in CorpusReader(corpus, [name]):
        values.append(sample[name])
        if len(values) == samples:
            break
    return values


def image_figures(tokenizer, values, repeats: int) -> dict[str, float]:
    """Codec metrics of the round trip, vocabulary use, and speed of one image tokenizer."""
    from tokenizers_train.family import code_stats

    ids = tokenizer.encode(values)
    figures = {**tokenizer.codec.metrics(tokenizer.decode(ids), values), **code_stats(ids, tokenizer.vocab_size)}
    figures["encode_per_s"] = len(values) / timed(lambda: tokenizer.encode(values), repeats)
    figures["decode_per_s"] = len(values) / timed(lambda: tokenizer.decode(ids), repeats)
    return figures


def image_row(source: str, main: str) -> Row:
    def score(ctx: Context, tokenizer) -> dict[str, float]:
        return image_figures(tokenizer, load_values(ctx.eval_corpus, source, ctx.samples), ctx.repeats)

    return Row(f"tok_{source}", f"tok_{source}", score, config=source, main=main)


def band_row(source: str, main: str) -> Row:
    """An image-like band (X-ray, thermal, hyperspectral): the round trip beside the trivial baseline of the
    evaluation's rows, the held-out mean map (``mean_map_*``)."""
    def score(ctx: Context, tokenizer) -> dict[str, float]:
        values = load_values(ctx.eval_corpus, source, ctx.samples)
        stack = np.stack(values)
        mean = stack.mean(0)
        mean = (mean.round() if stack.dtype.kind in "iu" else mean).astype(stack.dtype)
        baseline = tokenizer.codec.metrics(np.broadcast_to(mean, stack.shape), stack)
        return {**image_figures(tokenizer, values, ctx.repeats), **{f"mean_map_{k}": v for k, v in baseline.items()}}

    return Row(f"tok_{source}", f"tok_{source}", score, config=source, main=main)


def photos(size: int) -> np.ndarray:
    """scikit-image's sample photos, centre-cropped square and resized to ``size`` px, uint8 RGB."""
    import skimage.data
    from skimage.transform import resize

    out = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        h, w = img.shape[:2]
        s = min(h, w)
        crop = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s, :3]
        out.append((resize(crop, (size, size), anti_aliasing=True) * 255).round().astype(np.uint8))
    return np.stack(out)


def score_photos(ctx: Context, tokenizer) -> dict[str, float]:
    values = photos(tokenizer.config.image_size)
    ids = tokenizer.encode(values)
    figures = tokenizer.codec.metrics(tokenizer.decode(ids), values)
    return {**figures, "images": float(len(values))}


ROWS: list[Row] = [
    image_row("rgb", "psnr"),
    Row("tok_rgb (photos)", "tok_rgb", score_photos, config="rgb", main="psnr"),
    image_row("depth", "abs_rel"),
    image_row("normal", "angle_mean"),
    image_row("semseg", "miou"),
    image_row("canny_edge", "f1"),
    image_row("sam_edge", "f1"),
    band_row("xray", "rel_error"),
    band_row("thermal", "rel_error"),
    band_row("hyperspectral", "spectral_angle"),
]


def ensure_eval_corpus(path: Path, samples: int) -> Path:
    """Scenes with seed 1 (training corpora use seed 0), with the edge labellers and the image-like bands."""
    if (path / "manifest.json").is_file():
        return path
    from pseudolabel.pipeline import PseudolabelConfig, run_pipeline

    print(f"rendering {samples} held-out scenes (seed 1) into {path}", flush=True)
    run_pipeline(PseudolabelConfig(source=f"scenes:{samples}", out=str(path), seed=1, workers=1,
                                   labellers=["canny_edge", "sam_edge"],
                                   series=["xray", "thermal", "hyperspectral"]), progress=False)
    return path


def get_tokenizer(ctx: Context, row: Row, cache: dict):
    from fourm.tokenization.base import load_tokenizer

    if row.modality in cache:
        return cache[row.modality]
    folder = ctx.tokenizers / row.modality
    if not (folder / "config.json").is_file():
        if ctx.train_corpus is None or row.config is None:
            return None
        from tokenizers_train import train_tokenizer

        print(f"training {row.modality} from {ctx.train_corpus}", flush=True)
        train_tokenizer(REPO / "configs" / "tokenizers" / f"{row.config}.yaml", str(ctx.train_corpus),
                        ctx.tokenizers, progress=False)
    cache[row.modality] = load_tokenizer(folder)
    return cache[row.modality]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizers", required=True, help="folder of tokenizers (<dir>/tok_rgb/...)")
    p.add_argument("--eval-corpus", default="runs/benchmarks/scenes_seed1", help="held-out scenes (made if absent)")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--train-corpus", help="train the tokenizers that --tokenizers lacks on this corpus")
    p.add_argument("--rows", help="comma-separated row names (default: all)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = Context(Path(args.tokenizers), ensure_eval_corpus(Path(args.eval_corpus), args.samples), args.samples,
                  Path(args.train_corpus) if args.train_corpus else None, args.repeats)
    wanted = set(args.rows.split(",")) if args.rows else None
    print(f"held-out: {ctx.eval_corpus} ({args.samples} samples), {torch.get_num_threads()} thread(s)")
    print(f"{'row':18} {'main':>16} {'usage':>6} {'perplexity':>10} {'enc/s':>7} {'dec/s':>7}  other")
    results, cache = {}, {}
    for row in ROWS:
        if wanted is not None and row.name not in wanted:
            continue
        tokenizer = get_tokenizer(ctx, row, cache)
        if tokenizer is None:
            print(f"{row.name:18} (no tokenizer in {ctx.tokenizers / row.modality})")
            continue
        with torch.no_grad():
            figures = row.score(ctx, tokenizer)
        results[row.name] = figures
        main_value = f"{row.main} {figures[row.main]:.4g}" if row.main in figures else ""
        fmt = lambda key, spec, f=figures: format(f[key], spec) if key in f else "-"  # noqa: E731
        shown = {row.main, "usage", "perplexity", "encode_per_s", "decode_per_s"}
        other = ", ".join(f"{k} {v:.4g}" for k, v in figures.items() if k not in shown)
        print(f"{row.name:18} {main_value:>16} {fmt('usage', '.1%'):>6} {fmt('perplexity', '.0f'):>10} "
              f"{fmt('encode_per_s', '.0f'):>7} {fmt('decode_per_s', '.0f'):>7}  {other}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
