"""MLP VQ-VAE training: configs load, metrics, a short run on a corpus learns and saves, poses."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from fourm.config import load_config
from fourm.data.corpus import storage_entry, write_manifest, write_shard
from fourm.modalities import CORPUS
from fourm.tokenization.base import load_tokenizers
from fourm.tokenization.mlp_vqvae import VectorVQVAE
from fourm.train.curves import read_metrics
from tokenizers_train import family, train_tokenizer, vector

CONFIGS = sorted((Path(__file__).parents[2] / "configs" / "tokenizers").glob("*.yaml"))
VECTOR_CONFIGS = [p for p in CONFIGS if "family: vqvae_mlp" in p.read_text()]
TINY = ["model.dim=32", "model.depth=1", "model.mlp_ratio=2", "batch_size=32", "eval_samples=40",
        "train.warmup_steps=5", "train.eval_every=0", "train.save_every=0", "train.log_every=1",
        "train.precision=fp32", "train.lr=3e-3"]


pytestmark = pytest.mark.usefixtures("one_thread")


def write_corpus(root: Path, series: dict[str, list]) -> str:
    """A one-shard corpus holding ``series`` (name -> values), as `fourm pseudolabel` writes it."""
    n = len(next(iter(series.values())))
    samples = [{"__key__": f"s{i:04d}", **{k: v[i] for k, v in series.items()}} for i in range(n)]
    write_shard(root, 0, samples, {k: CORPUS[k].storage for k in series})
    write_manifest(root, {"modalities": {k: storage_entry(CORPUS[k].storage) for k in series}})
    return str(root)


def caption_vectors(n: int, dim: int = 384) -> list[np.ndarray]:
    """Unit float16 vectors on a smooth 3-d manifold: each one distinct, all learnable by a small MLP."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (n, 3)) @ rng.standard_normal((3, dim)) + 0.5 * rng.standard_normal(dim)
    return list((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16))


@pytest.mark.parametrize("path", VECTOR_CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load_and_build(path):
    cfg = load_config(vector.Config, path)
    assert cfg.model.modality == cfg.modality
    model = VectorVQVAE(dataclasses.replace(cfg.model, dim=16, depth=1))  # full-scale widths take seconds
    assert model(torch.randn(2, cfg.model.input_dim)).ids.shape == (2, cfg.model.num_tokens)


def test_metrics_on_hand_made_examples():
    stats = family.code_stats(torch.tensor([[0, 0], [1, 1]]), vocab_size=4)
    assert stats["usage"] == 0.5 and stats["perplexity"] == pytest.approx(2.0)
    originals = torch.eye(3)[[0, 1, 2, 2]]  # the last two are one vector twice
    recon = torch.tensor([[1.0, 0.1, 0], [0.9, 1.0, 0], [0.0, 0.0, 1.0], [0.8, 0.0, 0.1]])
    assert vector.recall_at_1(recon, originals) == 0.75  # rows 0-2 hit (row 2 finds its twin), row 3 misses


def test_a_short_run_learns_and_writes_the_tokenizer(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", {"caption_global": caption_vectors(400)})
    config = next(p for p in VECTOR_CONFIGS if p.stem == "caption_global")
    out = tmp_path / "tokenizers"
    model = train_tokenizer(config, corpus, out, [*TINY, "train.steps=40"], progress=False)
    rows = read_metrics(out / "runs" / "tok_caption_global" / "metrics.jsonl")
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 40 and np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    scores = next(r for r in rows if "eval/cos" in r)
    assert scores["eval/cos"] > 0.9 and scores["eval/recall@1"] > 0.5
    assert 0 < scores["eval/usage"] <= 1 and scores["eval/perplexity"] > 1
    loaded = load_tokenizers(out)["tok_caption_global"]  # out/<modality>, and nothing else in out
    values = caption_vectors(400)[-3:]
    assert torch.equal(loaded.encode(values), model.encode(values))


def test_pose_run_needs_people(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", {"human_poses": [[] for _ in range(30)]})
    config = next(p for p in VECTOR_CONFIGS if p.stem == "pose")
    with pytest.raises(ValueError, match="no people in human_poses"):
        train_tokenizer(config, corpus, tmp_path / "out", TINY, progress=False)


def test_pose_tokenizer_round_trips_a_skeleton_after_a_short_run(tmp_path):
    people = vector.synthetic_people(600, seed=0)
    samples = [people[i:i + 2] for i in range(0, 600, 2)]  # two people per image
    corpus = write_corpus(tmp_path / "corpus", {"human_poses": samples})
    config = next(p for p in VECTOR_CONFIGS if p.stem == "pose")
    out = tmp_path / "tokenizers"
    model = train_tokenizer(config, corpus, out, [*TINY, "model.dim=64", "batch_size=64", "train.steps=80",
                                                  "train.lr=1e-2"], progress=False)
    assert vector.tokenizer_dir(out, "pose_vqvae") == out / "parts" / "pose_vqvae"
    loaded = VectorVQVAE.from_pretrained(out / "parts" / "pose_vqvae")
    person = vector.synthetic_people(1, seed=99)[0]  # an unseen skeleton
    keypoints = loaded.decode(loaded.encode([person]), boxes=[person["box"]])[0]
    err = np.linalg.norm(np.array(keypoints)[:, :2] - np.array(person["keypoints"])[:, :2], axis=1)
    height = person["box"][3] - person["box"][1]
    assert err.mean() < 0.12 * height, f"mean keypoint error {err.mean():.4f} for a person {height:.2f} tall"
    assert torch.equal(loaded.encode([person]), model.encode([person]))

    # the wordpiece family finds it in parts/ and the human_poses tokenizer writes its codes
    text = Path(__file__).parents[2] / "configs" / "tokenizers" / "text.yaml"
    stats = train_tokenizer(text, corpus, out, ["min_frequency=1"], progress=False)
    assert stats["pose_coder"] == "vqvae" and stats["mask_coder"] == "grid"
    poses = load_tokenizers(out)["human_poses"]
    (row,) = poses.encode([[person]])
    assert len(row) == 4 + 8 + 1 and poses.id_to_token(row[4]).startswith("pose=")
    (back,) = poses.decode([row])[0]
    err = np.linalg.norm(np.array(back["keypoints"])[:, :2] - np.array(person["keypoints"])[:, :2], axis=1)
    assert err.mean() < 0.12 * height
