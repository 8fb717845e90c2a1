"""Speech: eSpeak NG speaking scene captions, the audio:PATH source on files the test writes, and the
log-mel features the tokenizer reads."""

import time

import numpy as np
import pytest
import soundfile

from fourm.data.audio import MAX_SAMPLES, SAMPLE_RATE, MelSpec, log_mel, mel_to_audio, read_audio
from pseudolabel.sources.base import Skipped, parse_source
from pseudolabel.sources.scenes import render_scene
from pseudolabel.sources.tts import Voice, speak

CAPTION = "a large blue cube to the right of a large white cylinder on a plain floor."


def rms(audio):
    return float(np.sqrt(np.mean((audio.astype(np.float64) / 32768) ** 2)))


def test_tts_speaks_a_caption_in_the_voice_asked():
    low, high = speak(CAPTION, Voice("en-us+m3", 160, 30)), speak(CAPTION, Voice("en+f3", 220, 70))
    assert low.dtype == np.int16 and high.dtype == np.int16
    for audio in (low, high):  # 15 words: seconds of sound, not silence, not a click
        assert 2.0 < len(audio) / SAMPLE_RATE < 6.0 and rms(audio) > 0.02
    assert len(high) < 0.85 * len(low)  # the faster rate says it in less time
    # the higher pitch and the female variant move the sound up the mel scale: the centre of the mean
    # spectrum (dB above the floor, bins 0-63) is 23.3 for the low voice, 26.2 for the high one
    spectra = [log_mel(a).mean(0) - MelSpec().floor_db for a in (low, high)]
    centre = [float((np.arange(64) * s).sum() / s.sum()) for s in spectra]
    assert centre[1] > centre[0] + 1.5, centre
    # the same samples after another voice spoke, and a second later (eSpeak seeds itself from the clock)
    time.sleep(1.1)
    assert np.array_equal(low, speak(CAPTION, Voice("en-us+m3", 160, 30)))
    with pytest.raises(ValueError, match="nothing to say"):
        speak("  ")
    with pytest.raises(ValueError, match="no voice 'xx-nowhere'"):
        speak(CAPTION, Voice("xx-nowhere"))


def test_scenes_speak_their_caption_each_in_its_own_voice():
    a, b = render_scene(3, 16, ("speech",)), render_scene(4, 16, ("speech",))
    assert np.array_equal(a["speech"], render_scene(3, 16, ("speech",))["speech"])  # the scene's voice, always
    words = len(a["caption"].split())
    assert 0.1 * words < len(a["speech"]) / SAMPLE_RATE <= MAX_SAMPLES / SAMPLE_RATE and rms(a["speech"]) > 0.02
    assert not np.array_equal(a["speech"][:16000], b["speech"][:16000])


def test_log_mel_shape_floor_and_pitch():
    spec = MelSpec()
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE  # one second of 1 kHz, then padding to 8 s
    features = log_mel((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), spec)
    assert features.shape == (400, 64) and features.dtype == np.float32
    assert np.allclose(features[60:], spec.floor_db, atol=1e-3)  # padding reads the fixed floor
    import librosa

    centres = librosa.mel_frequencies(n_mels=64 + 2, fmax=SAMPLE_RATE / 2)[1:-1]
    assert abs(centres[features[10:40].mean(0).argmax()] - 1000) < 100
    audio = mel_to_audio(features[:50], spec)  # Griffin-Lim gives the tone back
    peak = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)[np.abs(np.fft.rfft(audio)).argmax()]
    assert len(audio) == 50 * spec.hop_length and abs(peak - 1000) < 60
    with pytest.raises(ValueError, match="expected mono samples"):
        log_mel(np.zeros((10, 2), np.float32))


def test_audio_folder_with_transcripts(tmp_path):
    t = np.arange(22050) / 44100  # half a second of 440 Hz at 44.1 kHz, stereo
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    soundfile.write(tmp_path / "a.wav", np.stack([tone, tone], 1), 44100)
    (tmp_path / "a.txt").write_text("hello\n  world\n")
    (tmp_path / "sub").mkdir()
    soundfile.write(tmp_path / "sub" / "b.flac", tone[:4410], 44100)  # no transcript
    (tmp_path / "sub" / "c.wav").write_bytes(b"RIFF not really a wave")

    audio = read_audio(tmp_path / "a.wav")
    assert audio.dtype == np.int16 and abs(len(audio) - SAMPLE_RATE // 2) <= 2
    peak = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)[np.abs(np.fft.rfft(audio)).argmax()]
    assert abs(peak - 440) < 3 and abs(rms(audio) - 0.3 / np.sqrt(2)) < 0.01

    source = parse_source(f"audio:{tmp_path}")  # not every file has a transcript: no captions
    assert source.provides == ("speech",)
    items = list(source.shard(0, 8))
    assert [type(i).__name__ for i in items] == ["dict", "dict", "Skipped"] and "unreadable" in items[2].reason
    assert set(items[0]) == {"__key__", "speech"} and len(items[1]["speech"]) == 1600

    source = parse_source(f"audio:{tmp_path}", transcripts=True)
    assert source.provides == ("speech", "caption")
    first, second = list(source.shard(0, 8))[:2]
    assert first["caption"] == "hello world" and np.array_equal(first["speech"], audio)
    assert isinstance(second, Skipped) and "no transcript b.txt" in second.reason
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_source(f"audio:{tmp_path / 'nowhere'}")


def test_audio_folder_becomes_a_corpus_of_speech_and_captions(tmp_path):
    from fourm.data.corpus import CorpusReader
    from pseudolabel.pipeline import PseudolabelConfig, run_pipeline

    (tmp_path / "in").mkdir()
    clips = {name: speak(text) for name, text in (("one", "a red cube"), ("two", "a blue sphere"))}
    for name, clip in clips.items():
        soundfile.write(tmp_path / "in" / f"{name}.wav", clip, SAMPLE_RATE, subtype="PCM_16")
        (tmp_path / "in" / f"{name}.txt").write_text(f"{name} said\n")
    run_pipeline(PseudolabelConfig(source=f"audio:{tmp_path / 'in'}", out=str(tmp_path / "c"), labellers=[]),
                 progress=False)
    samples = list(CorpusReader(tmp_path / "c", ["speech", "caption"]))
    assert [s["caption"] for s in samples] == ["one said", "two said"]
    assert all(np.array_equal(s["speech"], clips[s["caption"].split()[0]]) for s in samples)
