"""Image tokenizer training: configs load, batches resume exactly, a short run learns and saves."""

from pathlib import Path

import numpy as np
import pytest
import torch

from fourm.config import load_config
from fourm.tokenization.base import load_tokenizers
from fourm.train.curves import read_metrics
from pseudolabel.pipeline import PseudolabelConfig, run_pipeline
from tokenizers_train import image, train_tokenizer

CONFIGS = sorted((Path(__file__).parents[2] / "configs" / "tokenizers").glob("*.yaml"))
IMAGE_CONFIGS = [p for p in CONFIGS if "family: vqvae_image" in p.read_text()]
TINY = ["model.image_size=16", "model.patch_size=4", "model.dim=32", "model.encoder_depth=1",
        "model.decoder_depth=1", "model.heads=2", "model.codebook_size=64", "batch_size=8", "eval_samples=8",
        "train.warmup_steps=2", "train.eval_every=0", "train.save_every=0", "train.log_every=1",
        "train.precision=fp32", "train.lr=3e-3"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("scenes") / "corpus"
    run_pipeline(PseudolabelConfig(source="scenes:40", out=str(out), image_size=16, shard_size=20,
                                   labellers=["canny_edge", "sam_edge"]), progress=False)
    return str(out)


@pytest.mark.parametrize("path", IMAGE_CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load_and_build(path):
    cfg = load_config(image.Config, path)
    parts = {"sam_instance_mask": "sam_instance"}  # serializer parts read another series than their name
    assert cfg.model.modality == cfg.modality and cfg.model.source == parts.get(path.stem, path.stem)
    extra = {"num_classes": 6} if path.stem == "semseg" else {}
    model = image.ImageVQVAE(image.dataclasses.replace(cfg.model, **extra))
    assert model.num_tokens == (cfg.model.image_size // cfg.model.patch_size) ** 2


def test_a_short_run_learns_and_writes_the_tokenizer(corpus, tmp_path):
    rgb = next(p for p in IMAGE_CONFIGS if p.stem == "rgb")
    model = train_tokenizer(rgb, corpus, tmp_path, [*TINY, "train.steps=40"], progress=False)
    rows = read_metrics(tmp_path / "runs" / "tok_rgb" / "metrics.jsonl")
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 40 and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    scores = next(r for r in rows if "eval/psnr" in r)
    assert scores["eval/psnr"] > 10 and 0 < scores["eval/usage"] <= 1 and scores["eval/perplexity"] >= 1
    loaded = load_tokenizers(tmp_path, ["tok_rgb"])["tok_rgb"]  # out/<modality>, ready for the model
    values = np.zeros((2, 16, 16, 3), np.uint8)
    assert torch.equal(loaded.encode(values), model.encode(values))


@pytest.mark.parametrize("modality", ["tok_semseg", "tok_normal", "tok_depth", "tok_sam_edge"])
def test_every_image_modality_trains(corpus, tmp_path, modality):
    overrides = [*TINY, "train.steps=2", "model.quantizer=fsq", "model.fsq_levels=[4,4]"]
    cfg = load_config(image.Config, None, overrides, corpus=corpus, modality=modality)
    model = image.run(cfg, tmp_path, progress=False)
    assert (tmp_path / modality / "config.json").is_file() and model.vocab_size == 16
    if modality == "tok_semseg":  # class count and names come from the corpus manifest
        assert model.config.num_classes == 6 and model.class_names[2] == "sphere"


def test_batches_are_deterministic_and_flips_follow_the_codec(corpus):
    cfg = load_config(image.Config, None, [*TINY, "use_hflip=true"], corpus=corpus, modality="tok_normal")
    task, _ = image.prepare(cfg)
    batches = task.train_batches(0, 0, 1)
    first = [next(batches) for _ in range(3)]
    resumed = next(task.train_batches(2, 0, 1))
    assert torch.equal(first[2], resumed)  # a resumed run sees the same batch
    plain = image.ImageTokenizerTask(image.Config(**{**cfg.__dict__, "use_hflip": False}), task.train_values,
                                     task.eval_values)
    unflipped = next(plain.train_batches(0, 0, 1))
    flipped = [i for i in range(len(unflipped)) if not torch.equal(first[0][i], unflipped[i])]
    assert flipped, "some samples of a batch are mirrored"
    for i in flipped:  # mirrored normals point the other way along x
        assert torch.equal(first[0][i, 0], -unflipped[i, 0].flip(-1))
        assert torch.equal(first[0][i, 1:], unflipped[i, 1:].flip(-1))


def test_config_errors():
    with pytest.raises(ValueError, match="use_hflip is not valid"):
        image.ImageTokenizerTask(image.Config(modality="tok_clip", use_hflip=True), np.zeros(1), np.zeros(1))
    with pytest.raises(ValueError, match="config key 'hflip' was renamed: use 'use_hflip'"):  # a user's old YAML
        load_config(image.Config, None, ["hflip=false"])
    with pytest.raises(ValueError, match="config key 'model.kmeans_init' was renamed: use 'model.use_kmeans_init'"):
        load_config(image.Config, None, ["model.kmeans_init=true"])
    with pytest.raises(ValueError, match="no corpus"):
        image.run(image.Config(), Path("/nonexistent"))


def test_the_mask_part_learns_and_the_wordpiece_family_picks_it_up(corpus, tmp_path):
    from fourm.tokenization.coders import VQVAEMaskCoder
    from tokenizers_train.text import instance_ious

    configs = Path(__file__).parents[2] / "configs" / "tokenizers"
    tiny = [o for o in TINY if not o.startswith("model.image_size")] + [
        "model.image_size=8", "model.decoder_window=8", "eval_samples=8", "train.steps=150", "train.lr=1e-2"]
    train_tokenizer(configs / "sam_instance_mask.yaml", corpus, tmp_path, tiny, progress=False)
    assert (tmp_path / "parts" / "sam_instance_mask" / "config.json").is_file()  # a part, not a modality
    rows = read_metrics(tmp_path / "runs" / "sam_instance_mask" / "metrics.jsonl")
    assert next(r for r in rows if "eval/iou" in r)["eval/iou"] > 0.85  # held-out crops, 8x8 pixels

    stats = train_tokenizer(configs / "text.yaml", corpus, tmp_path, ["min_frequency=1"], progress=False)
    assert stats["mask_coder"] == "vqvae" and stats["pose_coder"] == "grid"  # auto: what parts/ holds
    assert (tmp_path / "sam_instance" / "mask_coder").is_dir() and not (tmp_path / "caption" / "mask_coder").exists()
    tok = load_tokenizers(tmp_path, ["sam_instance"])["sam_instance"]
    assert isinstance(tok.mask_coder, VQVAEMaskCoder) and tok.mask_coder.num_tokens == 4
    maps, _, _ = image.load_series(corpus, "sam_instance", 8)
    ious = [iou for m, d in zip(maps, tok.decode(tok.encode(maps)), strict=True) for iou in instance_ious(m, d)]
    assert np.mean(ious) > 0.8 and stats["sam_instance"]["mean_iou"] > 0.8


@pytest.fixture(scope="module")
def band_corpus(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("bands") / "corpus"
    run_pipeline(PseudolabelConfig(source="scenes:24", out=str(out), image_size=16, shard_size=12, labellers=[],
                                   series=["xray", "thermal", "hyperspectral"]), progress=False)
    return str(out)


@pytest.mark.parametrize("name", ["xray", "thermal", "hyperspectral"])
def test_the_band_tokenizers_train_from_their_shipped_configs(band_corpus, tmp_path, name):
    path = next(p for p in IMAGE_CONFIGS if p.stem == name)
    model = train_tokenizer(path, band_corpus, tmp_path, [*TINY, "train.steps=3", "train.eval_every=3"],
                            progress=False)
    rows = read_metrics(tmp_path / "runs" / f"tok_{name}" / "metrics.jsonl")
    scores = next(r for r in rows if "eval/usage" in r)
    assert 0 < scores["eval/usage"] <= 1
    assert ("eval/spectral_angle" if name == "hyperspectral" else "eval/rel_error") in scores
    if name == "hyperspectral":  # the band count comes from the corpus
        assert model.config.channels == 32 and model.codec.in_channels == 32
