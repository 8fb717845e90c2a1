"""Speech tokenizer: audio -> log-mel -> ids -> spectrogram / audio, save/load, learning, bad input."""

import numpy as np
import pytest
import torch

from fourm.data.audio import log_mel
from fourm.pretrained import load_pretrained
from fourm.tokenization.speech_vqvae import SpeechVQVAE, SpeechVQVAEConfig
from pseudolabel.sources.tts import Voice, speak
from tokenizers_train.speech import evaluate_speech

# 0.8 s clips: 40 frames of 64 mel bins, 5 patches of 8 frames x 2 codes = 10 tokens
TINY = dict(max_samples=12_800, patch_size=8, codes_per_patch=2, dim=32, depth=1, codebook_size=32, codebook_dim=8,
            use_kmeans_init=False)
WORDS = ["red cube", "blue sphere", "green cone", "white cylinder", "small", "large", "left of", "behind"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clips():
    voices = [Voice("en-us+m3", 180, 40), Voice("en+f2", 200, 60)]
    return [speak(w, v) for w in WORDS for v in voices]  # 16 clips


def test_round_trip_shapes_save_load_and_learning(clips, tmp_path):
    torch.manual_seed(0)
    model = SpeechVQVAE(SpeechVQVAEConfig(**TINY))
    x = model.to_tensor(clips)
    assert x.shape == (16, 40, 64) and model.config.channels == 64 and model.num_tokens == 10
    assert torch.equal(x[3], torch.from_numpy(log_mel(clips[3], model.config.mel)))
    model.fit_normalization(x)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = model(x)
        optimiser.zero_grad()
        out.loss.backward()
        optimiser.step()
        losses.append(float(out.recon_loss.detach()))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses  # it learns the spectrograms

    model.eval()
    ids = model.encode(clips[:3])
    assert ids.shape == (3, 10) and int(ids.min()) >= 0 and int(ids.max()) < 32
    spectrograms = model.decode_spectrograms(ids)
    assert spectrograms.shape == (3, 40, 64)
    audio = model.decode(ids[:1])  # Griffin-Lim: int16 at 16 kHz, cut after the last sound
    assert audio[0].dtype == np.int16 and np.abs(audio[0]).max() > 100
    assert 0 < len(audio[0]) <= 12_800 and len(audio[0]) % 320 == 0
    quiet = SpeechVQVAE(SpeechVQVAEConfig(**TINY)).eval()  # a spectrogram of silence: one FFT window (2 frames)
    quiet.fit_normalization(torch.full((2, 40, 64), -50.0))
    quiet.decoder[-1].weight.data.zero_()
    quiet.decoder[-1].bias.data.zero_()
    assert len(quiet.decode(ids[:1])[0]) == 640
    scores = evaluate_speech(model, x)
    assert scores["l1_db_voiced"] > scores["l1_db"] * 0.5 and 0 < scores["usage"] <= 1

    model.save_pretrained(tmp_path / "tok_speech")
    loaded = load_pretrained(tmp_path / "tok_speech")
    assert isinstance(loaded, SpeechVQVAE) and torch.equal(loaded.encode(clips[:3]), ids)
    assert loaded.config.mel == model.config.mel


def test_bad_input_is_one_clear_error(clips):
    model = SpeechVQVAE(SpeechVQVAEConfig(**TINY)).eval()
    with pytest.raises(ValueError, match="expected a list of clips"):
        model.encode(clips[0])
    with pytest.raises(ValueError, match="expected mono samples"):
        model.encode([np.zeros((100, 2), np.float32)])
    with pytest.raises(ValueError, match=r"expected signals \(B, 40, 64\)"):
        model.encode(torch.zeros(1, 30, 64))
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        SpeechVQVAEConfig(**{**TINY, "max_samples": 12_000})
