"""Speech as the corpus keeps it and as its tokenizer sees it: 16 kHz mono audio and its log-mel spectrogram.

* Corpus value (series ``speech``): ``int16 (N,)`` samples at :data:`SAMPLE_RATE`, at most
  :data:`MAX_SECONDS` long. A clip is stored at its true length (no padding on disk: the array's length
  *is* the recorded length, so nothing can disagree with it); :func:`pad` brings it to the fixed length
  a tokenizer needs, trimming a longer one.
* Features: :func:`log_mel`, ``float32 (T, n_mels)`` in dB, frames in time order (the ``(T, C)`` layout
  of the time-series tokenizer: mel bins are its channels). ``librosa`` computes the mel filterbank and
  the dB scale; its floor (``amin``) is fixed, not relative to each clip's peak, so silence (and padding)
  reads the same value in every clip.
* Back to sound: :func:`mel_to_audio` inverts the mel filterbank and estimates the phase by Griffin-Lim
  (``librosa.feature.inverse.mel_to_audio``): intelligible, metallic, enough to listen to a decoded clip.

``librosa`` and ``soundfile`` are imported inside the functions that need them: importing this module
costs nothing for the code that only passes arrays around (the corpus reader, the renderers' registry).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
MAX_SECONDS = 8.0  # the longest scene caption (32 words) at the slowest scene voice takes ~7.7 s
MAX_SAMPLES = int(SAMPLE_RATE * MAX_SECONDS)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")  # what read_audio reads: the audio source, `fourm generate`


@dataclass(frozen=True)
class MelSpec:
    """Log-mel settings: 32 ms windows every 20 ms (50 frames a second, 400 for 8 s), 64 mel bins up to 8 kHz."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 512
    hop_length: int = 320
    n_mels: int = 64
    max_samples: int = MAX_SAMPLES
    amin: float = 1e-5  # power floor: -50 dB, the value of silence

    @property
    def num_frames(self) -> int:
        """Frames of a padded clip (librosa's centred STFT adds one; it is dropped to keep a round count)."""
        return self.max_samples // self.hop_length

    @property
    def floor_db(self) -> float:
        return float(10 * np.log10(self.amin))


def to_float(audio) -> np.ndarray:
    """Samples (int16 or float) -> ``float32 (N,)`` in [-1, 1]; a clear error on anything else."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"speech: expected mono samples (N,), got shape {audio.shape}")
    if audio.dtype == np.int16:
        return audio.astype(np.float32) / 32768.0
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"speech: expected int16 or float samples, got {audio.dtype}")
    audio = audio.astype(np.float32)
    if not np.isfinite(audio).all():
        raise ValueError("speech: samples hold NaN or infinite values")
    return audio


def to_int16(audio) -> np.ndarray:
    """Float samples in [-1, 1] -> ``int16`` (clipped), the corpus form. The scale is :func:`to_float`'s
    (32768, as soundfile's), so that int16 -> float -> int16 gives every sample back."""
    return np.clip(np.rint(np.asarray(audio, np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def pad(audio, length: int = MAX_SAMPLES) -> np.ndarray:
    """``float32 (length,)``: the clip zero-padded at its end or trimmed to ``length``."""
    audio = to_float(audio)[:length]
    return np.pad(audio, (0, length - len(audio)))


def log_mel(audio, spec: MelSpec = MelSpec()) -> np.ndarray:
    """One clip -> ``float32 (spec.num_frames, spec.n_mels)``, dB, padded to ``spec.max_samples`` first."""
    import librosa

    mel = librosa.feature.melspectrogram(y=pad(audio, spec.max_samples), sr=spec.sample_rate, n_fft=spec.n_fft,
                                         hop_length=spec.hop_length, n_mels=spec.n_mels, power=2.0)
    db = librosa.power_to_db(mel, ref=1.0, amin=spec.amin, top_db=None)  # (n_mels, frames + 1)
    return np.ascontiguousarray(db[:, : spec.num_frames].T, dtype=np.float32)


def mel_to_audio(features, spec: MelSpec = MelSpec(), n_iter: int = 32) -> np.ndarray:
    """A log-mel spectrogram ``(T, n_mels)`` in dB -> ``float32`` audio ``(T * hop,)`` by Griffin-Lim."""
    import librosa

    features = np.asarray(features, np.float32)
    if features.ndim != 2 or features.shape[1] != spec.n_mels:
        raise ValueError(f"speech: expected a log-mel spectrogram (T, {spec.n_mels}), got shape {features.shape}")
    # the centred STFT of T * hop samples has T + 1 frames (log_mel dropped the last): repeat the last one
    features = np.concatenate([features, features[-1:]])
    power = librosa.db_to_power(np.maximum(features.T, spec.floor_db))
    audio = librosa.feature.inverse.mel_to_audio(power, sr=spec.sample_rate, n_fft=spec.n_fft,
                                                 hop_length=spec.hop_length, power=2.0, n_iter=n_iter,
                                                 length=(len(features) - 1) * spec.hop_length)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def resample(audio, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Float samples at ``rate`` Hz -> ``target`` Hz with soxr's high-quality resampler (librosa's default
    one, called directly: librosa's lazy submodules cost seconds on a first call, soxr nothing)."""
    audio = to_float(audio)
    if rate == target:
        return audio
    import soxr

    return soxr.resample(audio, rate, target, quality="HQ").astype(np.float32)


def read_audio(path: str | Path, max_samples: int | None = MAX_SAMPLES) -> np.ndarray:
    """A wav / flac / ogg file -> ``int16`` mono at :data:`SAMPLE_RATE` (channels averaged), trimmed to
    ``max_samples``. Raises ``ValueError`` on an empty file, ``soundfile``'s errors on an unreadable one."""
    import soundfile

    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (N, channels)
    if data.size == 0:
        raise ValueError(f"{Path(path).name}: no audio samples")
    audio = resample(data.mean(axis=1), rate)
    return to_int16(audio[:max_samples] if max_samples else audio)


def write_wav(path: str | Path, audio, rate: int = SAMPLE_RATE) -> Path:
    """Samples (int16 or float) -> a 16-bit PCM wav file."""
    import soundfile

    path = Path(path)
    soundfile.write(str(path), to_int16(to_float(audio)), rate, subtype="PCM_16")
    return path
