"""Text to speech with eSpeak NG, for the scenes' ``speech`` series: a scene's caption, spoken.

The TTS comes from PyPI: ``espeakng-loader`` ships ``libespeak-ng`` and its voice data, and gives their
paths; it has no synthesis API of its own. The Python wrappers on PyPI (``espeakng``, ``py-espeak-ng``)
run the ``espeak-ng`` program, which that package does not ship, so this module calls the library's
own C API (``speak_lib.h``) through ``ctypes``: synchronous synthesis into a callback that collects the
22.05 kHz int16 samples, resampled to 16 kHz (``fourm.data.audio.resample``, soxr).

The library keeps one global state, some of which outlives a call, and seeds its random numbers from
the clock: :class:`Espeak` loads it afresh for each utterance and seeds them, so that a text in a voice
always gives the same samples.

Per scene, :func:`sample_voice` draws a voice (English accents x eSpeak's male and female variants),
a rate and a pitch from the scene's random stream, so a scene always sounds the same and scenes differ.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import numpy as np

from fourm.data.audio import MAX_SAMPLES, SAMPLE_RATE, resample, to_int16

ACCENTS = ("en-us", "en", "en-gb-scotland", "en-029")  # American, British, Scottish, Caribbean English
VARIANTS = ("m1", "m3", "m7", "f1", "f2", "f3", "f4")  # eSpeak's voice variants (timbre, formants)
RATES = (160, 220)  # words per minute (eSpeak's default 175): 160 fits 32 words in fourm.data.audio.MAX_SECONDS
PITCHES = (25, 75)  # eSpeak's 0-100 scale, default 50

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3  # espeak_PARAMETER
_RAND_SEED = 1  # eSpeak's own random numbers (pitch flutter): fixed, so that a text in a voice has one sound
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class Voice:
    """One speaker: ``name`` as eSpeak takes it (``accent+variant``), ``rate`` in words a minute, ``pitch``
    0-100."""

    name: str = "en-us+m3"
    rate: int = 175
    pitch: int = 50


def sample_voice(rng: np.random.Generator) -> Voice:
    """A voice of :data:`ACCENTS` x :data:`VARIANTS`, a rate in :data:`RATES` and a pitch in :data:`PITCHES`."""
    accent, variant = ACCENTS[rng.integers(len(ACCENTS))], VARIANTS[rng.integers(len(VARIANTS))]
    return Voice(f"{accent}+{variant}", int(rng.integers(RATES[0], RATES[1] + 1)),
                 int(rng.integers(PITCHES[0], PITCHES[1] + 1)))


class Espeak:
    """eSpeak NG through its C API, loaded afresh for every utterance, its random numbers seeded.

    A scene must sound the same whatever a process spoke before it and whenever it runs (a corpus is
    rebuilt and compared byte for byte, shards are made by any worker), and measured, eSpeak breaks both:

    * it keeps state in file-level variables that neither ``espeak_Terminate`` nor a new
      ``espeak_Initialize`` resets (the same text in the same voice came out different on every call
      of a process, from a few samples in), so each call ``dlopen``s the library, speaks and
      ``dlclose``s it (~15 ms, a fraction of the synthesis);
    * ``espeak_Initialize`` seeds its random numbers from the clock (the same call a second later
      differed), so each call seeds them with ``espeak_ng_SetRandSeed`` after it.

    A lock serialises callers (the library is one global state).
    """

    _lock = threading.Lock()

    def __init__(self):
        try:
            import espeakng_loader
        except ModuleNotFoundError as e:
            raise ModuleNotFoundError("speech needs eSpeak NG: pip install espeakng-loader") from e
        self.path, self.data = espeakng_loader.get_library_path(), espeakng_loader.get_data_path().encode()
        self.rate = 0  # the library's output rate, known once it has started (22.05 kHz)
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept on self: the library holds only a raw pointer

    def _collect(self, wav, count, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (count,)).copy())
        return 0  # go on

    def _load(self, handle: int) -> ctypes.CDLL:
        lib = ctypes.CDLL(self.path, handle=handle)
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        return lib

    def synth(self, text: str, voice: Voice) -> np.ndarray:
        """``text`` spoken by ``voice``: ``int16`` at the library's rate (:attr:`rate`, 22.05 kHz)."""
        import _ctypes  # dlopen / dlclose: ctypes.CDLL alone never unloads a library

        data = text.encode("utf-8") + b"\0"
        with self._lock:
            handle = _ctypes.dlopen(self.path, ctypes.RTLD_LOCAL)
            try:
                lib = self._load(handle)
                self.rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data, 0)
                if self.rate <= 0:
                    raise OSError(f"eSpeak NG failed to start (espeak_Initialize returned {self.rate})")
                lib.espeak_SetSynthCallback(self._callback)
                lib.espeak_ng_SetRandSeed(_RAND_SEED)  # Initialize seeds it from the clock
                if lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                    raise ValueError(f"eSpeak NG has no voice {voice.name!r}")
                lib.espeak_SetParameter(_RATE, int(voice.rate), 0)
                lib.espeak_SetParameter(_PITCH, int(voice.pitch), 0)
                self._chunks = []
                status = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
                lib.espeak_Terminate()
                if status != 0:
                    raise OSError(f"eSpeak NG could not speak {text[:40]!r} (espeak_Synth returned {status})")
                chunks, self._chunks = self._chunks, []
            finally:
                _ctypes.dlclose(handle)
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


_ENGINE: Espeak | None = None


def engine() -> Espeak:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Espeak()
    return _ENGINE


def speak(text: str, voice: Voice = Voice(), max_samples: int = MAX_SAMPLES) -> np.ndarray:
    """``text`` spoken by ``voice`` as the corpus keeps speech: ``int16 (N,)`` at 16 kHz, N <= ``max_samples``."""
    if not text.strip():
        raise ValueError("speech: nothing to say (empty text)")
    tts = engine()
    audio = resample(tts.synth(text, voice), tts.rate, SAMPLE_RATE)
    return to_int16(audio[:max_samples])
