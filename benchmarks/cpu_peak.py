"""The arithmetic peak of one core, from its instructions: fp32 FMAs and int8 dot products (AVX2).

The speed benchmarks read each case against a large matmul's rate in the same precision ("of mm" in
``generate.py``, MFU in ``train_step.py``); that is a kernel's best, not the machine's. This compiles
(with the system's C compiler) two loops of independent register-only instructions and times them:

* fp32: ``vfmadd231ps`` on 8 floats, 2 FLOPs each;
* int8: the u8 x s8 dot product as fbgemm's AVX2 kernels compute it, ``vpmaddubsw`` (pairs of products
  to int16), ``vpmaddwd`` by ones (to int32), ``vpaddd``: 32 multiply-adds, 64 ops, per three
  instructions.

A case's floor on this core is then its FLOPs at these rates: no kernel computes faster than its
instructions issue. Linux or macOS with ``cc`` and an x86-64 CPU with AVX2 and FMA.

    python benchmarks/cpu_peak.py [--seconds 0.5] [--repeats 5]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

# Each loop keeps ten independent chains, more than latency x throughput needs (fp32: 4 cycles x 2 FMAs
# a cycle; int8: ~7-10 cycles x 1 dot step a cycle on two multiply ports; 8 chains measured 10% less,
# 12 spilled), and returns a sum of them, so the compiler cannot drop the work.
SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>

/* ten named accumulators, not an array: at -O2 an array's loop is not unrolled and every step goes
   through memory, which measured a third of the FMA rate */
#define EACH(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9)

double fp32_fma(int64_t iters) {
    const __m256 a = _mm256_set1_ps(1.0000001f), b = _mm256_set1_ps(0.9999999f);
#define INIT(i) __m256 acc##i = _mm256_set1_ps((float)i);
#define STEP(i) acc##i = _mm256_fmadd_ps(a, acc##i, b);
#define SUM(i) total = _mm256_add_ps(total, acc##i);
    EACH(INIT)
    for (int64_t n = 0; n < iters; n++) { EACH(STEP) }
    __m256 total = _mm256_setzero_ps();
    EACH(SUM)
    float out[8], sum = 0;
    _mm256_storeu_ps(out, total);
    for (int i = 0; i < 8; i++) sum += out[i];
    return sum;
#undef INIT
#undef STEP
#undef SUM
}

/* each chain feeds its own accumulator's bytes back in as the unsigned operand, so no two products are
   the same expression (nothing to hoist or share) and the chains stay independent of one another */
double int8_dot(int64_t iters) {
    const __m256i b = _mm256_set1_epi8(-2), ones = _mm256_set1_epi16(1);
#define INIT(i) __m256i acc##i = _mm256_set1_epi32(i * 77 + 1);
#define STEP(i) acc##i = _mm256_add_epi32(acc##i, _mm256_madd_epi16(_mm256_maddubs_epi16(acc##i, b), ones));
#define SUM(i) total = _mm256_add_epi32(total, acc##i);
    EACH(INIT)
    for (int64_t n = 0; n < iters; n++) { EACH(STEP) }
    __m256i total = _mm256_setzero_si256();
    EACH(SUM)
    int32_t out[8];
    _mm256_storeu_si256((__m256i *)out, total);
    double sum = 0;
    for (int i = 0; i < 8; i++) sum += out[i];
    return sum;
}
"""
# operations per loop iteration: fp32 10 FMAs x 8 lanes x 2; int8 10 x 32 multiply-adds x 2
OPS = {"fp32_fma": 10 * 8 * 2, "int8_dot": 10 * 32 * 2}


def build(folder: Path) -> ctypes.CDLL:
    """Compile the loops into a shared library in ``folder`` -> loaded."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("cpu_peak.py: no C compiler (cc or gcc, or $CC) to build its loops with")
    source, library = folder / "peak.c", folder / "peak.so"
    source.write_text(SOURCE)
    subprocess.run([compiler, "-O2", "-mavx2", "-mfma", "-shared", "-fPIC", str(source), "-o", str(library)],
                   check=True)
    lib = ctypes.CDLL(str(library))
    for name in OPS:
        getattr(lib, name).argtypes, getattr(lib, name).restype = [ctypes.c_int64], ctypes.c_double
    return lib


def rate(function, ops_per_iter: int, seconds: float, repeats: int) -> float:
    """GOP/s of ``function``, the best of ``repeats`` runs of about ``seconds`` each (a sibling
    thread or the VM's neighbours only ever slow a run down)."""
    iters = 1 << 16
    while True:  # scale to the requested duration
        start = time.perf_counter()
        function(iters)
        took = time.perf_counter() - start
        if took > seconds / 4:
            break
        iters *= 4
    iters = max(1, int(iters * seconds / took))
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        function(iters)
        best = max(best, iters * ops_per_iter / (time.perf_counter() - start) / 1e9)
    return best


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=0.5, help="length of one timed run")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per loop (the fastest counts)")
    args = p.parse_args(argv)
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise SystemExit(f"cpu_peak.py: its loops are x86-64 AVX2 instructions, and this is {platform.machine()}")
    with tempfile.TemporaryDirectory() as folder:
        lib = build(Path(folder))
        peaks = {name: rate(getattr(lib, name), ops, args.seconds, args.repeats) for name, ops in OPS.items()}
    print(f"one core, fastest of {args.repeats} runs of {args.seconds} s:")
    print(f"  fp32 FMA (vfmadd231ps ymm)                 {peaks['fp32_fma']:7.1f} GFLOP/s")
    print(f"  int8 dot (vpmaddubsw, vpmaddwd, vpaddd)    {peaks['int8_dot']:7.1f} GOP/s (2 per multiply-add)")
    print(f"  int8 / fp32                                {peaks['int8_dot'] / peaks['fp32_fma']:7.2f}")


if __name__ == "__main__":
    main()
