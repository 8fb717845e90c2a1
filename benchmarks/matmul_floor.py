"""The train step's matmuls at their isolated best: a floor for the step's matmul time on this machine.

    python benchmarks/matmul_floor.py [--threads 1] [--rounds 3]

Each matmul of one bf16 training step at the reference's tiny configuration (6+6 x 384, SwiGLU, batch 8,
128 + 128 tokens; the shapes and their counts per step as torch's profiler recorded them in
``benchmarks/train_step.py``; the heads at typical row counts), timed alone in the layout autograd calls it
(``NT`` forward, ``NN`` input gradient, ``TN`` weight gradient, the tokens reduced), operands hot in cache,
best of 30 calls and of ``--rounds`` rounds (slow spells of a shared machine last seconds to minutes).
The sum is what the step's matmuls would take if each ran as fast as it can alone here: the step itself
reads its operands from memory and oneDNN packs each weight per call. See ``benchmarks/train_step.md``.
"""

import argparse

import torch
from timing import wall_times  # benchmarks/timing.py

from fourm.train.host_memory import retain_freed_memory

BF16 = torch.bfloat16
# (M, K, N, layout, calls per step): the blocks' projections, then the two heads
SHAPES = [(1024, 384, 2048, "NT", 12), (1024, 2048, 384, "NN", 12), (2048, 1024, 384, "TN", 12),
          (1024, 1024, 384, "NT", 12), (1024, 384, 1024, "NN", 12), (384, 1024, 1024, "TN", 12),
          (1024, 384, 1152, "NT", 12), (1024, 1152, 384, "NN", 12), (1152, 1024, 384, "TN", 12),
          (1024, 384, 384, "NT", 24), (1024, 384, 384, "NN", 24), (384, 1024, 384, "TN", 24),
          (1024, 384, 768, "NT", 6), (1024, 768, 384, "NN", 6), (768, 1024, 384, "TN", 6),
          (704, 384, 16384, "NT", 1), (704, 16384, 384, "NN", 1), (16384, 704, 384, "TN", 1),
          (320, 384, 30000, "NT", 1), (320, 30000, 384, "NN", 1), (30000, 320, 384, "TN", 1)]


def best(f) -> float:
    return min(wall_times(f, repeats=30, warmup=3))


def seconds(m: int, k: int, n: int, layout: str) -> float:
    if layout == "TN":  # A stored (K, M) and used transposed: a weight's gradient
        a, b = torch.randn(k, m).to(BF16), torch.randn(k, n).to(BF16)
        return best(lambda: a.t() @ b)
    if layout == "NT":  # B stored (N, K) and used transposed: F.linear's forward
        a, b = torch.randn(m, k).to(BF16), torch.randn(n, k).to(BF16)
        return best(lambda: a @ b.t())
    a, b = torch.randn(m, k).to(BF16), torch.randn(k, n).to(BF16)
    return best(lambda: a @ b)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_memory()
    bests: dict[tuple, float] = {}
    for _ in range(args.rounds):
        for shape in SHAPES:
            bests[shape] = min(bests.get(shape, float("inf")), seconds(*shape[:4]))
    total_s = total_flop = 0.0
    for shape, s in bests.items():
        m, k, n, layout, calls = shape
        flop = 2 * m * k * n
        total_s, total_flop = total_s + calls * s, total_flop + calls * flop
        print(f"{m:6d} x {k:6d} x {n:6d} {layout} x{calls:2d}: {flop / s / 1e9:6.0f} GFLOP/s")
    print(f"all: {total_flop / 1e9:.0f} GFLOP in {total_s * 1e3:.0f} ms at their isolated best "
          f"({total_flop / total_s / 1e9:.0f} GFLOP/s), {args.threads} thread(s)")


if __name__ == "__main__":
    main()
