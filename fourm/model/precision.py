"""Which floating-point precision a model computes in: bf16 where this machine runs it faster, by
measurement. Training (``fourm.train.loop``) and generation (``fourm.generation``) both ask here."""

from __future__ import annotations

import functools
import time

import torch

PRECISIONS = ("auto", "bf16", "fp32")


@functools.cache
def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run clearly faster than fp32 here, decided by timing both (once per process).

    On CPUs with AMX or AVX512-BF16 bf16 is several times faster; without them it is emulated and
    several times slower (7.6x measured on an AVX2 EPYC). CPU flags only hint at which: a VM may hide
    them or the library may not use them, so the decision is a measurement of what this process gets
    (a (256, 512) x (512, 512) matmul, about 10 ms in all). On CUDA, bf16 is used wherever supported.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    timings = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(256, 512, dtype=dtype), torch.randn(512, 512, dtype=dtype)
        a @ b  # warm-up: kernel selection, first-touch
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            a @ b
            runs.append(time.perf_counter() - start)
        timings[dtype] = sorted(runs)[1]  # the median
    return timings[torch.bfloat16] * 1.25 < timings[torch.float32]


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    return precision


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return precision
