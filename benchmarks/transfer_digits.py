"""A linear probe on real images: scikit-learn's handwritten digits (1797 8x8 scans, 10 classes).

    python benchmarks/transfer_digits.py [--out runs/digits] [--tokenizer-steps 300] [--fourm-steps 600]

The whole flow on the digits' own images, nothing else seen: the 8x8 scans upscaled to 32 px RGB
become a folder corpus (``fourm pseudolabel --source folder:``), an RGB tokenizer and a nano FourM
(rgb pixels and tok_rgb) are trained on the first 1297 of them, and a linear probe on the frozen
encoder's mean-pooled features (``fourm finetune``, labels from a CSV of key -> digit) is judged on the
last 500, beside the same probe on a freshly initialised FourM and scikit-learn's logistic regression
on the 64 raw pixels. The pre-training never sees the labels, and the held-out scans are not in it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

HELDOUT = 500


def main() -> None:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    from fourm.config import load_config
    from fourm.data.corpus import CorpusReader
    from fourm.data.tokenize import TokenizeConfig, tokenize_corpus
    from fourm.train.pretrain import FourMTrainConfig, run_training
    from fourm.transfer.finetune import FinetuneConfig, run_finetune
    from pseudolabel.pipeline import PseudolabelConfig, run_pipeline
    from tokenizers_train import train_tokenizer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/digits")
    p.add_argument("--tokenizer-steps", type=int, default=300)
    p.add_argument("--fourm-steps", type=int, default=600)
    p.add_argument("--probe-steps", type=int, default=300)
    args = p.parse_args()
    out = Path(args.out)
    digits = load_digits()
    train_n = len(digits.images) - HELDOUT

    pixels = out / "images"
    if not pixels.is_dir():
        pixels.mkdir(parents=True)
        for i, image in enumerate(digits.images):  # 0..16 ink -> white paper, black ink, 4x nearest
            grey = (255 - image * 255 / 16).astype(np.uint8).repeat(4, 0).repeat(4, 1)
            Image.fromarray(np.stack([grey] * 3, -1)).save(pixels / f"d{i:04d}.png")
    corpus = out / "corpus"
    if not (corpus / "manifest.json").is_file():
        run_pipeline(PseudolabelConfig(source=f"folder:{pixels}", out=str(corpus), labellers=[], image_size=32,
                                       shard_size=2048), progress=False)
    keys = [s["__key__"] for s in CorpusReader(corpus, ["rgb"])]
    index = {k: int(k.rsplit("d", 1)[1][:4]) for k in keys}  # the key ends with the file's stem dNNNN
    (out / "labels.csv").write_text("key,label\n" + "".join(f"{k},{digits.target[i]}\n" for k, i in index.items()))
    # pre-training sees only the first train_n scans (the corpus is in file order: the held-out ones last)
    tokenizers = out / "tokenizers"
    if not (tokenizers / "tok_rgb" / "config.json").is_file():  # eval_samples: the last scans stay unseen
        train_tokenizer("configs/tokenizers/rgb.yaml", str(corpus), tokenizers,
                        ["model.image_size=32", "model.codebook_size=256", "model.decoder_window=8",
                         f"train.steps={args.tokenizer_steps}", "train.eval_every=0", f"eval_samples={HELDOUT}",
                         f"train.save_every={args.tokenizer_steps}", "train.use_tensorboard=false"], progress=False)
    tokens = out / "tokens"
    if not (tokens / "manifest.json").is_file():
        tokenize_corpus(load_config(TokenizeConfig, overrides=[f"corpus={corpus}", f"tokenizers={tokenizers}",
                                                               f"out={tokens}", "modalities=[tok_rgb]",
                                                               "passthrough=[rgb]"]))
    fourm = out / "fourm"
    if not (fourm / "model" / "config.json").is_file():
        run_training(load_config(FourMTrainConfig, overrides=[
            f"data.corpora=[{tokens}]", f"out={fourm}", "model.size=nano", "data.batch_size=32",
            f"data.heldout={HELDOUT}", "masking.input_budget=24", "masking.target_budget=16",
            f"train.steps={args.fourm_steps}", "train.lr=2e-3", "train.warmup_steps=50", "train.eval_every=0",
            f"train.save_every={args.fourm_steps}", "train.log_every=50"]), progress=False)
    scores = {}
    for init in ("pretrained", "random"):
        cfg = load_config(FinetuneConfig, overrides=[
            f"model={fourm / 'model'}", f"tokenizers={tokenizers}", f"corpus={corpus}", "inputs=[rgb]",
            f"labels={out / 'labels.csv'}", "task=classification", f"heldout={HELDOUT}", "regime=frozen",
            f"init={init}", f"out={out / f'probe_{init}'}", f"train.steps={args.probe_steps}", "train.lr=3e-3",
            "train.warmup_steps=10", "train.eval_every=0", "train.save_every=0", "train.use_tensorboard=false"])
        scores[init] = run_finetune(cfg, progress=False)[1]["accuracy"]
    order = np.array([index[k] for k in keys])
    x, y = digits.data[order], digits.target[order]
    logistic = LogisticRegression(max_iter=2000).fit(x[:train_n], y[:train_n]).score(x[train_n:], y[train_n:])
    print(f"digits, {HELDOUT} held-out scans, accuracy: linear probe on the digits-trained FourM "
          f"{scores['pretrained']:.3f}, on a fresh FourM {scores['random']:.3f}, logistic regression on "
          f"pixels {logistic:.3f}")


if __name__ == "__main__":
    main()
