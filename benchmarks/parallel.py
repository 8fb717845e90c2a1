"""DDP against FSDP in two CPU processes: step time and peak memory per rank at a size where sharding shows.

    python benchmarks/parallel.py [--size base] [--steps 6] [--batch-size 2]

Trains FourM (``--size``, default base: 12+12 blocks x 768, ~0.2 B parameters) on a small synthetic
token corpus at the demo's shapes for a few steps, twice, under ``accelerate launch --multi_gpu
--num_processes 2`` (two gloo processes on a machine without GPUs): ``train.parallel=ddp``, then
``fsdp``. Printed per mode: the median step time (after the first step) and each rank's peak RSS, beside
the model state a rank holds by construction (fp32 weights + gradients + AdamW's two moments: 16 bytes a
parameter under DDP, half of that under FSDP over two ranks, plus the one block gathered at a time).
Runs with ``MALLOC_MMAP_THRESHOLD_=131072`` unless the environment sets it: glibc otherwise keeps the
blocks FSDP frees every step, and RSS measures its heap rather than what the process holds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def rank_main(argv: list[str]) -> None:
    """One process of the launched run: train, then report this rank's peak memory."""
    import torch.distributed as dist

    from fourm.config import load_config
    from fourm.train.pretrain import FourMTrainConfig, run_training

    model = run_training(load_config(FourMTrainConfig, overrides=argv), progress=False)
    params = sum(p.numel() for p in model.parameters()) if dist.get_rank() == 0 else None
    print(json.dumps({"rank": dist.get_rank(), "params": params,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="base")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rank-run", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank_run is not None:
        rank_main(args.rank_run)
        return

    from data_scale import template, write_corpus

    from fourm.train.curves import read_metrics

    work = Path(tempfile.mkdtemp(prefix="fourm-parallel-"))
    write_corpus(work / "tokens", 2000, template(200))
    print(f"FourM {args.size}, batch {args.batch_size} per rank, 2 gloo processes, {args.steps} steps")
    print(f"{'mode':>5} {'s/step':>7} {'peak RSS MB rank 0':>19} {'rank 1':>7} {'state MB per rank':>18}")
    for mode in ("ddp", "fsdp"):
        out = work / mode
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", __file__, "--rank-run",
               f"data.corpora=[{work / 'tokens'}]", f"out={out}", f"model.size={args.size}",
               f"data.batch_size={args.batch_size}", "data.heldout=16", f"train.steps={args.steps}",
               "train.save_every=0", "train.eval_every=0", "train.log_every=1", "train.precision=fp32",
               f"train.parallel={mode}", "train.use_tensorboard=false"]
        # glibc keeps freed large blocks in its heap once its dynamic mmap threshold has risen (FSDP's
        # gathered units are freed and re-made every step): a fixed threshold returns them, so RSS shows
        # what the process holds (FSDP rank 1: peak 2.5 GB with it, 4.5 GB without)
        env = {"MALLOC_MMAP_THRESHOLD_": "131072", **os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if result.returncode:
            sys.exit(result.stderr[-3000:])
        ranks = sorted((json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")),
                       key=lambda r: r["rank"])
        steps = [r["s_per_step"] for r in read_metrics(out / "metrics.jsonl") if "s_per_step" in r][1:]
        state = 16 * ranks[0]["params"] / 2**20 / (2 if mode == "fsdp" else 1)
        print(f"{mode:>5} {statistics.median(steps):>7.2f} {ranks[0]['peak_rss_mb']:>19.0f} "
              f"{ranks[1]['peak_rss_mb']:>7.0f} {state:>18.0f}", flush=True)


if __name__ == "__main__":
    main()
