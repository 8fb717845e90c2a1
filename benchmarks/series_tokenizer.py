"""Time-series (IMU) tokenizer quality and speed on held-out signals: RMSE per sensor, codebook use, signals/s.

    python benchmarks/series_tokenizer.py --tokenizer TOKENIZERS/tok_imu [--corpus HELDOUT] [--samples 512]

Held-out signals are the scenes' IMU of camera moves with seed ``--seed`` (computed here, no rendering;
training corpora use seed 0), or the ``imu`` series of ``--corpus``. Rows
(``tokenizers_train.series.evaluate_signals``): the round trip ``decode(encode(x))``, and two trivial
baselines, the held-out mean signal (per time step) and another sample's signal (the tokenizer bound is
0). ``nrmse`` is the RMSE over each channel's held-out deviation, averaged: each channel's overall mean
would score 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from timing import cpu_timed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", required=True, help="a tok_imu folder (fourm train-tokenizer's output)")
    p.add_argument("--corpus", help="read held-out signals from this corpus' imu series")
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch", type=int, default=256)
    args = p.parse_args()

    import numpy as np
    import torch

    from fourm.tokenization.series_vqvae import SeriesVQVAE
    from pseudolabel.sources.scene_series import Trajectory, imu_times
    from pseudolabel.sources.scenes import Scene
    from tokenizers_train.data import load_series
    from tokenizers_train.series import evaluate_signals

    torch.set_num_threads(1)
    model = SeriesVQVAE.from_pretrained(Path(args.tokenizer))
    c = model.config
    if args.corpus:
        values, _, _ = load_series(args.corpus, c.source, 0, args.samples)
    else:  # the scenes source's own recipe for scene i of seed s: its camera, then the move's stream
        values = []
        for i in range(args.samples):
            seed = args.seed * 1_000_003 + i
            camera = Scene.sample(np.random.default_rng(seed)).camera
            values.append(Trajectory.sample(camera, np.random.default_rng([seed, 1])).imu(imu_times()))
    x = model.to_tensor(values)
    print(f"{args.tokenizer}: {c.num_patches} patches x {c.codes_per_patch} codes of {c.codebook_size}; "
          f"{len(x)} held-out signals ({c.num_samples} x {c.channels})")
    s = evaluate_signals(model, x)
    spread = x.reshape(-1, c.channels).std(0, unbiased=False)

    def row(name: str, recon: torch.Tensor) -> None:
        rmse = (recon - x).square().mean((0, 1)).sqrt()
        acc, gyro = float(rmse[:3].mean()), float(rmse[3:].mean())
        print(f"{name:16} {float((rmse / spread).mean()):7.3f} {acc:10.4f} {gyro:10.4f}")

    print(f"\n{'row':16} {'nrmse':>7} {'acc m/s^2':>10} {'gyro rad/s':>10}")
    print(f"{'round trip':16} {s['nrmse']:7.3f} {s['rmse_acc']:10.4f} {s['rmse_gyro']:10.4f}")
    row("mean signal", x.mean(0, keepdim=True).expand_as(x))
    row("another sample", x.roll(1, dims=0))
    print(f"codes: usage {s['usage']:.3f}, perplexity {s['perplexity']:.0f} of {c.codebook_size}")
    batch = x[:args.batch]
    ids = model.encode(batch)
    encode_s, decode_s = cpu_timed(lambda: model.encode(batch)), cpu_timed(lambda: model.decode(ids))
    print(f"\nencode {len(batch) / encode_s:8.0f} signals/s   decode {len(batch) / decode_s:8.0f} signals/s "
          f"(batch {len(batch)}, 1 thread, per CPU second)")


if __name__ == "__main__":
    main()
