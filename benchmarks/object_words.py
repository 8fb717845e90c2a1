"""Can a FourM read objects from RGB pixels at all, and what helps? RGB -> each object's words, fresh scenes.

    python benchmarks/object_words.py [--steps 1500] [--object-scale 1.0] [--stem linear] [--encoder-depth 2]

A design probe, apart from the demo's pipeline: a FourM (nano, width 128, as the demo's) reads a
scene's pixels and is trained to write, for each visible object left to right, its size, colour and
shape words (a 14-word vocabulary, teacher-forced). Every batch is freshly rendered scenes, so no
scene is seen twice and memorisation is ruled out. Printed at four points: the held-out nll and
accuracy of each word kind on 256 scenes, beside chance (ln 2 / ln 8 / ln 4). ``--object-scale``
multiplies the objects' sizes (``fourm.data.scenes.SIZES``) for this run only, to ask what object
size buys at equal steps.

Measured on a 2-core EPYC (1500 steps, batch 16, about 3.5 minutes alone):
the default scenes of fourm before objects were enlarged (--object-scale 0.625 now): colour 0.97,
size 0.80, shape 1.388 (chance 2.08 / 0.69 / 1.386); 1.6x larger objects (the scenes' sizes now):
colour 0.66, size 0.70, shape 1.357; the same in 4 px patches (--patch-size 4: 256 tokens, 2.4x the
time) colour 0.64, size 0.70, shape 1.331. Shape is learnt late: with 8 px patches at --steps 4000
(8 minutes) shape words went 1.374, 1.365, 1.283, 1.243 at 1000-4000 steps, colour 0.52, size 0.62.
The pool stem (--stem pool: 3x3 convolutions, ReLU, max pools), which lets a transformer tell which
shapes a scene holds (benchmarks/shape_probe.py), gave the best colour words of any stem at 1500 steps
(0.628, size 0.624) and shape words still at chance (1.381); a stem of strided 3x3 convolutions
without pools (tried outside the library) colour 0.835, shape 1.378. With each object's box scaled
to the whole image (--crops --steps 600 --batch-size 32), the same model learns its shape fast: shape
words 1.068, 0.827, 0.673, 0.589 (75% right) at 150-600 steps, colour 0.069, size 0.366. What the
model cannot read shape from in time is an object about 2.5 patches across, not the words or the
objective. Binding a shape to one of several objects is part of it, not most: scenes of one object
(--objects 1, 1500 steps, 2-core Xeon) reached shape 1.173 (43% right; colour 0.002, size 0.166) with
the linear stem against 1.357 with 1-4 objects, and stayed at chance with the pool stem (1.387). Crops
do not teach scenes: half of each batch crops (--mix-crops 0.5) left the scenes' shape words at 1.355.
Nor does width at this step count: --dim 256 (1500 steps) shape 1.388, colour 0.878 (slower than 128).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch.nn import functional as F

import pseudolabel.sources.scenes as scenes
from fourm.data.masking import collate
from fourm.data.scenes import COLOURS, SHAPES, SIZES
from fourm.kinds import rgb_to_model
from fourm.modalities import ModalityScale
from fourm.model.sizes import create_model

SOS, EOS, FIRST_SENTINEL, FIRST_WORD = 2, 3, 4, 12
WORDS = {"size": list(SIZES), "colour": list(COLOURS), "shape": SHAPES}
OFFSET = {"size": 0, "colour": len(SIZES), "shape": len(SIZES) + len(COLOURS)}
VOCAB = FIRST_WORD + sum(len(w) for w in WORDS.values())


def scene_words(seed: int, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Scene ``seed``: its RGB, the target ids ``[S_0] (size colour shape)* [EOS]`` and each id's kind."""
    rng = np.random.default_rng(seed)
    out = scenes.render(scenes.Scene.sample(rng), size, rng, with_objects=True)
    ids, kinds = [FIRST_SENTINEL], [""]
    for obj in out["objects"]:
        for kind in ("size", "colour", "shape"):
            ids.append(FIRST_WORD + OFFSET[kind] + WORDS[kind].index(getattr(obj, kind)))
            kinds.append(kind)
    return out["rgb"], np.array([*ids, EOS]), [*kinds, ""]


