"""Point-cloud tokenizer quality and speed on held-out scenes: Chamfer distance, class accuracy, codebook use,
clouds/s; and how fast the scenes source renders its point clouds.

    python benchmarks/point_tokenizer.py --tokenizer TOKENIZERS/tok_point_cloud [--scenes 128 --seed 1]

Held-out clouds are rendered here (scenes ``--seed``, training corpora use seed 0), or read from
``--corpus``. Rows (``tokenizers_train.points.evaluate_clouds``, Chamfer in metres, the mean distance
to the other cloud's nearest point both ways):

* ``round trip``: ``decode(encode(cloud))``, the 1024 farthest of the rebuilt points;
* ``all rebuilt points``: every point the groups rebuild (64 x 32, no resampling);
* ``cells only``: every rebuilt point moved to its group's cell centre: what the codes add over positions;
* ``another scene``: the next scene's cloud, a trivial baseline (the tokenizer bound is 0).

Speeds: clouds/s of ``encode`` and ``decode`` in batches of ``--batch``, and scenes/s of the source at
64 px with and without ``point_cloud`` and ``imu``, one thread; each counted in CPU seconds of this
process (``time.process_time``, median of 3 passes after a warm-up), so that a machine shared with other
jobs gives the rate of one free core rather than of its share of one.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from timing import cpu_timed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", required=True, help="a tok_point_cloud folder (fourm train-tokenizer's output)")
    p.add_argument("--corpus", help="read held-out clouds from this corpus instead of rendering scenes")
    p.add_argument("--scenes", type=int, default=128)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import numpy as np
    import torch

    from fourm.data.points import NO_CLASS, chamfer
    from fourm.tokenization.point_vqvae import PointVQVAE
    from pseudolabel.sources.scenes import SERIES, render_scene
    from tokenizers_train.data import load_series
    from tokenizers_train.points import evaluate_clouds

    torch.set_num_threads(args.threads)
    model = PointVQVAE.from_pretrained(Path(args.tokenizer))
    c = model.config
    print(f"{args.tokenizer}: {c.num_groups} groups x {c.group_size} points, {c.grid_size}^3 cells, "
          f"{c.codebook_size} codes; {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")

    start = time.perf_counter()
    if args.corpus:
        values, _, _ = load_series(args.corpus, c.source, 0, args.scenes)
    else:
        values = [render_scene(args.seed * 1_000_003 + i, args.size, ("point_cloud",))["point_cloud"]
                  for i in range(args.scenes)]
    x = model.to_tensor(values)
    print(f"{len(x)} held-out clouds ({time.perf_counter() - start:.1f} s to make)")

    def scores(recon: torch.Tensor) -> tuple[float, float]:
        distance, _, nearest = chamfer(recon[..., :3], x[..., :3])
        matched = torch.take_along_dim(recon, nearest[..., None], dim=1)
        labelled = x[..., 6] != NO_CLASS
        return float(distance.mean()), float(((matched[..., 6] == x[..., 6]) & labelled).sum() / labelled.sum())

    with torch.no_grad():
        s = evaluate_clouds(model, x)
        ids = torch.cat([model.encode(x[i:i + args.batch]) for i in range(0, len(x), args.batch)])
        rebuilt = model.decode_points(ids)
        cells, _ = model.split_ids(ids)
        at_cells = rebuilt.clone()
        centres = model.cell_centres(cells) * model.scale + model.centre  # (B, G, 3)
        at_cells[..., :3] = centres.repeat_interleave(c.group_size, dim=1)
        rows = {"round trip": (s["chamfer"], s["class_acc"]), "all rebuilt points": scores(rebuilt),
                "cells only": scores(at_cells), "another scene": scores(x.roll(1, dims=0))}
    print(f"\n{'row':20} {'chamfer m':>10} {'class acc':>10}")
    for name, (distance, acc) in rows.items():
        print(f"{name:20} {distance:10.4f} {acc:10.3f}")
    print(f"colour MAE (0-255) {s['colour_mae']:.1f}; codes: usage {s['usage']:.3f}, perplexity {s['perplexity']:.0f} "
          f"of {c.codebook_size}")

    batch = list(np.asarray(x[:args.batch]))
    with torch.no_grad():
        ids = model.encode(batch)
        encode_s = cpu_timed(lambda: model.encode(batch))
        decode_s = cpu_timed(lambda: model.decode(ids))
    print(f"\nencode {len(batch) / encode_s:8.1f} clouds/s   decode {len(batch) / decode_s:8.1f} clouds/s "
          f"(batch {len(batch)}, {args.threads} thread(s), per CPU second)")
    n = 32
    print("scenes/s per CPU second:")
    for series in ((), ("point_cloud",), SERIES):
        seconds = cpu_timed(lambda series=series: [render_scene(i, 64, series) for i in range(n)])
        print(f"  scenes source at 64 px with {', '.join(series) or 'no extra series':22} {n / seconds:6.1f} scenes/s")


if __name__ == "__main__":
    main()
