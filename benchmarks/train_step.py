"""FourM training-step speed: ms/step, tokens/s, model FLOP utilisation and peak memory.

    python benchmarks/train_step.py                                   # tiny, fp32 and bf16, eager
    python benchmarks/train_step.py --precision fp32 --compile off on --steps 10 --threads 2
    python benchmarks/train_step.py --precision fp32 --activation-checkpointing off on --batch 32
    python benchmarks/train_step.py --precision bf16 bf16-weights --compile on   # the bound on master weights

The reference's tiny configuration (4M-21, arXiv 2406.09406): 6 + 6 layers, width 384, SwiGLU,
batch 8, 128 input and 128 target tokens per sample over two modalities: ``tok_rgb`` (196 tokens,
vocabulary 16384) and ``caption`` (a 30k WordPiece vocabulary). Synthetic samples of those shapes
go through the real :class:`~fourm.data.masking.Masker`, set to mask as the reference's benchmark does
(one Dirichlet at alpha 1; budget a short caption cannot use stays padding, which the reference computes
and fourm's blocks skip, :mod:`fourm.model.packing`; ``--fill`` fills it as fourm's training does by
default), and collation, then one training step is
what :func:`fourm.train.loop.train` does: autocast forward, backward, gradient clipping (folded into
the fused AdamW, :mod:`fourm.train.clipping`), zero_grad, with the loop's host-memory setting on a
CPU (:mod:`fourm.train.host_memory`).

Model FLOPs count what the step must compute, on the valid tokens only (padding excluded):
6 x (parameters of every matmul a token passes through) per token, forward and backward, that is
the encoder blocks per input token, the decoder blocks' self-attention, cross-attention query and
output, MLP per target token, the cross-attention keys/values per input token, and each target
token's own output head (its modality's vocabulary, not both); plus attention scores and their
weighted sum, 12 x Nq x Nk x width per layer over the valid queries and keys of a sample (what
dense SDPA computes; the decoder's group/causal masks would make less useful). Embedding lookups,
norms, softmax, the optimizer and the loss count nothing.

The peak is measured here: the best of several square matmuls (512 and 1024 on a CPU, 4096 and
8192 on a GPU) in the same dtype at the same thread count, so MFU is relative to what this machine
(shared, possibly busy) gives now. On a CPU both clocks are reported: wall time, and CPU time of
the process divided by its threads (which a busy neighbour does not inflate); MFU by either clock
uses the peak measured by the same clock.
``--activation-checkpointing on`` recomputes each block in the backward (``train.use_activation_checkpointing``);
each configuration's peak memory of one step (weights, gradients, optimizer state, activations and
temporaries) is measured apart from the timed steps: by torch's ``MemTracker`` on a CPU (the CPU
allocator keeps no statistics), by the allocator's high-water on a GPU.
Timings are medians; ``--repeats`` interleaves the configurations (A B A B ...) so a neighbour's
load spreads over all of them.

``--precision bf16-weights`` is not a way fourm trains: the weights, their gradients and AdamW's state all in
bf16, without autocast. It bounds what bf16 weights with fp32 master copies could gain over autocast's bf16:
that design removes the casts of the weights to bf16 in the forward and of their gradients back in the
backward, but its optimizer still reads and writes the fp32 copies, so it is slower than this.

``--reference`` prints each configuration's speed-up over the public reference (apple/ml-4m) at the
same shapes: a saved stdout of its ``bench_ml4m.py``, or the folder holding it, which is then run once
per round beside ours with the same threads and steps (``benchmarks/reference.py``). The reference
prints wall time only, so the ratio is of wall-clock medians.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fourm.train.clipping import clip_gradients
from fourm.train.host_memory import retain_freed_memory

sys.path.insert(0, str(Path(__file__).parent))
from reference import reference_output, train_ms  # noqa: E402  (benchmarks/reference.py)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "bf16-weights": torch.bfloat16}


@dataclass
class Setup:
    size: str = "tiny"
    batch: int = 8
    input_budget: int = 128
    target_budget: int = 128
    image_vocab: int = 16384
    caption_vocab: int = 30_000
    # caption lengths drawn uniformly in this range: the reference benchmark's four captions (11-15 words,
    # 12-16 WordPiece tokens with [EOS]), so both sides see samples of the same size; longer captions
    # (--caption-tokens 24 96) fill more of the target budget with 30k-vocabulary tokens
    caption_tokens: tuple[int, int] = (12, 16)
    # the reference benchmark's masking (4M's): one Dirichlet at alpha 1 for inputs and targets, and a budget
    # that the caption cannot use is left empty, inputs' and targets' alike. Ours defaults to 4M-21's mixture
    # and fills such budget from the image (MaskingConfig.use_input_fill / use_target_fill): --fill
    alpha: float = 1.0
    fill: bool = False
    seed: int = 0
    # distinct batches, cycled: training never sees one twice, and on a CPU a new number of a modality's
    # tokens once cost a oneDNN kernel build (fourm.model.embeddings.pad_rows); many batches show that cost
    batches: int = 8


def build(setup: Setup):
    """-> model, a list of batches of the reference's shapes."""
    from fourm.data.masking import DirichletComponent, Masker, MaskingConfig, TextSpecials
    from fourm.modalities import ModalityScale
    from fourm.model.sizes import create_model

    model = create_model(setup.size, ["tok_rgb", "caption"], ModalityScale(
        224, 16, vocab_sizes={"tok_rgb": setup.image_vocab, "caption": setup.caption_vocab}))
    specials = TextSpecials()
    masker = Masker({n: model.specs[n] for n in model.names},
                    MaskingConfig(input_budget=setup.input_budget, target_budget=setup.target_budget,
                                  mixture=[DirichletComponent(1.0, {"*": setup.alpha}, {"*": setup.alpha})],
                                  use_input_fill=setup.fill, use_target_fill=setup.fill), specials)
    rng = np.random.default_rng(setup.seed)
    first_word = max(specials.sentinels) + 1

    def sample():
        length = rng.integers(*setup.caption_tokens, endpoint=True)
        caption = np.append(rng.integers(first_word, setup.caption_vocab, length - 1), specials.eos)
        return {"tok_rgb": rng.integers(0, setup.image_vocab, 196), "caption": caption}

    batches = [masker.collate([masker(sample(), rng) for _ in range(setup.batch)]) for _ in range(setup.batches)]
    return model, batches


