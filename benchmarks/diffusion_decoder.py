"""Plain ViT decoder vs diffusion decoder on the SAME codes: round-trip metrics and decode speed.

    python benchmarks/diffusion_decoder.py --diffusion TOKENIZERS/diffusion/tok_rgb --corpus CORPUS \\
        [--plain TOKENIZERS/tok_rgb] [--samples 64] [--steps 10 25] [--batch 64] [--threads 1]

The held-out samples are the corpus' last ``--samples`` (the trainer's held-out set when it equals
its ``eval_samples``). They are encoded once (``--plain``'s encoder, which must give the diffusion
tokenizer's ids: it is the same frozen VQ-VAE) and decoded by the plain decoder and by the diffusion
decoder at each ``--steps`` (fixed seed). Printed per decoder: the codec's metrics (PSNR, abs-rel,
mean angle, F1...), ``detail`` = mean spatial gradient magnitude of the decode / of the truth in the
network space (1 = as much fine detail as the truth; a blurry mean reconstruction is below 1), and
decode images/s (fp32, one timed pass after a warm-up).
"""

from __future__ import annotations

import argparse
import time


def detail(codec, pred_values, true_values) -> float:
    """Mean |spatial gradient| of the decode over that of the truth, in the codec's network space."""
    def grad(values):
        x = codec.to_input(values)
        return (x.diff(dim=-1).abs().mean() + x.diff(dim=-2).abs().mean()).item()

    return grad(pred_values) / max(grad(true_values), 1e-12)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--diffusion", required=True, help="folder of a vqvae_diffusion tokenizer")
    p.add_argument("--plain", help="folder of the plain vqvae_image tokenizer (default: the one inside --diffusion)")
    p.add_argument("--corpus", required=True)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--steps", type=int, nargs="+", default=[10, 25])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import numpy as np
    import torch

    from fourm.tokenization.diffusion import DiffusionDecoderTokenizer
    from fourm.tokenization.vqvae import ImageVQVAE
    from tokenizers_train.data import load_series

    torch.set_num_threads(args.threads)
    model = DiffusionDecoderTokenizer.from_pretrained(args.diffusion)
    plain = ImageVQVAE.from_pretrained(args.plain) if args.plain else model.vq
    _, truth, _ = load_series(args.corpus, plain.config.source, args.samples)
    truth = np.stack(truth)
    ids = plain.encode(truth)
    if not torch.equal(ids, model.encode(truth)):
        raise SystemExit("the plain and diffusion tokenizers give different ids: they do not share a VQ-VAE")

    runs = [("plain", None)] + [("diffusion", s) for s in args.steps]
    print(f"{plain.modality}: {len(truth)} held-out samples of {args.corpus}, same {ids.shape[1]} ids each, "
          f"batch {args.batch}, {args.threads} thread(s), fp32")
    header = None
    for name, steps in runs:
        decode = (lambda i: plain.decode(i, batch_size=args.batch)) if steps is None else \
                 (lambda i, s=steps: model.decode(i, steps=s, batch_size=args.batch))
        decode(ids[:2])  # warm-up: lazy imports, allocations
        start = time.perf_counter()
        pred = decode(ids)
        seconds = time.perf_counter() - start
        scores = {**plain.codec.metrics(pred, truth), "detail": detail(plain.codec, pred, truth)}
        if header is None:
            header = list(scores)
            print(f"{'decoder':10} {'steps':>5} " + " ".join(f"{k:>12}" for k in header) + f" {'images/s':>9}")
        print(f"{name:10} {steps or '-':>5} " + " ".join(f"{scores[k]:12.4f}" for k in header)
              + f" {len(truth) / seconds:9.1f}")


if __name__ == "__main__":
    main()
