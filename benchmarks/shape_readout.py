"""Where does a FourM lose an object's shape? One-object scenes, RGB pixels -> the object's shape.

    python benchmarks/shape_readout.py --readout mean [--stem pool] [--init-std 0.05] [--position-scale 10]

A design probe for the learning issue (#23), on the task of ``object_words.py --objects 1`` (fresh
scenes every batch, 512 held-out ones, the demo model's shape: nano, width 128). What changes is how
the shape is read out of the model:

* ``mean``: FourM's encoder, mean-pooled, one linear layer to the 4 shapes (a linear probe's readout);
* ``shape-word``: FourM's decoder writing the caption ``size colour shape``, loss on the shape word only;
* ``caption``: the same with the loss on every word (what the demo trains), optionally with the shape
  word weighted (``--shape-weight``).

Printed: held-out nll and accuracy of the shape at three points (chance ln 4 = 1.386).

Measured on a 2-core Xeon (600 steps, batch 16, one seed, other jobs on the cores; about 75 s each):
with nanoGPT's init (std 0.02) and positions x1, the pool stem under ``mean`` reached 1.263, where a
plain PyTorch transformer on the same stem reached 0.765 (``shape_probe.py``'s model); std 0.05 in the
trunk made it 0.563, positions x10 0.819. With the demo's settings (``--init-std 0.05 --position-scale
10``) and the pool stem: ``mean`` 0.717, ``shape-word`` 1.085, ``caption`` 1.384, ``caption
--shape-weight 5`` 1.334; the linear stem: ``caption`` 1.270, with ``--shape-weight 5`` 1.158.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import yaml
from object_words import FIRST_WORD, OFFSET, VOCAB, batch, samples
from torch import nn
from torch.nn import functional as F

import pseudolabel.sources.scenes as scenes
from fourm.modalities import ModalityScale
from fourm.model.sizes import create_model

SHAPE_POSITION = 3  # targets: [S_0] size colour shape [EOS]


def shape_ids(items) -> torch.Tensor:
    return torch.tensor([ids[SHAPE_POSITION] - FIRST_WORD - OFFSET["shape"] for _, ids, _ in items])


def fresh(seed: int, count: int) -> tuple[list, int]:
    """``count`` one-object scenes from ``seed`` on, and the next unused seed."""
    items = []
    while len(items) < count:
        items += samples(seed, 64, False, 1)
        seed += 1
    return items[:count], seed


def shape_logits(model, probe: nn.Linear, items, readout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits over the shapes, or over the caption vocabulary at the shape word), the shape ids."""
    b = batch(items, model)
    if readout == "mean":
        memory, valid = model.encode(b)
        w = valid.unsqueeze(-1).to(memory.dtype)
        return probe((memory * w).sum(1) / w.sum(1)), shape_ids(items)
    index, logits = model(b).logits["caption"]
    at = b.dec_pos.flatten()[index] == SHAPE_POSITION
    return logits[at].float(), b.dec_target.flatten()[index][at]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readout", choices=["mean", "shape-word", "caption"], default="mean")
    p.add_argument("--stem", default="pool")
    p.add_argument("--init-std", type=float, default=0.05)
    p.add_argument("--position-scale", type=float, default=10.0)
    p.add_argument("--shape-weight", type=float, default=1.0, help="the shape word's weight in --readout caption")
    p.add_argument("--focal", type=float, default=0.0,
                   help="focal loss gamma in --readout caption: each word's loss times (1 - p)^gamma (Lin et al. 2017)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="other FourMConfig fields, e.g. encoder_depth=3 decoder_depth=1 use_qk_norm=true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    scenes.OBJECT_COUNTS = (1, 1)
    torch.manual_seed(0)
    model = create_model("nano", ["rgb", "caption"], ModalityScale(64, 8, vocab_sizes={"caption": VOCAB}),
                         max_tokens={"caption": 16}, pixel_stem=args.stem, dim=128, heads=4,
                         init_std=args.init_std, position_scale=args.position_scale,
                         **{k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)})
    probe = nn.Linear(128, 4)
    params = [*model.parameters(), *probe.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05, betas=(0.9, 0.95))
    heldout, _ = fresh(10**7, 512)
    seed, start = 0, time.perf_counter()
    for step in range(args.steps):
        for group in opt.param_groups:  # warm-up, then cosine
            group["lr"] = args.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        items, seed = fresh(seed, 16)
        if args.readout == "caption":
            b = batch(items, model)
            index, logits = model(b).logits["caption"]
            weight = torch.where(b.dec_pos.flatten()[index] == SHAPE_POSITION, args.shape_weight, 1.0)
            losses = F.cross_entropy(logits.float(), b.dec_target.flatten()[index], reduction="none")
            losses = losses * (1 - torch.exp(-losses.detach())) ** args.focal
            loss = (losses * weight).sum() / weight.sum()
        else:
            loss = F.cross_entropy(*shape_logits(model, probe, items, args.readout))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if (step + 1) % max(1, args.steps // 3) == 0:
            model.eval()
            with torch.no_grad():
                logits, target = zip(*(shape_logits(model, probe, heldout[i:i + 128], args.readout)
                                       for i in range(0, len(heldout), 128)), strict=True)
            logits, target = torch.cat(logits), torch.cat(target)
            model.train()
            print(f"step {step + 1} ({time.perf_counter() - start:.0f} s): held-out shape nll "
                  f"{F.cross_entropy(logits, target).item():.3f}, accuracy "
                  f"{(logits.argmax(1) == target).float().mean().item():.2f} (chance {math.log(4):.3f})", flush=True)


if __name__ == "__main__":
    main()