def model_flops(model, batch) -> float:
    """Training FLOPs of one step on ``batch`` (see the module notes for what counts)."""
    cfg = model.config
    dim = cfg.dim
    enc_block = sum(p.numel() for n, p in model.encoder[0].named_parameters() if p.dim() == 2)
    dec = model.decoder[0]
    dec_block = sum(p.numel() for n, p in dec.named_parameters() if p.dim() == 2 and not n.startswith("cross_attn.kv"))
    cross_kv = dec.cross_attn.kv.weight.numel()
    n_enc = batch.enc_valid.sum(1).double()  # (B,) valid tokens per sample
    n_dec = batch.dec_valid.sum(1).double()
    flops = 6 * cfg.encoder_depth * enc_block * n_enc.sum()
    flops += 6 * cfg.decoder_depth * (dec_block * n_dec.sum() + cross_kv * n_enc.sum())
    for m, name in enumerate(model.names):  # each target token through its own modality's head
        flops += 6 * dim * model.specs[name].vocab_size * (batch.dec_valid & (batch.dec_mod == m)).sum()
    attention = cfg.encoder_depth * n_enc**2 + cfg.decoder_depth * (n_dec**2 + n_dec * n_enc)
    flops += 12 * dim * attention.sum()
    return float(flops)


class Clock:
    """Wall and process CPU seconds of a block. On a shared machine the wall clock also counts the
    time other jobs held the cores; CPU seconds (all threads of this process) do not."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        self._sync()
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def matmul_peak(dtype: torch.dtype, device: torch.device, seconds: float = 1.0) -> tuple[float, float]:
    """Best FLOP/s of square matmuls in ``dtype`` at the current thread count -> (by wall time,
    by CPU time per thread; the latter only means something on a CPU). Each sample times enough
    matmuls to last ~50 ms: the kernel adds a worker thread's CPU time to the process's only at its
    scheduler ticks, so a single ~1 ms matmul on two threads read as one thread's time, and double the rate."""
    best_wall = best_cpu = 0.0
    threads = torch.get_num_threads()
    for n in (512, 1024) if device.type == "cpu" else (4096, 8192):
        a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
        with Clock(device) as c:
            a @ b  # warm-up, and the time of one
        reps = max(1, round(0.05 / max(c.wall, 1e-6)))
        end, samples = time.perf_counter() + seconds / 2, 0
        while time.perf_counter() < end or samples < 3:  # slow (emulated bf16) matmuls: 3 samples at least
            samples += 1
            with Clock(device) as c:
                for _ in range(reps):
                    a @ b
            best_wall = max(best_wall, reps * 2 * n**3 / c.wall)
            best_cpu = max(best_cpu, reps * 2 * n**3 / max(c.cpu / threads, 1e-9))
    return best_wall, best_cpu


