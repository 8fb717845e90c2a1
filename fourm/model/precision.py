"""Which floating-point precision a model computes in: bf16 where this machine runs it faster, by
measurement. Training (``fourm.train.loop``) and generation (``fourm.generation``) both ask here.

Generation may also run on int8 weights (:func:`quantize_int8`): a token-by-token caption multiplies one
row by every decoder weight, so its time is reading the weights, and int8 reads a quarter of fp32's bytes
(bf16 does not help there: this CPU build's batch-1 bf16 matmuls ran slower than fp32's).
"""

from __future__ import annotations

import functools
import time

import torch

PRECISIONS = ("auto", "bf16", "fp32")
GENERATION_PRECISIONS = (*PRECISIONS, "int8")  # int8: opt-in, it changes the outputs slightly


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


def check_precision(precision: str, allowed: tuple[str, ...] = PRECISIONS) -> str:
    if precision not in allowed:
        raise ValueError(f"precision must be one of {', '.join(allowed)}, not {precision!r}")
    return precision


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` for inference whose ``nn.Linear`` layers hold int8 weights (one scale per
    output channel) and quantize their inputs on the fly: PyTorch's dynamic quantization (fbgemm /
    oneDNN kernels), CPU only. Subclasses of ``nn.Linear`` (the linear pixel stem) stay as they are.

    A cached caption token read the tiny model's 96 MB of fp32 weights in 7.3 ms on one core of a
    2-core Xeon, the same layers in int8 in 2.2 ms (``benchmarks/generate.py --precision int8``).
    """
    import copy
    import warnings

    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("int8 generation runs on the CPU; on a GPU use bf16")
    with warnings.catch_warnings():  # torch.ao's note that torchao is where quantization is moving
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        quantized = quantize_dynamic(copy.deepcopy(model).eval(), {torch.nn.Linear: per_channel_dynamic_qconfig},
                                     dtype=torch.qint8)
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    for parent in list(quantized.modules()):
        for name, child in parent.named_children():
            if type(child) is dynamic:
                setattr(parent, name, Int8Linear(child))
    return quantized


class Int8Linear(torch.nn.Module):
    """One of :func:`quantize_int8`'s layers: int8 weights packed for fbgemm, called straight through the
    op. torch.ao's module around the same op cost 13-15 us a call at batch 1 on a 2-core CPU (48 against
    35 us for a 384 -> 1152 layer), and a cached caption token makes 37 such calls."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.packed = layer._packed_params._packed_params  # weights and bias, prepacked
        # the op's C++ entry: the Python overload first checks every call's arguments for script objects to
        # trace, 5-6 us of a 23 us call at batch 1 (a caption token makes 38 such calls)
        self.op = torch.ops.quantized.linear_dynamic.default._op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x, self.packed, True)  # reduce_range: fbgemm's 7-bit activations, as torch.ao's module

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per channel"
