"""Does a dense *class* target teach FourM's encoder shape? RGB pixels -> each patch's majority class.

    python benchmarks/patch_class_probe.py [--steps 600] [--scenes 2000]

A design probe for the learning issue (#23). The demo's encoder holds no shape
(``encoder_probe.py``), though its segmentation target names a shape on every object patch: a
``tok_semseg`` token's loss is mostly where a boundary falls inside its patch. Here the target is the
class itself: 64 tokens of 6 classes per image (background, ground, the four shapes), decoded by
FourM's decoder as an image modality (``tok_semseg``'s slot, vocabulary 6), the demo's model (nano,
width 128, its init, positions and rotary encoder), 2000 pre-rendered 1-4 object scenes. Printed:
the held-out accuracy on object patches, then ``encoder_probe.py``'s linear probes of the encoder.

Measured on a 2-core Xeon (one seed): at 600 steps object patches got their class 38% of the time and
the encoder's pooled features gave the shape of a one-object scene 0.42 / 0.46 right (mean / max pool;
chance 0.25), against 0.33 / 0.38 for the same model untrained (random features), 0.31 / 0.36 for one
trained as long on RGB -> tok_semseg alone (the demo's segmentation tokens) and 0.39 / 0.36 for the
default demo's encoder (3000 steps of its whole mixture); at 900 steps 54% and 0.49 / 0.50.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import yaml
from encoder_probe import linear_probes, one_object_scenes, untrained

import pseudolabel.sources.scenes as scenes
from fourm.data.masking import collate
from fourm.data.scenes import CLASSES
from fourm.kinds import rgb_to_model
from fourm.modalities import ModalityScale
from fourm.model.expert import patch_histograms
from fourm.model.sizes import create_model

PATCH, GRID = 8, 8  # 64 px scenes
FIRST_SHAPE = 2  # classes: background, ground, then the shapes


def render(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scene ``seed``: its RGB and each patch's majority class (GRID * GRID,), in raster order."""
    out = scenes.render_scene(seed, PATCH * GRID)
    shares = patch_histograms(torch.from_numpy(out["semseg"].astype(np.int64))[None], PATCH, len(CLASSES))
    return out["rgb"], shares[0].argmax(-1).numpy()


def batch(model, items):
    n, rgb, target = GRID * GRID, model.modality_index("rgb"), model.modality_index("tok_semseg")
    cells = np.arange(n)
    rows = [{"enc_ids": cells, "enc_pos": cells, "enc_mod": np.full(n, rgb), "dec_target": classes,
             "dec_ids": np.zeros(n, dtype=np.int64), "dec_pos": cells, "dec_mod": np.full(n, target),
             "dec_group": np.zeros(n, dtype=np.int64)} for _, classes in items]
    return collate(rows, {"rgb": rgb_to_model(np.stack([image for image, _ in items]))})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--scenes", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="FourMConfig fields over the demo's, e.g. pixel_stem=pool use_rotary=false")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    train = [render(seed) for seed in range(args.scenes)]
    heldout = [render(10**7 + seed) for seed in range(256)]
    torch.manual_seed(0)
    scale = ModalityScale(PATCH * GRID, PATCH, vocab_sizes={"tok_semseg": len(CLASSES)})
    settings = {"dim": 128, "heads": 4, "init_std": 0.05, "position_scale": 10.0,
                "position_scales": {"sequence": 1.0}, "use_rotary": True}
    settings.update({k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)})
    model = create_model("nano", ["rgb", "tok_semseg"], scale, **settings)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05, betas=(0.9, 0.95))
    rng = np.random.default_rng(0)
    for step in range(args.steps):
        for group in opt.param_groups:  # warm-up, then cosine
            group["lr"] = 2e-3 * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        loss = model(batch(model, [train[i] for i in rng.integers(0, len(train), 16)])).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % max(1, args.steps // 3) == 0:
            model.eval()
            with torch.no_grad():
                b = batch(model, heldout)
                index, logits = model(b).logits["tok_semseg"]
                pred, truth = logits.argmax(-1), b.dec_target.flatten()[index]
            model.train()
            on_object = truth >= FIRST_SHAPE
            print(f"step {step + 1} ({time.perf_counter() - start:.0f} s): object patches' class "
                  f"{(pred[on_object] == truth[on_object]).float().mean():.3f} right, every patch's "
                  f"{(pred == truth).float().mean():.3f}", flush=True)
    items, labels = one_object_scenes(1600)
    for name, m in (("encoder", model.eval()), ("untrained encoder", untrained(model))):
        for pool, kinds in linear_probes(m, items, labels).items():
            print(f"{name} [{pool} pool]: a one-object scene's shape {kinds['shape'][1]:.2f} right (chance 0.25)")


if __name__ == "__main__":
    main()
