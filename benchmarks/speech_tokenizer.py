"""Speech tokenizer quality and speed on held-out scene captions: spectrogram error, codebook use, clips/s.

    python benchmarks/speech_tokenizer.py --tokenizer TOKENIZERS/tok_speech [--corpus HELDOUT] [--samples 256]

Held-out clips are the scenes' spoken captions with seed ``--seed`` (rendered here at 16 px, which
changes no caption; training corpora use seed 0), or the ``speech`` series of ``--corpus``. Rows
(``tokenizers_train.speech.evaluate_speech``): the round trip ``decode(encode(x))`` of the log-mel
spectrograms in dB, over all frames (``l1_db``) and over the frames with sound (``voiced``: padding is easy),
beside two trivial baselines, the held-out mean spectrogram and another clip's spectrogram (the bound
is 0). Speeds are one thread, per CPU second: the TTS (eSpeak NG, with resampling to 16 kHz), the
log-mel features (librosa), encode from features, decode to features, and decode to audio (Griffin-Lim).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from timing import cpu_timed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", required=True, help="a tok_speech folder (fourm train-tokenizer's output)")
    p.add_argument("--corpus", help="read held-out clips from this corpus' speech series")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()

    import numpy as np
    import torch

    from fourm.data.audio import SAMPLE_RATE, log_mel
    from fourm.tokenization.speech_vqvae import SpeechVQVAE
    from pseudolabel.sources import tts
    from pseudolabel.sources.scenes import render_scene
    from tokenizers_train.data import load_series
    from tokenizers_train.speech import VOICED_DB, evaluate_speech

    torch.set_num_threads(1)
    model = SpeechVQVAE.from_pretrained(Path(args.tokenizer))
    c = model.config
    captions, voices = [], []
    if args.corpus:
        values, _, _ = load_series(args.corpus, c.source, 0, args.samples)
    else:  # the scenes source's recipe for scene i of seed s: its caption, the voice from stream [seed, 2]
        values = []
        for i in range(args.samples):
            seed = args.seed * 1_000_003 + i
            out = render_scene(seed, 16, ("speech",))
            values.append(out["speech"])
            captions.append(out["caption"])
            voices.append(tts.sample_voice(np.random.default_rng([seed, 2])))
    seconds = np.array([len(v) / SAMPLE_RATE for v in values])
    x = model.to_tensor(values)
    print(f"{args.tokenizer}: {c.num_patches} patches x {c.codes_per_patch} codes of {c.codebook_size}; "
          f"{len(x)} held-out clips ({c.num_samples} frames x {c.channels} mel bins), "
          f"{seconds.mean():.2f} s on average ({(seconds >= c.max_samples / SAMPLE_RATE - 1e-3).mean():.1%} cut)")
    s = evaluate_speech(model, x)
    voiced = x.amax(-1) > c.mel.floor_db + VOICED_DB

    def row(name: str, recon: torch.Tensor) -> None:
        error = (recon - x).abs()
        print(f"{name:16} {float(error.mean()):8.2f} {float(error[voiced].mean()):8.2f}")

    print(f"\n{'row (dB)':16} {'l1':>8} {'voiced':>8}")
    print(f"{'round trip':16} {s['l1_db']:8.2f} {s['l1_db_voiced']:8.2f}")
    row("mean spectrogram", x.mean(0, keepdim=True).expand_as(x))
    row("another clip", x.roll(1, dims=0))
    print(f"codes: usage {s['usage']:.3f}, perplexity {s['perplexity']:.0f} of {c.codebook_size}")

    batch = x[:args.batch]
    ids = model.encode(batch)
    print()
    if captions:
        few = list(zip(captions[:16], voices[:16], strict=True))
        tts_s = cpu_timed(lambda: [tts.speak(t, v) for t, v in few], repeats=1)
        print(f"tts     {len(few) / tts_s:8.1f} clips/s ({seconds[:16].sum() / tts_s:.0f}x real time)")
    mel_s = cpu_timed(lambda: [log_mel(v, c.mel) for v in values[:16]], repeats=1)
    encode_s, decode_s = cpu_timed(lambda: model.encode(batch)), cpu_timed(lambda: model.decode_spectrograms(ids))
    audio_s = cpu_timed(lambda: model.decode(ids[:4]), repeats=1)
    print(f"log-mel {16 / mel_s:8.1f} clips/s\nencode  {len(batch) / encode_s:8.0f} clips/s (from log-mel)\n"
          f"decode  {len(batch) / decode_s:8.0f} clips/s (to log-mel), {4 / audio_s:.1f} clips/s to audio "
          f"(Griffin-Lim, {c.griffin_lim_iters} iterations)   (1 thread, per CPU second)")


if __name__ == "__main__":
    main()
