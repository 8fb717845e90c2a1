"""Raw speech, point clouds and IMU series as generation inputs, under the model's names and the corpus'
names alike: each is tokenized by the loaded tokenizer first (the kind handler tells tokens from raw
values), in the pipeline and in `fourm generate`. A nano FourM and tiny untrained tokenizers built here."""

import json

import numpy as np
import pytest
import torch

from fourm.cli import main
from fourm.data.audio import SAMPLE_RATE, write_wav
from fourm.generation import Pipeline
from fourm.modalities import ModalityScale
from fourm.model.sizes import create_model
from fourm.tokenization.point_vqvae import PointVQVAE, PointVQVAEConfig
from fourm.tokenization.series_vqvae import SeriesVQVAE, SeriesVQVAEConfig
from fourm.tokenization.speech_vqvae import SpeechVQVAE, SpeechVQVAEConfig

NAMES = ["tok_speech", "tok_imu", "tok_point_cloud"]
VQ = dict(codebook_size=16, codebook_dim=4, use_kmeans_init=False)


def tiny_tokenizers() -> dict:
    torch.manual_seed(0)
    return {
        # 0.8 s: 40 mel frames, 5 patches of 8 frames x 2 codes = 10 ids
        "tok_speech": SpeechVQVAE(SpeechVQVAEConfig(max_samples=12_800, dim=16, depth=1, **VQ)).eval(),
        "tok_imu": SeriesVQVAE(SeriesVQVAEConfig(dim=16, depth=1, **VQ)).eval(),  # (64, 6): 16 ids
        "tok_point_cloud": PointVQVAE(PointVQVAEConfig(num_points=128, num_groups=8, group_size=16, grid_size=4,
                                                       dim=16, **VQ)).eval(),  # 8 (cell, code) pairs: 16 ids
    }


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    tokenizers = tiny_tokenizers()
    for name, tokenizer in tokenizers.items():
        tokenizer.save_pretrained(root / "tokenizers" / name)
    torch.manual_seed(0)
    scale = ModalityScale(32, 8, vocab_sizes={n: t.vocab_size for n, t in tokenizers.items()})
    create_model("nano", NAMES, scale, max_tokens={n: t.num_tokens for n, t in tokenizers.items()}).save_pretrained(
        root / "model")
    return root / "model", root / "tokenizers"


@pytest.fixture(scope="module")
def pipe(folders):
    return Pipeline.from_pretrained(*folders, precision="fp32")


def clip(seconds: float = 0.6, hz: float = 220.0) -> np.ndarray:
    """A falling chirp as 16 kHz int16 samples, the corpus' speech format."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (8000 * np.sin(2 * np.pi * hz * t * (1 - t / 2))).astype(np.int16)


def raw_values(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    points = np.concatenate([rng.uniform(-1, 1, (200, 3)), rng.integers(0, 255, (200, 3)),
                             rng.integers(0, 6, (200, 1))], axis=1).astype(np.float32)
    return {"tok_speech": clip(), "tok_imu": rng.normal(size=(64, 6)).astype(np.float32), "tok_point_cloud": points}


@pytest.mark.parametrize("name", NAMES)
def test_a_raw_value_under_the_model_name_is_tokenized_by_its_tokenizer(pipe, name):
    value = raw_values()[name]
    expected = pipe.tokenizers[name].encode([value])[0].numpy()
    by_model_name = pipe.tokenize({name: value})[name][0]
    by_corpus_name = pipe.tokenize({pipe.specs[name].source: value})[name][0]
    np.testing.assert_array_equal(by_model_name, expected)
    np.testing.assert_array_equal(by_corpus_name, expected)
    # its tokens, given instead, are kept as they are, under either name
    for key in (name, pipe.specs[name].source):
        np.testing.assert_array_equal(pipe.tokenize({key: expected})[name][0], expected)


def test_a_clip_is_raw_whatever_its_integer_type_and_ids_are_told_apart_by_count(pipe):
    speech = pipe.specs["tok_speech"]
    ids = np.arange(speech.tokens) % speech.vocab_size
    assert pipe.tokenize({"tok_speech": ids})["tok_speech"][0].tolist() == ids.tolist()  # 10 ids: tokens
    as_int64 = clip().astype(np.int64)  # thousands of integers: a clip, which the tokenizer asks to be int16
    with pytest.raises(ValueError, match="int16 or float samples"):
        pipe.tokenize({"tok_speech": as_int64})
    floats = clip().astype(np.float32) / 32768.0  # float samples: the same clip
    np.testing.assert_array_equal(pipe.tokenize({"tok_speech": floats})["tok_speech"][0],
                                  pipe.tokenize({"tok_speech": clip()})["tok_speech"][0])


def test_a_chain_starts_from_a_raw_clip(pipe):
    raw = pipe.generate({"tok_speech": clip()}, ["tok_imu", "tok_point_cloud"], seed=0, steps=2)
    tokens = pipe.tokenizers["tok_speech"].encode([clip()])[0].numpy()
    given = pipe.generate({"tok_speech": tokens}, ["tok_imu", "tok_point_cloud"], seed=0, steps=2)
    for name in ("tok_imu", "tok_point_cloud"):
        assert torch.equal(raw[name].tokens, given[name].tokens)
    assert raw["tok_imu"].values[0].shape == (64, 6) and raw["tok_point_cloud"].values[0].shape == (128, 7)
    back = pipe.generate({"tok_point_cloud": raw["tok_point_cloud"].values[0], "tok_imu": raw_values()["tok_imu"]},
                         ["tok_speech"], seed=0, steps=2)
    assert back["tok_speech"].values[0].dtype == np.int16


def test_cli_reads_a_wav_file_as_the_raw_clip(folders, pipe, tmp_path, capsys):
    model, tokenizers = folders
    wav = write_wav(tmp_path / "said.wav", clip())
    tokens = tmp_path / "said.npy"
    np.save(tokens, pipe.tokenizers["tok_speech"].encode([clip()])[0].numpy())
    made = {}
    for given in (f"tok_speech={wav}", f"speech={wav}", f"tok_speech={tokens}"):
        out = tmp_path / str(len(made))
        code = main(["generate", "--model", str(model), "--tokenizers", str(tokenizers), "--input", given,
                     "--target", "tok_imu", "--out", str(out), "--steps", "2", "--precision", "fp32"])
        assert code == 0, capsys.readouterr().err
        assert np.load(out / "tok_imu.npy").shape == (64, 6)
        made[given] = json.loads((out / "tokens.json").read_text())["tok_imu"]
    assert len({json.dumps(m) for m in made.values()}) == 1, made  # the wav read as the clip its tokens are of
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not audio")
    assert main(["generate", "--model", str(model), "--tokenizers", str(tokenizers), "--input", f"speech={bad}",
                 "--target", "tok_imu", "--out", str(tmp_path / "x")]) != 0
    assert "--input speech: cannot read" in capsys.readouterr().err
