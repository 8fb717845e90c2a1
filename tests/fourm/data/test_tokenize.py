"""`fourm tokenize` mechanics with a small exact tokenizer written for the test (the real families
have their own tests): alignment with the corpus, copied inputs, resume, refusals."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from fourm.data.corpus import CorpusReader, record_path
from fourm.data.tokenize import TokenizeConfig, tokenize_corpus
from fourm.pretrained import PretrainedMixin, register_pretrained
from fourm.tokenization.base import ModalityTokenizer
from pseudolabel.pipeline import PseudolabelConfig, run_pipeline


@dataclass
class QuadrantConfig:
    modality: str = "tok_semseg"
    source: str = "semseg"


@register_pretrained("test_quadrant_mode")
class QuadrantMode(nn.Module, PretrainedMixin):
    """Most frequent class id in each image quadrant: 4 tokens, vocabulary 6."""

    config_class = QuadrantConfig
    vocab_size, num_tokens = 6, 4

    def __init__(self, config):
        super().__init__()
        self.config, self.modality = config, config.modality
        self.unused = nn.Parameter(torch.zeros(1))  # safetensors wants at least one tensor

    def encode(self, values):
        out = []
        for v in values:
            h, w = v.shape[0] // 2, v.shape[1] // 2
            quads = [v[:h, :w], v[:h, w:], v[h:, :w], v[h:, w:]]
            out.append([np.bincount(q.ravel(), minlength=6).argmax() for q in quads])
        return torch.tensor(out)

    def decode(self, ids):
        return [np.kron(np.asarray(row).reshape(2, 2), np.ones((8, 8), np.uint8)) for row in ids]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    run_pipeline(PseudolabelConfig(source="scenes:12", out=str(out), shard_size=4, labellers=["text_embedding"]),
                 progress=False)
    return out


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizers")
    QuadrantMode(QuadrantConfig()).save_pretrained(folder / "tok_semseg")
    return folder


def test_token_corpus_is_aligned_and_carries_model_inputs(corpus, tokenizers, tmp_path):
    assert isinstance(QuadrantMode(QuadrantConfig()), ModalityTokenizer)
    cfg = TokenizeConfig(corpus=str(corpus), tokenizers=str(tokenizers), out=str(tmp_path / "tok"), batch_size=5)
    manifest = tokenize_corpus(cfg, progress=False)
    assert set(manifest["modalities"]) == {"tok_semseg", "rgb", "t5_caption"} and manifest["complete"]
    assert manifest["modalities"]["tok_semseg"]["vocab_size"] == 6
    raw, tokens = list(CorpusReader(corpus)), list(CorpusReader(cfg.out))
    assert [s["__key__"] for s in raw] == [s["__key__"] for s in tokens]
    for r, t in zip(raw, tokens, strict=True):
        assert t["tok_semseg"].dtype == np.int16
        np.testing.assert_array_equal(t["tok_semseg"], QuadrantMode(QuadrantConfig()).encode([r["semseg"]])[0])
        np.testing.assert_array_equal(t["rgb"], r["rgb"])
        np.testing.assert_array_equal(t["t5_caption"], r["t5_caption"])


def test_resume_redoes_only_unfinished_shards(corpus, tokenizers, tmp_path):
    cfg = TokenizeConfig(corpus=str(corpus), tokenizers=str(tokenizers), out=str(tmp_path / "tok"))
    tokenize_corpus(cfg, progress=False)
    first = {p: p.read_bytes() for p in (tmp_path / "tok").rglob("*.tar")}
    record_path(cfg.out, 1).unlink()
    (tmp_path / "tok" / "tok_semseg" / "shard-000001.tar").write_bytes(b"half a shard")
    mtime = (tmp_path / "tok" / "rgb" / "shard-000000.tar").stat().st_mtime_ns
    tokenize_corpus(cfg, progress=False)
    assert {p: p.read_bytes() for p in (tmp_path / "tok").rglob("*.tar")} == first
    assert (tmp_path / "tok" / "rgb" / "shard-000000.tar").stat().st_mtime_ns == mtime


def test_clear_errors(corpus, tokenizers, tmp_path):
    base = dict(corpus=str(corpus), tokenizers=str(tokenizers), out=str(tmp_path / "t"))
    with pytest.raises(FileNotFoundError, match="has no tokenizer for tok_depth; it has: tok_semseg"):
        tokenize_corpus(TokenizeConfig(**base, modalities=["tok_depth"]), progress=False)
    with pytest.raises(LookupError, match="unknown modality 'tok_dpeth'"):
        tokenize_corpus(TokenizeConfig(**base, modalities=["tok_dpeth"]), progress=False)
    with pytest.raises(ValueError, match="tok_rgb have tokenizers"):
        tokenize_corpus(TokenizeConfig(**base, passthrough=["tok_rgb"]), progress=False)


def test_ranks_split_the_shards_and_the_last_one_completes_the_corpus(corpus, tokenizers, tmp_path):
    base = dict(corpus=str(corpus), tokenizers=str(tokenizers), out=str(tmp_path / "tok"))
    first = tokenize_corpus(TokenizeConfig(**base, rank=1, world_size=2), progress=False)
    assert not first["complete"] and first["num_shards"] == 1  # rank 1 of 2: shard 1 of the corpus' 3
    assert record_path(base["out"], 1).is_file() and not record_path(base["out"], 0).is_file()
    last = tokenize_corpus(TokenizeConfig(**base, rank=0, world_size=2), progress=False)
    assert last["complete"] and last["num_samples"] == 12
    tokenize_corpus(TokenizeConfig(**{**base, "out": str(tmp_path / "one")}), progress=False)
    split, whole = list(CorpusReader(base["out"])), list(CorpusReader(tmp_path / "one"))
    assert [s["__key__"] for s in split] == [s["__key__"] for s in whole]
    assert all(np.array_equal(a["tok_semseg"], b["tok_semseg"]) for a, b in zip(split, whole, strict=True))
    with pytest.raises(ValueError, match="rank 2 is outside world_size 2"):
        TokenizeConfig(**base, rank=2, world_size=2)
