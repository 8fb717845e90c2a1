"""Mask and pose codes of the sequence serializers: the trained VQ-VAEs against the grid fallbacks.

    python benchmarks/sequence_coders.py --tokenizers DIR --eval-corpus DIR [--train-poses 20000]

Masks: every instance of the held-out corpus's ``sam_instance`` id maps goes through the
``sam_instance`` serializer (id map -> box + mask codes -> id map) with each coder: the grid fallback
and ``DIR/parts/sam_instance_mask`` (``configs/tokenizers/sam_instance_mask.yaml``). Scored per
instance: IoU with the best-matching decoded instance (:func:`tokenizers_train.text.instance_ious`),
mean, 5th percentile and minimum; tokens per instance; instances/s of encode + decode.

Poses: the scenes have no people, so these are synthetic stick figures
(:func:`tokenizers_train.vector.synthetic_people`, seed 12345, unseen in training) through the
``human_poses`` serializer, one person per sample, with the grid fallback and ``DIR/parts/pose_vqvae``
(with ``--train-poses N``, ``configs/tokenizers/pose.yaml`` is first trained on N synthetic people
into that folder when it is missing). Scored: mean keypoint distance in box units (all keypoints,
and the visible ones), mean absolute visibility error, tokens per person.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def mask_rows(tokenizers: Path, eval_corpus: str, limit: int) -> list[dict]:
    from fourm.data.corpus import CorpusReader
    from fourm.tokenization.coders import GridMaskCoder, VQVAEMaskCoder
    from fourm.tokenization.serializers import get_serializer
    from tokenizers_train.text import instance_ious

    reader = CorpusReader(eval_corpus, ["sam_instance"])
    maps = [s["sam_instance"] for _, s in zip(range(limit), reader, strict=False)]
    coders = {"grid": GridMaskCoder()}
    part = tokenizers / "parts" / VQVAEMaskCoder.part
    if (part / "config.json").is_file():
        coders["vqvae"] = VQVAEMaskCoder.from_pretrained(part)
    rows = []
    for name, coder in coders.items():
        ser = get_serializer("sam_instance", mask_coder=coder, image_size=maps[0].shape[0])
        start = time.perf_counter()
        decoded = [ser.from_tokens(ser.to_tokens(m)) for m in maps]
        seconds = time.perf_counter() - start
        ious = np.array([iou for m, d in zip(maps, decoded, strict=True) for iou in instance_ious(m, d)])
        rows.append({"coder": name, "instances": len(ious), "mean_iou": round(float(ious.mean()), 4),
                     "p5_iou": round(float(np.percentile(ious, 5)), 4), "min_iou": round(float(ious.min()), 4),
                     "tokens": 4 + coder.num_tokens, "instances_per_s": round(len(ious) / seconds, 1)})
    return rows


def pose_rows(tokenizers: Path, num_people: int, train_people: int) -> list[dict]:
    from fourm.tokenization.coders import GridPoseCoder, VQVAEPoseCoder
    from fourm.tokenization.serializers import get_serializer
    from tokenizers_train.vector import synthetic_people

    part = tokenizers / "parts" / VQVAEPoseCoder.part
    if not (part / "config.json").is_file() and train_people:
        train_pose_tokenizer(tokenizers, train_people)
    coders = {"grid": GridPoseCoder()}
    if (part / "config.json").is_file():
        coders["vqvae"] = VQVAEPoseCoder.from_pretrained(part)
    people = synthetic_people(num_people, seed=12345)
    rows = []
    for name, coder in coders.items():
        ser = get_serializer("human_poses", pose_coder=coder)
        dist, dist_visible, vis_err = [], [], []
        for person in people:
            back = ser.from_tokens(ser.to_tokens([person]))[0]
            x0, y0, x1, y1 = person["box"]
            side = np.maximum([x1 - x0, y1 - y0], 1e-3)
            true, got = np.asarray(person["keypoints"]), np.asarray(back["keypoints"])
            d = np.linalg.norm((got[:, :2] - true[:, :2]) / side, axis=1)
            dist.append(d.mean())
            dist_visible.append(d[true[:, 2] >= 0.5].mean())
            vis_err.append(np.abs(got[:, 2] - true[:, 2]).mean())
        rows.append({"coder": name, "people": len(people), "kp_err": round(float(np.mean(dist)), 4),
                     "kp_err_visible": round(float(np.mean(dist_visible)), 4),
                     "vis_mae": round(float(np.mean(vis_err)), 4), "tokens": 4 + coder.num_tokens})
    return rows


def train_pose_tokenizer(tokenizers: Path, n: int) -> None:
    """configs/tokenizers/pose.yaml trained on ``n`` synthetic people (a fifth held out) into DIR/parts/pose_vqvae."""
    from fourm.config import load_config
    from fourm.tokenization.mlp_vqvae import values_to_vectors
    from tokenizers_train.data import tokenizer_dir
    from tokenizers_train.vector import Config, fit_tokenizer, synthetic_people

    cfg = load_config(Config, REPO / "configs" / "tokenizers" / "pose.yaml", [])
    x = values_to_vectors(synthetic_people(n, seed=0), cfg.model)
    held = n // 5
    model, metrics = fit_tokenizer(cfg, x[:-held], x[-held:], tokenizers / "runs" / cfg.modality, progress=True)
    print("pose VQ-VAE held-out:", {k: round(v, 4) for k, v in metrics.items()})
    model.save_pretrained(tokenizer_dir(tokenizers, cfg.modality))


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = [" | ".join(keys)] + [" | ".join(str(r[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizers", required=True, help="folder with parts/sam_instance_mask and parts/pose_vqvae")
    p.add_argument("--eval-corpus", required=True, help="held-out corpus with sam_instance (another seed)")
    p.add_argument("--limit", type=int, default=512, help="held-out scenes")
    p.add_argument("--people", type=int, default=1000, help="synthetic people scored")
    p.add_argument("--train-poses", type=int, default=0, help="train the pose VQ-VAE on this many synthetic people "
                   "when DIR/parts/pose_vqvae is missing")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    tokenizers = Path(args.tokenizers)
    print("masks (held-out scenes):\n" + table(mask_rows(tokenizers, args.eval_corpus, args.limit)))
    print("poses (synthetic people, no real ones in scenes):\n"
          + table(pose_rows(tokenizers, args.people, args.train_poses)))


if __name__ == "__main__":
    main()