def object_crops(seed: int, size: int) -> list[tuple[np.ndarray, np.ndarray, list[str]]]:
    """Scene ``seed``'s objects one by one: each one's box scaled to the whole image, its three words."""
    rng = np.random.default_rng(seed)
    out = scenes.render(scenes.Scene.sample(rng), size, rng, with_objects=True)
    image = torch.from_numpy(out["rgb"]).permute(2, 0, 1)[None].float()
    items = []
    for obj, det in zip(out["objects"], out["det"], strict=True):  # both left to right
        x0, y0, x1, y1 = (round(v * size) for v in det["box"])
        crop = F.interpolate(image[..., y0:y1, x0:x1], size=(size, size), mode="bilinear", align_corners=False)
        ids = [FIRST_WORD + OFFSET[kind] + WORDS[kind].index(getattr(obj, kind)) for kind in WORDS]
        items.append((crop[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy(),
                      np.array([FIRST_SENTINEL, *ids, EOS]), ["", *WORDS, ""]))
    return items


def samples(seed: int, size: int, crops: bool, objects: int = 0) -> list[tuple[np.ndarray, np.ndarray, list[str]]]:
    """Scene ``seed`` as training items; with ``objects`` > 0 only a scene that shows that many objects."""
    if crops:
        return object_crops(seed, size)
    image, ids, kinds = scene_words(seed, size)
    return [] if objects and kinds.count("shape") != objects else [(image, ids, kinds)]


def batch(items: list, model):
    n, rgb, caption = model.specs["rgb"].tokens, model.modality_index("rgb"), model.modality_index("caption")
    samples = [{"enc_ids": np.arange(n), "enc_pos": np.arange(n), "enc_mod": np.full(n, rgb), "dec_target": ids,
                "dec_ids": np.concatenate([[SOS], ids[:-1]]), "dec_pos": np.arange(len(ids)),
                "dec_mod": np.full(len(ids), caption), "dec_group": np.zeros(len(ids))} for _, ids, _ in items]
    samples = [{k: np.asarray(v, dtype=np.int64) for k, v in s.items()} for s in samples]
    return collate(samples, {"rgb": rgb_to_model(np.stack([image for image, _, _ in items]))})


def evaluate(model, heldout: list) -> tuple[dict, dict]:
    nll, hit = {k: [] for k in WORDS}, {k: [] for k in WORDS}
    model.eval()
    with torch.no_grad():
        for start in range(0, len(heldout), 64):
            items = heldout[start:start + 64]
            b = batch(items, model)
            index, logits = model(b).logits["caption"]
            logp = torch.zeros(b.dec_target.numel(), VOCAB)
            logp[index] = torch.log_softmax(logits.float(), -1)
            logp = logp.view(*b.dec_target.shape, VOCAB)
            for row, (_, ids, kinds) in enumerate(items):
                for t, kind in enumerate(kinds):
                    if kind:
                        nll[kind].append(-logp[row, t, ids[t]].item())
                        hit[kind].append(int(logp[row, t].argmax() == ids[t]))
    model.train()
    return {k: float(np.mean(v)) for k, v in nll.items()}, {k: float(np.mean(v)) for k, v in hit.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--object-scale", type=float, default=1.0, help="multiplies the objects' sizes")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--stem", default="linear", help="pixel stem: linear | conv")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--encoder-depth", type=int, default=2)
    p.add_argument("--crops", action="store_true",
                   help="one object a sample: its box scaled to the whole image (does object size in pixels decide?)")
    p.add_argument("--mix-crops", type=float, default=0.0,
                   help="this share of a training batch is object crops (held out: scenes; do crops teach scenes?)")
    p.add_argument("--objects", type=int, default=0,
                   help="only scenes that show this many objects (1: is binding a shape to its object the wall?)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.objects:  # sample that many (some may fall out of view: samples() keeps the scenes that show them)
        scenes.OBJECT_COUNTS = (args.objects, args.objects)
    for name, radius in list(SIZES.items()):
        SIZES[name] = radius * args.object_scale  # the renderer reads this table

    torch.manual_seed(0)
    model = create_model("nano", ["rgb", "caption"], ModalityScale(args.image_size, args.patch_size,
                                                                    vocab_sizes={"caption": VOCAB}),
                         max_tokens={"caption": 16}, pixel_stem=args.stem, dim=args.dim, heads=4,
                         encoder_depth=args.encoder_depth)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05, betas=(0.9, 0.95))
    heldout = [item for i in range(256 * (1 + 2 * (args.objects > 0)))
               for item in samples(10**7 + i, args.image_size, args.crops, args.objects)]
    print(f"chance: size {math.log(2):.3f}, colour {math.log(8):.3f}, shape {math.log(4):.3f}")
    start, seed = time.perf_counter(), 0
    for step in range(args.steps):
        warm = min(1.0, (step + 1) / 50)
        for group in opt.param_groups:
            group["lr"] = args.lr * warm * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        items, crops = [], []
        n_crops = round(args.batch_size * args.mix_crops)
        while len(crops) < n_crops:
            crops += object_crops(seed, args.image_size)
            seed += 1
        while len(items) < args.batch_size - n_crops:  # whole scenes, or as many objects as a batch holds
            items += samples(seed, args.image_size, args.crops, args.objects)
            seed += 1
        items = items[:args.batch_size - n_crops] + crops[:n_crops]
        loss = model(batch(items, model)).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % max(1, args.steps // 4) == 0:
            nll, acc = evaluate(model, heldout)
            words = ", ".join(f"{k} {nll[k]:.3f} ({acc[k]:.2f})" for k in WORDS)
            print(f"step {step + 1} ({time.perf_counter() - start:.0f} s): held-out nll (accuracy) {words}", flush=True)


if __name__ == "__main__":
    main()
