"""Generation latency at the reference's tiny configuration (random weights: latency only).

    python benchmarks/generate.py [--repeats 5] [--threads N] [--cases maskgit_b1,ar_32]

FourM tiny (6+6 layers, width 384) over ``tok_rgb`` (196 tokens, vocabulary 16384) and ``caption``
(vocabulary 30000). Cases: caption -> image tokens with MaskGIT 8 steps at batch 1 and 8, the same
with classifier-free guidance 3.0, ROAR 8 steps, and an image -> caption left-to-right of 32 and 64
tokens with the KV cache and without it (the decoder re-run over the whole prefix each token, as the
public reference does), beside the floor of a cached token: one batch-1 matmul per decoder weight
and the caption head, bound by memory bandwidth. Prompt and sampling settings are the reference
benchmark's (temperature 3 and top-p 0.8 for images, 0.3 and 0.8 for captions; its token schedules,
which set how much each step decodes and encodes, and its guidance scale; the images' temperature
anneals linearly where the reference's follows its own curve, which changes no work). Rounds are
interleaved (each round runs every case once) and the median over rounds is reported, so a load
change on a shared machine hits every case alike; the 1-minute load average before and after is
printed. Beside wall time, the process' CPU time: on a shared machine (here often 4-8 busy processes
on 2 cores) a single-threaded run waits for the CPU much of its wall time, and its CPU time is what
the same run takes on an idle core (up to memory-bandwidth contention). Each case's model FLOPs
(``torch.utils.flop_counter``, with the int8 linear's 2 K N per row added) divided by its CPU time gives
its rate, printed as a share ("of mm") of a large matmul's rate in the same precision (int8: the same
fbgemm kernel), measured in the same rounds: a case near 100% is bound by its arithmetic, not by
overhead. That matmul runs in this process as a case does (fresh outputs paged in): in a process that
keeps freed memory the int8 one ran 10-25% faster again (``benchmarks/generate.md``). For
autoregression, "marginal" is the cost of one more token, (t64 - t32) / 32: the per-token cost without
the one encoder pass. Reference figures (the public implementation on this machine) are printed beside
ours; ``--reference`` replaces them with figures measured now: a saved stdout of the reference's
``bench_ml4m.py`` or the folder holding it, which is then run first with the same threads
(``benchmarks/reference.py``), and the ratio of its fastest run to ours. On a machine whose speed drifts
(a shared VM: the same reference run took 3.3-3.9 s for MaskGIT within two hours),
``--pairs N`` runs the reference folder and then ours N times and adds the median of the pairs' ratios.

The three caption -> image cases run once more with ``Target.encode_every`` (``--encode-every``, default 8:
the target's tokens encoded whole only at the first of the 8 steps, each later step encoding those decided
since and the caption afresh): approximate, so their ratios compare less work than the reference's and say
what the option buys.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from fourm.generation import GenerationState, Target, build_schedule, generate
from fourm.modalities import ModalityScale
from fourm.model.precision import quantize_int8, resolve_precision
from fourm.model.sizes import create_model

sys.path.insert(0, str(Path(__file__).parent))
from reference import generation_ms, reference_output  # noqa: E402  (benchmarks/reference.py)

# What the reference's benchmark asks for (bench_ml4m.py): the caption "a small red boat on a lake [S_1]"
# (10 tokens with [EOS]); images at temperature 3 with top-p 0.8, captions at temperature 0.3 with top-p 0.8
CAPTION_TOKENS = 10
IMAGE_SAMPLING = dict(temperature=3.0, top_p=0.8)
CAPTION_SAMPLING = dict(temperature=0.3, top_p=0.8)
# its token schedules: MaskGIT on 4M's "cosine" (fourm's cosine_annealing: most tokens in the middle steps), ROAR
# linear. They set the work: fourm's "cosine" (MaskGIT's, most tokens last) decodes 1090 queries over 8 steps
# where 4M's decodes 882, and a cosine ROAR encodes 478 decided tokens where a linear one encodes 688
SCHEDULES = {"maskgit": "cosine_annealing", "roar": "linear"}


@dataclass
class Case:
    name: str
    run: Callable[[], object]
    per_token: int = 0  # > 0: report ms per token over this many tokens
    reference: str = ""  # the public implementation, this machine
    precision: str = "fp32"  # what it computes in: its rate is read against the matmul case's of the same


def build_cases(model, precision: str = "fp32", encode_every: int = 8) -> list[Case]:
    weights, kind = model, precision  # the floor below reads the fp32 weights
    if precision == "int8":  # what Pipeline(precision="int8") runs: a copy with int8 linear weights
        model, precision = quantize_int8(model), "fp32"
    g = torch.Generator().manual_seed(0)
    specs = model.specs

    def caption_state(batch: int) -> GenerationState:
        state = GenerationState(specs, batch)
        ids = torch.randint(300, 30000, (batch, CAPTION_TOKENS - 1), generator=g)
        state.set_sequence("caption", [[*row, 3] for row in ids.tolist()])
        return state

    def image_state() -> GenerationState:
        state = GenerationState(specs, 1)
        state.set_grid("tok_rgb", torch.randint(0, 16384, (1, 196), generator=g))
        return state

    def to_image(batch: int, **target) -> Callable[[], object]:
        target = {"schedule": SCHEDULES[target.get("scheme", "maskgit")], **target}
        schedule = build_schedule([Target("tok_rgb", steps=8, **IMAGE_SAMPLING, **target)], specs, ["caption"])
        return lambda: generate(model, caption_state(batch), schedule, seed=0, precision=precision)

    def to_caption(length: int, use_cache: bool) -> Callable[[], object]:
        from fourm.generation import sampler

        target = build_schedule([Target("caption", max_tokens=length, min_tokens=length, **CAPTION_SAMPLING)], specs,
                                ["tok_rgb"])[0]

        def run():
            with torch.no_grad():
                sampler.autoregressive(model, image_state(), target, torch.Generator().manual_seed(0), use_cache)
        return run

    # A cached token multiplies one row by every decoder weight and the caption head: at batch 1 that
    # reads ~96 MB of fp32 weights per token, far beyond the cache, so memory bandwidth sets the floor
    device = weights.embed.mask_token.device
    layers = [m for n, m in weights.decoder.named_modules()
              if isinstance(m, torch.nn.Linear) and not n.endswith("cross_attn.kv")]  # cross K/V: cached
    read = [(torch.zeros(1, m.in_features, device=device), m.weight) for m in [*layers, weights.heads["caption"]]]
    read_mb = sum(w.numel() * w.element_size() for _, w in read) / 1e6
    # a large matmul in the cases' precision (int8: the kernel the quantized layers call): each case's rate
    # is printed as a share of its rate, so a case near 100% is bound by its arithmetic, not by overhead
    a = torch.randn(196, 384, device=device)
    head = torch.nn.Linear(384, 16384, bias=False, device=device).requires_grad_(False)
    if kind == "int8":
        head = quantize_int8(torch.nn.Sequential(head))[0]
    bf16 = resolve_precision(kind, device) == "bf16"

    def matmul():  # one output alive at a time, as in a run: ten kept alive (128 MB) were unmapped and faulted
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):  # in anew every round, a quarter slower
            for _ in range(10):
                head(a)

    # the target encoded whole every N steps, between them only its tokens decided since and the caption afresh
    # (Target.encode_every): approximate, so less work than the reference does and not its outputs; the ratio
    # says what it buys
    unguided, guided, roar = {}, dict(guidance=2.0), dict(scheme="roar")
    approximate = [Case(f"{name}, encode every {encode_every}", to_image(1, encode_every=encode_every, **target))
                   for name, target in [("maskgit 8 steps, b1", unguided), ("maskgit 8 steps, b1, guidance 3", guided),
                                        ("roar 8 steps, b1", roar)] if encode_every > 1]
    cases = [
        Case("matmul 196x384x16384 (x10)", matmul),
        Case("ar floor: token's weights, b1", lambda: [torch.nn.functional.linear(x, w) for x, w in read], per_token=1,
             reference=f"{read_mb:.0f} MB read"),
        Case("maskgit 8 steps, b1", to_image(1), reference="2.0 s"),
        Case("maskgit 8 steps, b8", to_image(8), reference="18 s"),
        # 4M's cfg 3.0 is uncond + 3 (cond - uncond), fourm's guidance w is cond + w (cond - uncond): w = 2
        Case("maskgit 8 steps, b1, guidance 3", to_image(1, guidance=2.0), reference="3.6 s"),
        Case("roar 8 steps, b1", to_image(1, scheme="roar"), reference="0.72 s"),
        *approximate,
        Case("ar caption 32, cached", to_caption(32, True), per_token=32, reference="61-67 ms/token (no cache)"),
        Case("ar caption 64, cached", to_caption(64, True), per_token=64, reference="61-67 ms/token (no cache)"),
        Case("ar caption 32, uncached", to_caption(32, False), per_token=32, reference="61-67 ms/token"),
        Case("ar caption 64, uncached", to_caption(64, False), per_token=64, reference="61-67 ms/token"),
    ]
    return [dataclasses.replace(case, precision=kind) for case in cases]


def _int8_linear_flops(x_shape, packed, reduce_range, out_shape=None, **kwargs) -> int:
    """(.., K) @ (K, N): 2 K N per row, as for an fp32 linear (torch's flop counter has no formula for it)."""
    return 2 * math.prod(x_shape) * out_shape[-1]


INT8_FLOPS = {torch.ops.quantized.linear_dynamic: _int8_linear_flops}


def measure(cases: list[Case], repeats: int, sync: Callable[[], object]) -> tuple[dict, dict]:
    """Interleaved rounds, one warm-up first -> wall and CPU seconds per case name, one per timed round."""
    times: dict[str, list[float]] = {c.name: [] for c in cases}
    cpu: dict[str, list[float]] = {c.name: [] for c in cases}
    for round_ in range(repeats + 1):
        for case in cases:
            sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            case.run()
            sync()
            if round_:  # round 0 warms up
                times[case.name].append(time.perf_counter() - start)
                cpu[case.name].append(time.process_time() - start_cpu)
    return times, cpu


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up round)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--cases", help="comma-separated substrings of case names to run")
    p.add_argument("--device", default="cpu", help="where the model runs (cuda: wall times synchronise the device)")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "auto", "int8"],
                   help="what MaskGIT and ROAR compute in; several: their cases side by side, interleaved")
    p.add_argument("--encode-every", type=int, default=8,
                   help="Target.encode_every of the approximate caption -> image cases (1: leave them out)")
    p.add_argument("--reference", help="bench_ml4m.py's saved output, or its folder (run first)")
    p.add_argument("--pairs", type=int, default=1,
                   help="with a reference folder: run it and then ours this many times, each of ours right after "
                        "a run of the reference (a machine whose speed drifts hits both sides of a pair alike)")
    args = p.parse_args(argv)
    if args.pairs > 1 and not (args.reference and Path(args.reference).is_dir()):
        p.error("--pairs needs --reference to be the reference's folder, which is run before each of ours")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("tiny", "tok_rgb,caption", ModalityScale(224, 16)).eval().to(args.device)
    sync = torch.cuda.synchronize if model.embed.mask_token.is_cuda else (lambda: None)
    cases = build_cases(model, args.precision[0], args.encode_every)
    for precision in args.precision[1:]:  # the parallel cases again (autoregression stays in fp32 or int8)
        schemes = ("matmul", "maskgit", "roar", *(("ar caption",) if precision == "int8" else ()))
        cases += [dataclasses.replace(c, name=f"{c.name} {precision}")
                  for c in build_cases(model, precision, args.encode_every) if c.name.startswith(schemes)]
    if args.cases:
        wanted = [c.strip() for c in args.cases.split(",")]
        cases = [c for c in cases if any(w in c.name for w in wanted)]
    from torch.utils.flop_counter import FlopCounterMode

    flops = {}
    for case in cases:
        with FlopCounterMode(display=False, custom_mapping=INT8_FLOPS) as counter:
            case.run()
        flops[case.name] = counter.get_total_flops()
    load_before = os.getloadavg()[0]
    references: list[dict[str, float]] = []  # per pair: the reference's fastest run of each case, in ms
    rounds: list[tuple[dict, dict]] = []  # per pair: our wall and CPU seconds per case
    for _ in range(args.pairs):
        if args.reference:
            references.append(generation_ms(reference_output(args.reference, torch.get_num_threads(), generation=True)))
        rounds.append(measure(cases, args.repeats, sync))
    times = {c.name: [t for wall, _ in rounds for t in wall[c.name]] for c in cases}
    cpu = {c.name: [t for _, cpu_ in rounds for t in cpu_[c.name]] for c in cases}
    load_after = os.getloadavg()[0]
    print(f"FourM tiny ({model.num_params(trunk_only=True) / 1e6:.1f}M trunk), tok_rgb 196 x 16384, caption 30000; "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cpus, load {load_before:.1f} -> {load_after:.1f}; "
          f"median of {args.repeats * args.pairs}" + (f" in {args.pairs} pairs with the reference" * (args.pairs > 1)))
    # each precision's large-matmul rate, which that precision's cases' rates are read against
    peaks = {c.precision: flops[c.name] / 1e9 / statistics.median(cpu[c.name]) for c in cases
             if c.name.startswith("matmul")}
    print(f"{'case':48} {'wall median':>13} {'wall min':>13} {'CPU median':>13} {'GFLOP':>7} {'GFLOP/s':>8} "
          f"{'of mm':>6}   reference")
    for case in cases:
        figures = (statistics.median(times[case.name]), min(times[case.name]), statistics.median(cpu[case.name]))
        if case.per_token:
            shown = [f"{1000 * x / case.per_token:.1f} ms/tok" for x in figures]
        else:
            shown = [f"{x:.3f} s" for x in figures]
        rate = flops[case.name] / 1e9 / figures[2]
        share = f"{rate / peaks[case.precision]:6.0%}" if case.precision in peaks else ""
        # the reference's fastest run of this case (its names have no precision suffix), beside our fastest
        key = max((k for k in (references[0] if references else {}) if case.name.startswith(k)), key=len, default=None)
        if key:
            fastest = min(r[key] for r in references)
            ms = fastest / (case.per_token or 1)
            text = f"{ms:.1f} ms{'/tok' * bool(case.per_token)}: {fastest / 1000 / figures[1]:.1f}x"
            if args.pairs > 1:  # each pair's ratio of fastest runs, their median
                pair = statistics.median(r[key] / 1000 / min(wall[case.name])
                                         for r, (wall, _) in zip(references, rounds, strict=True))
                text += f", pairs' median {pair:.1f}x"
            case = dataclasses.replace(case, reference=text)
        print(f"{case.name:48} {shown[0]:>13} {shown[1]:>13} {shown[2]:>13} {flops[case.name] / 1e9:7.1f} "
              f"{rate:8.1f} {share:>6}   {case.reference}")
    for short in [c.name for c in cases if c.name.startswith("ar caption 32, ")]:  # each precision's, cached or not
        kind, long_ = short.removeprefix("ar caption 32, "), short.replace("ar caption 32, ", "ar caption 64, ")
        if long_ in times:
            wall, cpu_ = ((statistics.median(d[long_]) - statistics.median(d[short])) / 32 * 1000 for d in (times, cpu))
            print(f"{'ar marginal token, ' + kind:48} {wall:10.1f} ms {'':>13} {cpu_:10.1f} ms")


if __name__ == "__main__":
    main()
