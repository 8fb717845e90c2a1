"""A nano FourM over raw rgb, rgb and depth tokens and captions, with tiny random tokenizers saved the
way `fourm train-tokenizer` saves them: enough to run generation end to end in seconds."""

import pytest
import torch

from fourm.modalities import ModalityScale
from fourm.model.sizes import create_model
from fourm.tokenization.text import SequenceTokenizer, TextConfig, build_vocabulary, new_tokenizer, reserved_tokens
from fourm.tokenization.vqvae import ImageVQConfig, ImageVQVAE

SIDE, PATCH = 32, 8  # 16 tokens per image modality
CODES = {"tok_rgb": ("rgb", 64), "tok_depth": ("depth", 48)}
TEXT_VOCAB, CODES_TEXT = 4608, 8
WORDS = ["a", "red", "blue", "cube", "sphere", "on", "the", "floor", "small", "large"]
MODALITIES = "rgb,tok_rgb,tok_depth,caption"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every generation test on one torch thread (tests/conftest.py says why)."""


def text_tokenizer() -> SequenceTokenizer:
    words = build_vocabulary(WORDS, TEXT_VOCAB, CODES_TEXT, CODES_TEXT)
    vocab = new_tokenizer(words, reserved_tokens(CODES_TEXT, CODES_TEXT))
    return SequenceTokenizer(TextConfig("caption", TEXT_VOCAB, num_mask_codes=CODES_TEXT, num_pose_codes=CODES_TEXT),
                             vocab)


def nano_model(seed: int = 0, **overrides):
    """``overrides``: FourMConfig fields (``encoder_depth=1``, ``use_rotary=True``)."""
    torch.manual_seed(seed)
    vocab = {name: size for name, (_, size) in CODES.items()} | {"caption": TEXT_VOCAB}
    return create_model("nano", MODALITIES, ModalityScale(SIDE, PATCH, vocab_sizes=vocab),
                        max_tokens={"caption": 24}, **overrides).eval()


@pytest.fixture(scope="session")
def tokenizers_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizers")
    torch.manual_seed(0)
    for name, (source, size) in CODES.items():
        ImageVQVAE(ImageVQConfig(modality=name, source=source, image_size=SIDE, patch_size=PATCH, dim=32,
                                 encoder_depth=1, decoder_depth=1, heads=2, codebook_size=size,
                                 codebook_dim=8)).save_pretrained(folder / name)
    text_tokenizer().save_pretrained(folder / "caption")
    return folder


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fourm")
    nano_model().save_pretrained(folder)
    return folder
