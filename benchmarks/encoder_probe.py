"""What does a trained FourM's encoder hold about an object? Linear probes on its RGB features.

    python benchmarks/encoder_probe.py runs/demo/fourm/model [MODEL ...] [--scenes 1600]

Freshly rendered scenes of one object each (``object_words.py --objects 1``'s, never seen in
training) go through the encoder as RGB pixels alone; its outputs are pooled over the image (mean and
max) and a logistic regression per word kind (size, colour, shape) is fitted on three quarters and
scored on the rest: held-out nll and accuracy beside chance. The judge is a linear model fitted on
exact ground truth, not the model being judged. A kind that the caption, boxes or segmentation need
and that this probe cannot read is not in the encoder in a linear form, whatever the decoder does.

Measured on the default demo model of 2026-12-06 (3000 steps): colour 0.95 / 0.99 right (mean / max
pool), size 0.85 / 0.77, shape 0.27 / 0.26 (chance 0.25): the encoder holds no shape.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from object_words import FIRST_WORD, OFFSET, samples
from sklearn.linear_model import LogisticRegression

import pseudolabel.sources.scenes as scenes
from fourm.data.masking import collate
from fourm.kinds import rgb_to_model
from fourm.model.batch import Batch
from fourm.model.fourm import FourM

POSITIONS = {"size": 1, "colour": 2, "shape": 3}  # caption ids: [S_0] size colour shape [EOS]


def rgb_batch(model: FourM, images: list[np.ndarray]) -> Batch:
    """Every patch of each image as the encoder's input; nothing to decode (any model that reads rgb)."""
    n, rgb, empty = model.specs["rgb"].tokens, model.modality_index("rgb"), np.zeros(0, dtype=np.int64)
    encoder = {"enc_ids": np.arange(n), "enc_pos": np.arange(n), "enc_mod": np.full(n, rgb)}
    decoder = dict.fromkeys(("dec_ids", "dec_target", "dec_pos", "dec_mod", "dec_group"), empty)
    return collate([{**encoder, **decoder}] * len(images), {"rgb": rgb_to_model(np.stack(images))})


def features(model: FourM, items: list, batch_size: int = 100) -> dict[str, np.ndarray]:
    """Mean- and max-pooled encoder outputs of each scene's RGB pixels."""
    pooled = {"mean": [], "max": []}
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            images = [image for image, _, _ in items[start:start + batch_size]]
            f = model.encode_features(rgb_batch(model, images), pool="none", modalities=["rgb"])
            pooled["mean"].append(f.values.sum(1) / f.valid.sum(1, keepdim=True))
            pooled["max"].append(f.values.masked_fill(~f.valid[..., None], -torch.inf).max(1).values)
    return {k: torch.cat(v).float().numpy() for k, v in pooled.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="FourM model folders (config.json + safetensors)")
    p.add_argument("--scenes", type=int, default=1600)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    scenes.OBJECT_COUNTS = (1, 1)
    items, seed = [], 10**6  # seeds apart from any corpus'
    while len(items) < args.scenes:
        items += samples(seed, 64, False, 1)
        seed += 1
    items = items[:args.scenes]
    labels = {k: np.array([ids[i] - FIRST_WORD - OFFSET[k] for _, ids, _ in items]) for k, i in POSITIONS.items()}
    split = args.scenes * 3 // 4
    for path in args.models:
        model = FourM.from_pretrained(path).eval()
        for pool, x in features(model, items).items():
            row = []
            for kind, y in labels.items():
                probe = LogisticRegression(max_iter=2000).fit(x[:split], y[:split])
                prob = probe.predict_proba(x[split:])
                col = np.searchsorted(probe.classes_, y[split:])
                nll = -np.log(prob[np.arange(len(col)), col] + 1e-12).mean()
                chance = math.log(len(np.unique(y)))
                row.append(f"{kind} nll {nll:.3f} (chance {chance:.3f}), {np.mean(prob.argmax(1) == col):.2f} right")
            print(f"{path} [{pool} pool]: " + "; ".join(row), flush=True)


if __name__ == "__main__":
    main()