class Runner:
    """One configuration (precision, compile, activation checkpointing): its model, optimizer and step function."""

    def __init__(self, setup: Setup, precision: str, compile: bool, recompute: bool, device: torch.device):
        from fourm.train.loop import TrainConfig, build_optimizer

        torch.manual_seed(setup.seed)
        model, batches = build(setup)
        self.model = model.to(device).train()
        self.batches = [b.to(device) for b in batches]
        self.device = device
        if precision == "bf16-weights":  # the bound on master weights: no casts left at all (module notes)
            self.model.to(torch.bfloat16)
        self.optimizer = build_optimizer(self.model, TrainConfig())
        self.model.checkpoint_activations(recompute)
        if compile:
            self.model.compile()  # as the loop does: FourM compiles its blocks
        self.precision, self.compile, self.recompute = precision, compile, recompute
        self.flops = [model_flops(self.model, b) for b in self.batches]
        self.tokens = [int(b.enc_valid.sum() + b.dec_valid.sum()) for b in self.batches]
        self.i = 0
        self.times: list[tuple[float, float, float, int]] = []  # (wall s, cpu s, FLOPs, tokens) per step
        self.peak_bytes = 0  # the most allocated during one of this configuration's steps (measure_peak)

    def step(self) -> tuple[float, float, float, int]:
        """One training step, as the loop does it -> (wall s, cpu s, model FLOPs, tokens)."""
        i, self.i = self.i % len(self.batches), self.i + 1
        with Clock(self.device) as c:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                loss = self.model(self.batches[i]).loss
            loss.backward()
            clip_gradients(self.model.parameters(), self.optimizer, 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return c.wall, c.cpu, self.flops[i], self.tokens[i]

    def run(self, steps: int, timed: bool = True) -> None:
        for _ in range(steps):
            t = self.step()
            if timed:
                self.times.append(t)

    def measure_peak(self) -> None:
        """The peak memory of one step, untimed: the allocator's high-water on a GPU; on a CPU torch's
        ``MemTracker``, which follows every tensor's storage (and slows the step it watches)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.step()
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            return
        from torch.distributed._tools.mem_tracker import MemTracker

        tracker = MemTracker()
        tracker.track_external(self.model, self.optimizer)
        with tracker:
            self.step()
        self.peak_bytes = sum(snapshot["Total"] for snapshot in tracker.get_tracker_snapshot("peak").values())


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    p.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"])
    p.add_argument("--activation-checkpointing", nargs="+", default=["off"], choices=["off", "on"],
                   help="recompute each block in the backward (train.use_activation_checkpointing)")
    p.add_argument("--size", default="tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=8, help="distinct batches, cycled (training sees each once)")
    p.add_argument("--caption-tokens", type=int, nargs=2, default=Setup.caption_tokens, metavar=("MIN", "MAX"),
                   help="caption lengths, drawn uniformly (default: the reference benchmark's captions)")
    p.add_argument("--fill", action="store_true",
                   help="give budget a short caption cannot use to the image (fourm's default masking), not padding")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration and repeat")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    p.add_argument("--repeats", type=int, default=1, help="interleaved rounds over the configurations")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--reference", help="bench_ml4m.py's saved output, or its folder (run once per round)")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, threads = torch.device(args.device), torch.get_num_threads()
    if device.type == "cpu":  # as the loop does
        retain_freed_memory()
    setup = Setup(size=args.size, batch=args.batch, batches=args.batches, caption_tokens=tuple(args.caption_tokens),
                  fill=args.fill)

    load = os.getloadavg()[0]
    runners = [Runner(setup, prec, c == "on", a == "on", device) for prec in args.precision for c in args.compile
               for a in args.activation_checkpointing]
    for r in runners:
        r.run(args.warmup, timed=False)
    peaks = {prec: (0.0, 0.0) for prec in args.precision}
    reference_ms: list[float] = []
    for _ in range(args.repeats):
        if args.reference and (not reference_ms or Path(args.reference).is_dir()):
            reference_ms += train_ms(reference_output(args.reference, threads, args.steps))
        for prec in args.precision:  # in every round, beside the steps: a busy spell lowers both alike
            peaks[prec] = tuple(map(max, peaks[prec], matmul_peak(DTYPES[prec], device)))
        for r in runners:
            r.run(args.steps)
    for r in runners:  # after the timed steps: a compiled step ran slower after one under MemTracker
        r.measure_peak()

    print(f"{setup.size}: {runners[0].model.num_params() / 1e6:.1f}M parameters, batch {setup.batch}, "
          f"{setup.input_budget}+{setup.target_budget} tokens, captions of {setup.caption_tokens[0]}-"
          f"{setup.caption_tokens[1]} tokens, {device}, {threads} threads, "
          f"1-minute load average {load:.1f} before, {os.getloadavg()[0]:.1f} after")
    batches = runners[0].batches
    valid = [sum(int(getattr(b, f).sum()) for b in batches) / len(batches) for f in ("enc_valid", "dec_valid")]
    print(f"masking: {'filled' if setup.fill else 'as the reference'}: {valid[0]:.0f} input and {valid[1]:.0f} target "
          f"tokens a batch (mean; the reference's benchmark batch: 487 and 734, its masking's mean 610 and 554)")
    for prec, (wall, cpu) in peaks.items():
        print(f"matmul peak {prec}: {wall / 1e9:.1f} GFLOP/s" + (f" (by CPU time: {cpu / 1e9:.1f})" * (
            device.type == "cpu")))
    if reference_ms:
        reference = statistics.median(reference_ms)
        print(f"reference (apple/ml-4m, fp32): {reference:.0f} ms/step (median of {len(reference_ms)} runs' medians: "
              f"{', '.join(f'{ms:.0f}' for ms in reference_ms)})")
    rows = []
    for r in runners:
        wall = statistics.median(t[0] for t in r.times)
        cpu = statistics.median(t[1] for t in r.times) / threads
        flops, tokens = statistics.mean(t[2] for t in r.times), statistics.mean(t[3] for t in r.times)
        peak_wall, peak_cpu = peaks[r.precision]
        row = dict(precision=r.precision, compile=r.compile, ms_per_step=1e3 * wall, tokens_per_s=tokens / wall,
                   gflop_per_step=flops / 1e9, gflop_per_s=flops / wall / 1e9, mfu=flops / wall / peak_wall,
                   peak_gflop_per_s=peak_wall / 1e9, steps=len(r.times), threads=threads, device=str(device))
        row.update(activation_checkpointing=r.recompute, peak_memory_mib=r.peak_bytes / 2**20)
        if device.type == "cpu":
            row.update(cpu_ms_per_step=1e3 * cpu, mfu_cpu_time=flops / cpu / peak_cpu)
        if reference_ms:
            row.update(reference_ms_per_step=reference, speedup=reference / row["ms_per_step"])
        rows.append(row)
        extra = (f"; by CPU time {row['cpu_ms_per_step']:.0f} ms/step, MFU {100 * row['mfu_cpu_time']:.0f}%"
                 if device.type == "cpu" else "") + f"; peak memory {row['peak_memory_mib']:.0f} MiB"
        print(f"{r.precision} compile={'on' if r.compile else 'off'}"
              + " activation-checkpointing=on" * r.recompute + f": {row['ms_per_step']:.0f} ms/step, "
              f"{row['tokens_per_s']:.0f} tokens/s, {row['gflop_per_step']:.1f} GFLOP/step, "
              f"{row['gflop_per_s']:.1f} GFLOP/s, MFU {100 * row['mfu']:.0f}% (median of {len(r.times)}){extra}"
              + (f"; {row['speedup']:.2f}x the reference" if reference_ms else ""))
    if any(row["mfu"] > 1 for row in rows):
        print("wall-clock MFU over 100%: the machine was busier during the peak's rounds than during the steps; "
              "trust the CPU-time figures")
    # beside each configuration's own peak: what the operating system saw, all configurations together
    print(f"peak memory (RSS high-water of the process, all configurations): {peak_rss_mib():.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "peak_rss_mib": peak_rss_mib()}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
