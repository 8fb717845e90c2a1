"""The caption -> RGB judge on images whose answer is known: how often it calls a colour shown that the
caption did not name, counted pixel by pixel and in regions (the evaluation's judge).

    python benchmarks/colour_judge.py --run runs/demo [--samples 128]

Three sets of images, judged against their scenes' captions: the true images (a fair judge finds every
named colour and nothing else), their round trip through the run's RGB tokenizer (the best any model that
generates these tokens can score) and another scene's true image (what a model that ignores the caption
scores). ``min_width 1`` is the pixel count alone; the evaluation's default (3) drops the 1-2 px fringes
where the tokenizer shifts a hue at an object's border.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fourm.data.corpus import CorpusReader
from fourm.eval import metrics
from fourm.tokenization.base import load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/demo", help="a `fourm demo` folder (its heldout and tokenizers)")
    parser.add_argument("--samples", type=int, default=None, help="held-out scenes (default: all)")
    args = parser.parse_args()
    run = Path(args.run)
    rows = list(CorpusReader(run / "heldout", ["rgb", "caption"]))[: args.samples]
    truth = [np.asarray(r["rgb"]) for r in rows]
    captions = [r["caption"] for r in rows]
    tokenizer = load_tokenizer(run / "tokenizers" / "tok_rgb")
    sets = {"true images": truth, "tokenizer round trip": list(tokenizer.decode(tokenizer.encode(np.stack(truth)))),
            "another scene's image": truth[1:] + truth[:1]}
    print(f"caption -> RGB judge on {len(rows)} held-out scenes: named colours shown / shown colours not named")
    print(f"{'images':24s} {'per pixel (width 1)':>22s} {'regions (width 3)':>22s}")
    for name, images in sets.items():
        cells = [metrics.colour_hits(images, captions, min_width=w) for w in (1, 3)]
        print(f"{name:24s} " + " ".join(f"{c['named']:>10.3f} / {c['false_alarms']:.3f}" for c in cells))


if __name__ == "__main__":
    main()
