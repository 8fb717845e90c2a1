"""Does FourM know what a scene holds? The nll of its caption's colour, shape and size words.

    python benchmarks/object_probe.py --run runs/demo [--samples 128]
    python benchmarks/object_probe.py --model M --tokenizers T --corpus HELDOUT_CORPUS

Each held-out scene's true caption is a whole target, teacher-forced, given the whole RGB (as the
model reads it: ``rgb`` pixels, ``tok_rgb`` tokens, or both) and given nothing. The mean nll of the tokens
that name an object's colour, shape or size is printed beside two references that need no model:
chance (uniform over the 8 colours / 4 shapes / 2 sizes) and an oracle that knows which colours
(shapes, sizes) the scene holds but not in which order the caption names them (uniform over that
set). A model that reads objects from RGB is below chance given RGB and near chance given nothing;
the gap to the oracle is what it has not learnt. The caption alone cannot tell (order is random):
that is why the probe scores words, not whole captions.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import numpy as np
import torch

from fourm.eval.metrics import scene_vocabulary
from fourm.modalities import Kind

COLOURS, SHAPES, SIZES = scene_vocabulary()
KINDS = {"colour": list(COLOURS), "shape": SHAPES, "size": SIZES}


def caption_batch(model, captions: list[list[int]], rgb: dict, specials):
    """Teacher-forced whole captions (``[S_0] body [EOS]``), given the RGB inputs ``rgb`` ({"tok_rgb": ids,
    "rgb": raw uint8 images}: whichever the model reads, all of them) or nothing (``{}``)."""
    from fourm.data.loader import continuous_inputs
    from fourm.data.masking import collate

    cap, samples = model.modality_index("caption"), []
    for i, ids in enumerate(captions):
        body = [t for t in ids if t != specials.eos]
        target = np.array([specials.sentinels[0], *body, specials.eos])
        s = {"dec_target": target, "dec_ids": np.concatenate([[specials.sos], target[:-1]]),
             "dec_pos": np.arange(len(target)), "dec_mod": np.full(len(target), cap),
             "dec_group": np.zeros(len(target))}
        enc = {"enc_ids": [], "enc_pos": [], "enc_mod": []}
        for name, values in rgb.items():
            n = model.specs[name].tokens
            pixels = model.specs[name].kind == Kind.PIXELS
            enc["enc_ids"].append(np.arange(n) if pixels else values[i])  # pixels: the id is the patch index
            enc["enc_pos"].append(np.arange(n))
            enc["enc_mod"].append(np.full(n, model.modality_index(name)))
        s.update({k: np.concatenate(v) if v else np.zeros(0) for k, v in enc.items()})
        samples.append({k: np.asarray(v, dtype=np.int64) for k, v in s.items()})
    continuous = {}
    if "rgb" in rgb:
        images = [{"rgb": image} for image in rgb["rgb"]]
        continuous = continuous_inputs(images, model.specs, {"rgb": rgb["rgb"][0].shape})
    return collate(samples, continuous)


@torch.no_grad()
def word_nll(model, batch) -> tuple[np.ndarray, np.ndarray]:
    """Per caption target token of ``batch``: its target id and its nll under the model (flat, in order)."""
    out = model(batch).logits["caption"]
    targets = batch.dec_target.flatten()[out.index]
    nll = torch.nn.functional.cross_entropy(out.logits.float(), targets, reduction="none")
    return targets.numpy(), nll.numpy()


def probe(model, tokenizers: dict, scenes: list[dict], batch_size: int = 32) -> dict[str, dict[str, float]]:
    """{kind: {"given rgb", "given nothing", "chance", "oracle", "words"}} over ``scenes`` (dicts with
    raw ``rgb`` and ``caption``)."""
    from fourm.data.masking import specials_from_tokenizer

    text = tokenizers["caption"]
    specials = specials_from_tokenizer(text)
    word_ids = {kind: {text.token_to_id(w): w for w in words} for kind, words in KINDS.items()}
    missing = [w for kind, ids in word_ids.items() for i, w in ids.items() if i is None]
    if missing:
        raise ValueError(f"the caption vocabulary has no single token for {', '.join(missing)}")
    sums = {kind: {"given rgb": 0.0, "given nothing": 0.0, "oracle": 0.0, "words": 0} for kind in KINDS}
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start:start + batch_size]
        captions = text.encode([s["caption"] for s in chunk])
        rgb = {}
        if "rgb" in model.specs:
            rgb["rgb"] = [s["rgb"] for s in chunk]
        if "tok_rgb" in model.specs:
            rgb["tok_rgb"] = tokenizers["tok_rgb"].encode([s["rgb"] for s in chunk]).numpy()
        targets, given = word_nll(model, caption_batch(model, captions, rgb, specials))
        _, nothing = word_nll(model, caption_batch(model, captions, {}, specials))
        lengths = [len([t for t in c if t != specials.eos]) + 2 for c in captions]
        for scene, (lo, hi) in zip(chunk, _spans(lengths), strict=True):
            words = re.findall(r"[a-z]+", scene["caption"].lower())  # as fourm.eval.metrics.parse_objects reads them
            for kind, ids in word_ids.items():
                hits = np.isin(targets[lo:hi], list(ids))
                present = {w for w in words if w in ids.values()}
                sums[kind]["given rgb"] += float(given[lo:hi][hits].sum())
                sums[kind]["given nothing"] += float(nothing[lo:hi][hits].sum())
                sums[kind]["oracle"] += int(hits.sum()) * math.log(max(len(present), 1))
                sums[kind]["words"] += int(hits.sum())
    out = {}
    for kind, s in sums.items():
        n = max(s["words"], 1)
        out[kind] = {"given rgb": s["given rgb"] / n, "given nothing": s["given nothing"] / n,
                     "chance": math.log(len(KINDS[kind])), "oracle": s["oracle"] / n, "words": s["words"]}
    return out


def _spans(lengths: list[int]) -> list[tuple[int, int]]:
    ends = np.cumsum(lengths)
    return list(zip((ends - lengths).tolist(), ends.tolist(), strict=True))


def main(argv: list[str] | None = None) -> None:
    from fourm.data.corpus import CorpusReader
    from fourm.model.fourm import FourM
    from fourm.tokenization.base import load_tokenizers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a `fourm demo` folder: its fourm/model, tokenizers and heldout corpus")
    parser.add_argument("--model")
    parser.add_argument("--tokenizers")
    parser.add_argument("--corpus", help="held-out scenes (a scenes corpus the model never trained on)")
    parser.add_argument("--samples", type=int, help="the first N scenes (default: all)")
    args = parser.parse_args(argv)
    if args.run:
        run = Path(args.run)
        args.model = args.model or run / "fourm" / "model"
        args.tokenizers = args.tokenizers or run / "tokenizers"
        args.corpus = args.corpus or run / "heldout"
    if not (args.model and args.tokenizers and args.corpus):
        parser.error("give --run, or --model, --tokenizers and --corpus")
    try:
        model = FourM.from_pretrained(args.model).eval()
        names = ["caption"] + (["tok_rgb"] if "tok_rgb" in model.specs else [])
        tokenizers = load_tokenizers(args.tokenizers, names)
        scenes = CorpusReader(args.corpus, ["rgb", "caption"]).head(args.samples)
        rows = probe(model, tokenizers, scenes)
    except (OSError, ValueError, LookupError) as e:  # a wrong path or a model without a caption: one line
        parser.error(str(e))
    print(f"caption word nll on {len(scenes)} held-out scenes (nats; lower is better)")
    print(f"{'words':8}{'given rgb':>11}{'nothing':>9}{'chance':>8}{'oracle':>8}{'count':>7}")
    for kind, r in rows.items():
        print(f"{kind:8}{r['given rgb']:11.3f}{r['given nothing']:9.3f}{r['chance']:8.3f}{r['oracle']:8.3f}"
              f"{r['words']:7d}")


if __name__ == "__main__":
    main()
