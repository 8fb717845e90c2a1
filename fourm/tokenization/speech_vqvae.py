"""Speech tokenizer: the time-series VQ-VAE over a clip's log-mel spectrogram, mel bins as channels.

Why the 1D patch VQ-VAE (:mod:`fourm.tokenization.series_vqvae`) and not the image family's ViT VQ-VAE:
the image tokenizer takes square inputs only (one ``image_size`` side, a square patch grid with 2D
positions, and the IMAGE kind counts its tokens as a square grid), while 8 s of speech is 400 frames by
64 mel bins. A spectrogram is a sequence of frames; cutting it along time alone keeps every token a
stretch of time (a syllable or two at 8 frames, 160 ms), in time order, which is the TIME_SERIES kind the
model already handles. Its per-patch normalisation keeps tokens local: a sound at the end of a clip
cannot move the tokens of its start.

Corpus values are audio (``int16 (N,)`` at 16 kHz, :mod:`fourm.data.audio`); :meth:`SpeechVQVAE.to_tensor`
turns them into log-mel spectrograms ``(T, n_mels)`` (librosa), and the network, its normalisation (per
mel bin, fitted on training clips) and its loss are the series VQ-VAE's. ``decode`` gives audio back by
Griffin-Lim; :meth:`SpeechVQVAE.decode_spectrograms` the spectrograms (for pictures and for metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fourm.data.audio import MAX_SAMPLES, SAMPLE_RATE, MelSpec, log_mel, mel_to_audio, to_int16
from fourm.pretrained import register_pretrained
from fourm.tokenization.series_vqvae import SeriesVQVAE, SeriesVQVAEConfig


@dataclass
class SpeechVQVAEConfig(SeriesVQVAEConfig):
    """Audio of at most ``max_samples`` at ``sample_rate`` -> log-mel ``(T, n_mels)`` -> ``(T / patch_size) *
    codes_per_patch`` ids. ``num_samples`` (frames) and ``channels`` (mel bins) follow from the mel settings
    and are overwritten with them."""

    modality: str = "tok_speech"
    source: str = "speech"
    sample_rate: int = SAMPLE_RATE
    max_samples: int = MAX_SAMPLES
    n_fft: int = 512
    hop_length: int = 320
    n_mels: int = 64
    griffin_lim_iters: int = 32

    def __post_init__(self):
        if min(self.sample_rate, self.max_samples, self.n_fft, self.hop_length, self.n_mels) < 1:
            raise ValueError("sample_rate, max_samples, n_fft, hop_length and n_mels must be >= 1")
        self.num_samples, self.channels = self.mel.num_frames, self.n_mels
        super().__post_init__()

    @property
    def mel(self) -> MelSpec:
        return MelSpec(self.sample_rate, self.n_fft, self.hop_length, self.n_mels, self.max_samples)


VOICED_DB = 10.0  # a frame whose loudest mel bin is this far above the floor holds sound
_TAIL_FRAMES = 5  # kept after the last voiced frame (100 ms): the fade of the last sound


@register_pretrained("vqvae_speech")
class SpeechVQVAE(SeriesVQVAE):
    """Speech tokenizer (a :class:`~fourm.tokenization.base.ModalityTokenizer`).

    ``encode(audio clips) -> LongTensor (B, L * n)`` (a float tensor ``(B, T, n_mels)`` is taken as
    spectrograms); ``decode(ids) -> list`` of ``int16`` audio; ``decode_spectrograms(ids) -> (B, T, n_mels)``.
    """

    config_class = SpeechVQVAEConfig

    def to_tensor(self, values: Any) -> torch.Tensor:
        """Audio clips (a list of ``(N,)`` arrays, int16 or float) -> log-mel float32 ``(B, T, n_mels)``."""
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().numpy()
        if isinstance(values, np.ndarray) and values.ndim == 1:
            raise ValueError(f"{self.config.modality}: expected a list of clips, got one array (N,): wrap it in a list")
        spec = self.config.mel
        clips = [log_mel(v, spec) for v in values]
        return torch.from_numpy(np.stack(clips) if clips else np.zeros((0, spec.num_frames, spec.n_mels), np.float32))

    def decode_spectrograms(self, ids) -> torch.Tensor:
        """Ids ``(B, L * n)`` -> log-mel spectrograms float32 ``(B, T, n_mels)`` in dB."""
        return self.decode_signals(ids)

    @torch.no_grad()
    def decode(self, ids) -> list[np.ndarray]:
        """Ids -> ``int16`` audio at 16 kHz (Griffin-Lim phases), cut after the last frame with sound: the
        tokens carry no length, and a clip padded with seconds of near-silence is not the clip."""
        c = self.config
        clips = []
        for s in self.decode_spectrograms(ids).cpu().numpy():
            voiced = np.flatnonzero(s.max(-1) > c.mel.floor_db + VOICED_DB)
            end = min(len(s), int(voiced[-1]) + 1 + _TAIL_FRAMES) if len(voiced) else 0
            end = max(end, -(-c.n_fft // c.hop_length))  # a window's worth at least: silence stays short, not empty
            clips.append(to_int16(mel_to_audio(s[:end], c.mel, c.griffin_lim_iters)))
        return clips
