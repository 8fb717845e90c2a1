"""A tiny run for `fourm serve`: a nano FourM over rgb pixels, rgb and depth tokens, captions and caption
vectors, tiny random tokenizers saved as `fourm train-tokenizer` saves them, six scenes written as a corpus,
and an index of the model's predictions over them. Built in seconds; shared by the request tests and the
browser test (which serves it from another process)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from fourm.data.corpus import storage_entry, write_manifest, write_shard
from fourm.modalities import CORPUS, ModalityScale
from fourm.model.sizes import create_model
from fourm.retrieval.index import build_index
from fourm.tokenization.mlp_vqvae import VectorVQVAE, VectorVQVAEConfig
from fourm.tokenization.text import SequenceTokenizer, TextConfig, build_vocabulary, new_tokenizer, reserved_tokens
from fourm.tokenization.vqvae import ImageVQConfig, ImageVQVAE

SIDE, PATCH = 32, 8  # 16 tokens per image modality
CODES = {"tok_rgb": ("rgb", 64), "tok_depth": ("depth", 48)}
TEXT_VOCAB, CODES_TEXT = 4608, 8
WORDS = ["a", "red", "blue", "cube", "sphere", "on", "the", "floor", "small", "large"]
MODALITIES = "rgb,tok_rgb,tok_depth,caption,tok_caption_global"
GLOBAL = dict(input_dim=384, num_tokens=4, dim=32, depth=1, mlp_ratio=2, quantizer="fsq", levels=[4, 4])
CAPTIONS = ["a red cube", "a blue sphere", "a small red sphere", "a large blue cube", "a cube on the floor",
            "a small sphere"]


def build_run(root: Path) -> dict[str, Path]:
    """model/, tokenizers/, corpus/ and index/ under ``root``."""
    torch.manual_seed(0)
    paths = {name: root / name for name in ("model", "tokenizers", "corpus", "index")}
    for name, (source, size) in CODES.items():
        ImageVQVAE(ImageVQConfig(modality=name, source=source, image_size=SIDE, patch_size=PATCH, dim=32,
                                 encoder_depth=1, decoder_depth=1, heads=2, codebook_size=size,
                                 codebook_dim=8)).save_pretrained(paths["tokenizers"] / name)
    words = build_vocabulary(WORDS, TEXT_VOCAB, CODES_TEXT, CODES_TEXT)
    SequenceTokenizer(TextConfig("caption", TEXT_VOCAB, num_mask_codes=CODES_TEXT, num_pose_codes=CODES_TEXT),
                      new_tokenizer(words, reserved_tokens(CODES_TEXT, CODES_TEXT))).save_pretrained(
        paths["tokenizers"] / "caption")
    vectors = VectorVQVAE(VectorVQVAEConfig(**GLOBAL))
    vectors.fit_normalization(torch.randn(64, 384))
    vectors.save_pretrained(paths["tokenizers"] / "tok_caption_global")
    vocab = {name: size for name, (_, size) in CODES.items()} | {"caption": TEXT_VOCAB, "tok_caption_global": 16}
    create_model("nano", MODALITIES, ModalityScale(SIDE, PATCH, vocab_sizes=vocab),
                 max_tokens={"caption": 24, "tok_caption_global": 4}).eval().save_pretrained(paths["model"])
    rng = np.random.default_rng(0)
    scenes = [{"__key__": f"scene-{i:04d}", "rgb": rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8),
               "caption": caption} for i, caption in enumerate(CAPTIONS)]
    series = ("rgb", "caption")
    write_shard(paths["corpus"], 0, scenes, {k: CORPUS[k].storage for k in series})
    write_manifest(paths["corpus"], {"modalities": {k: storage_entry(CORPUS[k].storage) for k in series}})
    build_index(paths["corpus"], "tok_caption_global", from_="model", inputs=["rgb"], model=paths["model"],
                tokenizers=paths["tokenizers"], progress=False).save(paths["index"])
    return paths


@pytest.fixture(scope="session")
def serve_run(tmp_path_factory):
    return build_run(tmp_path_factory.mktemp("serve-run"))
