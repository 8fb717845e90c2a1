"""Multi-head self- and cross-attention, with a KV cache.

Attention goes through torch's fused SDPA (flash / memory-efficient kernels where the device has them),
except on a CPU where timing finds two batched matmuls around a softmax faster (:func:`attention_kernel`).
Masks are boolean, built once per forward for the whole batch (:func:`attention_mask`) and shared by
every layer. Head splits and merges are views and permutes rather than einops patterns (the pattern is
in a comment beside each): a decode step runs 36 of them, and on a 2-core CPU each einops call cost
~14 us against ~5 for the view, in a step of ~10 ms.

Shape letters: B batch, H heads, N / Nq / Nk tokens (queries, keys), D model width, d head width.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import NamedTuple

import torch
import torch.nn.functional as F
from rotary_embedding_torch import apply_rotary_emb
from torch import Tensor, nn

from fourm.model.packing import Packing, pack, unpack


class AttentionMask(NamedTuple):
    allowed: Tensor  # (B, 1, Nq or 1, Nk) bool: True where a query may attend a key
    # (B, 1, Nq or 1, 1) bool: True where a query may attend nothing (its output is zeroed); None where no
    # query is such, as found on a CPU (checking on a GPU would wait for it), which skips that pass
    keyless: Tensor | None
    # on a CPU, ``allowed`` as 0 / -inf in fp32, which the matmul kernel adds to its scores: compiled, its
    # softmax ran at a third of the speed reading a bool mask (GPUs keep their fused kernels: None there)
    bias: Tensor | None = None


def attention_mask(allowed: Tensor) -> AttentionMask:
    """``(B, Nq, Nk)`` (or broadcastable ``(B, 1, Nk)``) bool -> the form every layer takes.

    A query with no key to attend (a padded decoder token; any token of a sample with no input at
    all, as in unconditional generation) would divide 0 by 0 in the softmax, and the fused kernels
    disagree on what comes out. Such rows attend everything instead and their output is zeroed,
    the same on every backend: a decoder with no input gets nothing from cross-attention.
    """
    keyless = ~allowed.any(-1, keepdim=True)
    allowed = (allowed | keyless)[:, None]
    bias = None
    if allowed.device.type == "cpu":
        bias = torch.zeros(allowed.shape, device=allowed.device).masked_fill_(~allowed, float("-inf"))
        if not keyless.any():
            keyless = None
    return AttentionMask(allowed, None if keyless is None else keyless[:, None], bias)


# (device type, compute dtype, with backward) -> (the fastest kernel, the fastest with dropout): timed once
# per process; a plain lookup, so that compiled code reads it without a graph break
_KERNEL: dict[tuple[str, torch.dtype, bool], tuple[str, str]] = {}


def attention_kernel(device: torch.device, dtype: torch.dtype, backward: bool = True, dropout: bool = False) -> str:
    """The fastest way to attend in ``dtype`` on this device, for training (``backward``) or inference:
    ``"sdpa"`` (torch's fused kernel), ``"sdpa_fp32"`` (the same on fp32 copies) or ``"matmul"``
    (:class:`MatmulAttention`; it has no dropout, so ``dropout`` rules it out).

    GPUs and full precision take torch's fused kernels. In bf16 on a CPU each is timed once per process
    and case, not chosen from CPU flags, so a future kernel that wins is used as it is. In the train
    step at the reference's tiny shapes (2-core Xeon with AMX, bf16, compiled), attention's 18 calls a
    step took 215 ms on fp32 copies (torch's bf16 flash backward is 3x slower still) and ~65 ms as
    matmuls. Call it outside ``torch.compile`` (the training loop and :meth:`FourM.compile` do) so that
    compiled code only reads the decision.
    """
    key = (device.type, dtype, backward)
    if key not in _KERNEL and (device.type != "cpu" or dtype.itemsize >= 4):
        # full precision keeps torch's kernel: not timed, so two runs (a resumed one) compute the same
        _KERNEL[key] = ("sdpa", "sdpa")
    if key not in _KERNEL:
        timings = _time_kernels(device, dtype, backward)
        _KERNEL[key] = (min(timings, key=timings.__getitem__),
                        min((k for k in timings if k != "matmul"), key=timings.__getitem__))
    return _KERNEL[key][dropout]


def _time_kernels(device: torch.device, dtype: torch.dtype, backward: bool) -> dict[str, float]:
    """Seconds per call of each kernel at (8, 6, 128, 64) with a causal mask (about 0.5 s in all),
    interleaved, medians of 3; the native kernel is preferred unless another is 10% faster (the
    others' casts and copies cost a little outside the timing's steady state)."""
    import time

    kernels = ["sdpa", "sdpa_fp32", "matmul"]
    # the first call may come from generation, under no_grad or inference_mode, or from a forward pass
    # under autocast, which would cast the fp32 copies back to bf16 and time bf16 twice: 24 ms a layer's
    # backward in the train step benchmark (bf16 kept) against 6 ms once decided outside autocast
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        q, k, v = (torch.randn(8, 6, 128, 64, device=device, dtype=dtype, requires_grad=backward) for _ in range(3))
        mask = attention_mask(torch.ones(8, 128, 128, dtype=torch.bool, device=device).tril())

        def step(kernel: str) -> float:
            start = time.perf_counter()
            out = _KERNELS[kernel](q, k, v, mask, 0.0)
            if backward:
                out.float().sum().backward()
            return time.perf_counter() - start

        samples: dict[str, list[float]] = {kernel: [] for kernel in kernels}
        for kernel in kernels:
            step(kernel)  # warm-up: kernel selection, first-touch
        for _ in range(3):
            for kernel in kernels:
                samples[kernel].append(step(kernel))
    timings = {kernel: sorted(s)[1] for kernel, s in samples.items()}
    timings["sdpa"] /= 1.1
    return timings


class MatmulAttention(torch.autograd.Function):
    """softmax(q kᵀ / √d, masked) v as two batched matmuls in the inputs' dtype around a softmax in fp32 (or wider),
    with its backward written out: it reuses the probabilities the forward saved (in the inputs' dtype,
    as flash kernels round them for their second matmul), so it is four matmuls and two elementwise passes.

    Where bf16 matmuls are native (AMX) these run several times faster than the CPU flash kernel's
    inner loops, and compiled, the softmax and its backward fuse into one pass each. The saved
    probabilities cost memory quadratic in the tokens, which a CPU step at these sizes can spare;
    :func:`attention_kernel` takes this only where it is timed faster.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
        """q (B, H, Nq, d), k and v (B, H, Nk, d), bias (B, 1, Nq or 1, Nk): 0, or -inf where masked."""
        scale, wide = q.shape[-1] ** -0.5, torch.promote_types(q.dtype, torch.float32)  # the softmax's dtype
        scores = torch.matmul(q, k.transpose(-1, -2))
        # one pass to the softmax's dtype (eager, each op is a pass over the scores; compiled, all fuse)
        scores = scores.to(wide).mul_(scale) if bias is None else torch.add(bias.to(wide), scores, alpha=scale)
        probs = scores.softmax(-1).to(q.dtype)
        out = probs @ v
        ctx.save_for_backward(q, k, v, probs, out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, k, v, probs, out = ctx.saved_tensors
        grad = grad.to(q.dtype)
        grad_v = probs.transpose(-1, -2) @ grad
        wide = torch.promote_types(q.dtype, torch.float32)
        # the softmax's backward: P * (dP - rowsum(P * dP)), where rowsum(P * dP) = rowsum(dO * O); two
        # passes over the scores, and the scale applied to the (4x smaller at d = 32) matmul outputs
        delta = (grad.to(wide) * out.to(wide)).sum(-1, keepdim=True)
        grad_scores = torch.sub(grad @ v.transpose(-1, -2), delta).mul_(probs).to(q.dtype)
        grad_q = (grad_scores @ k).mul_(ctx.scale)
        grad_k = (grad_scores.transpose(-1, -2) @ q).mul_(ctx.scale)
        return grad_q, grad_k, grad_v, None


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask | None, dropout: float) -> Tensor:
    attn_mask = None
    if mask is not None:
        # the additive form where there is one (a CPU) in q's dtype: handed the bool mask, torch turns it into
        # that form itself, at every call of every layer
        attn_mask = mask.bias if mask.bias is not None and mask.bias.dtype == q.dtype else mask.allowed
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)


def _sdpa_fp32(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask | None, dropout: float) -> Tensor:
    return _sdpa(q.float(), k.float(), v.float(), mask, dropout).to(q.dtype)


def _matmul(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask | None, dropout: float) -> Tensor:
    if mask is not None and mask.bias is None:
        raise ValueError("the matmul attention kernel needs the mask's bias: build masks with attention_mask()")
    # contiguous copies: handed views of the fused qkv projection, inductor (torch 2.13, CPU) compiled a
    # decoder block to NaN (test_attention's compiled decoder block checks it)
    return MatmulAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), None if mask is None else mask.bias)


# (B, H, Nq, d), (B, H, Nk, d) x2, mask, dropout -> (B, H, Nq, d) in q's dtype
_KERNELS: dict[str, Callable[[Tensor, Tensor, Tensor, AttentionMask | None, float], Tensor]] = {
    "sdpa": _sdpa, "sdpa_fp32": _sdpa_fp32, "matmul": _matmul}


def attend(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask | None, dropout: float = 0.0) -> Tensor:
    """(B, H, Nq, d), (B, H, Nk, d) x2 -> (B, Nq, H * d), computed in the dtype autocast would pick."""
    device = q.device
    autocast = torch.is_autocast_enabled(device.type)
    dtype = torch.get_autocast_dtype(device.type) if autocast else q.dtype
    backward = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    kernel = attention_kernel(device, dtype, backward, dropout > 0)
    # the kernels cast for themselves: autocast would cast fp32 copies straight back to bf16
    with torch.autocast(device.type, enabled=False) if autocast else nullcontext():
        if q.dtype != dtype or k.dtype != dtype or v.dtype != dtype:
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        out = _KERNELS[kernel](q, k, v, mask, dropout)
        if mask is not None and mask.keyless is not None:
            out = out.masked_fill(mask.keyless, 0.0)
    return out.transpose(1, 2).flatten(2)  # b h n d -> b n (h d)


class KVCache:
    """Keys and values of the tokens one self-attention layer has seen so far; grows by appending, or by
    writing tokens at given slots (:meth:`write`).

    Incremental decoding feeds only the new tokens; their keys and values are appended here and
    they attend over everything cached, so a step costs O(new tokens) projections, not O(length).
    """

    def __init__(self):
        self.k: Tensor | None = None  # (B, H, capacity, d): the first ``length`` positions hold tokens
        self.v: Tensor | None = None
        self.length = 0

    def __len__(self) -> int:
        return self.length

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add the new tokens' keys and values (B, H, n, d) -> all of them so far (views of the buffers).

        The buffers grow by doubling, so a step writes its tokens in place instead of copying the whole
        cache into a new tensor (a torch.cat per layer and step)."""
        end = self.length + k.shape[2]
        self._reserve(end, k, v)
        self.k[:, :, self.length: end], self.v[:, :, self.length: end] = k, v
        self.length = end
        return self.contents()

    def write(self, k: Tensor, v: Tensor, slots: Tensor, length: int) -> tuple[Tensor, Tensor]:
        """Put the tokens' keys and values (B, H, n, d) at ``slots`` (B, n), over what a slot held, and make the
        cache ``length`` long (more than every slot) -> its contents (views of the buffers)."""
        self._reserve(length, k, v)
        index = slots[:, None, :, None].expand_as(k)
        self.k.scatter_(2, index, k)
        self.v.scatter_(2, index, v)
        self.length = length
        return self.contents()

    def contents(self) -> tuple[Tensor, Tensor]:
        """The keys and values so far (B, H, length, d): views of the buffers."""
        if self.k is None:
            raise ValueError("the KV cache holds nothing yet: nothing was appended to it")
        return self.k[:, :, : self.length], self.v[:, :, : self.length]

    def _reserve(self, length: int, k: Tensor, v: Tensor) -> None:
        """Room for ``length`` tokens in buffers shaped as ``k`` and ``v`` (doubling, so growth is rare)."""
        if self.k is None or length > self.k.shape[2]:
            capacity = max(length, 16, 2 * (0 if self.k is None else self.k.shape[2]))
            self.k, self.v = self._grown(self.k, k, capacity), self._grown(self.v, v, capacity)

    def _grown(self, old: Tensor | None, new: Tensor, capacity: int) -> Tensor:
        # zeros, not empty memory: a slot :meth:`write` leaves unwritten in some row is masked there, and a masked
        # key must still be finite (NaN times a zero weight is NaN in the softmax)
        buffer = new.new_zeros(*new.shape[:2], capacity, new.shape[3])
        if old is not None:
            buffer[:, :, : self.length] = old[:, :, : self.length]
        return buffer


class CacheSlots(NamedTuple):
    """A :class:`KVCache` with where a step's tokens go in it (:meth:`KVCache.write`): handed to a layer as its
    cache, its ``append`` writes the tokens at ``slots`` (B, n) and makes the cache ``length`` long."""

    cache: KVCache
    slots: Tensor
    length: int

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return self.cache.write(k, v, self.slots, self.length)


class SelfAttention(nn.Module):
    """Queries, keys and values from the same tokens (one fused projection)."""

    def __init__(self, dim: int, heads: int, use_bias: bool = False, dropout: float = 0.0,
                 qk_norm: Callable[[int], nn.Module] | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=use_bias)
        self.proj = nn.Linear(dim, dim, bias=use_bias)
        # qk-norm (Dehghani et al. 2023, arXiv 2302.05442) keeps attention logits bounded at scale
        self.q_norm = qk_norm(dim // heads) if qk_norm else nn.Identity()
        self.k_norm = qk_norm(dim // heads) if qk_norm else nn.Identity()

    def forward(self, x: Tensor, mask: AttentionMask | None = None, cache: KVCache | CacheSlots | None = None,
                rotary: Tensor | None = None, packing: Packing | None = None) -> Tensor:
        """x (B, N, D) -> (B, N, D), or with ``packing`` the valid rows (n, D) -> (n, D). With ``cache``,
        x holds only the new tokens; the mask is (B, 1, N, T + N) over cached + new keys. ``rotary``
        (B, 1, N, d): angles that rotate each token's query and key (RoPE), so that their dot product
        depends on where the two tokens lie relative to each other."""
        qkv = unpack(self.qkv(x), packing)
        q, k, v = qkv.unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)  # b n (3 h d) -> 3 b h n d
        q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None:
            q, k = apply_rotary_emb(rotary, q), apply_rotary_emb(rotary, k)
        if cache is not None:
            k, v = cache.append(k, v)
        return self.proj(pack(attend(q, k, v, mask, self.dropout if self.training else 0.0), packing))


class CrossAttention(nn.Module):
    """Queries from the decoder tokens, keys and values from the encoder output (the memory)."""

    def __init__(self, dim: int, heads: int, use_bias: bool = False, dropout: float = 0.0,
                 qk_norm: Callable[[int], nn.Module] | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim, bias=use_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=use_bias)
        self.proj = nn.Linear(dim, dim, bias=use_bias)
        self.q_norm = qk_norm(dim // heads) if qk_norm else nn.Identity()
        self.k_norm = qk_norm(dim // heads) if qk_norm else nn.Identity()

    def project_kv(self, memory: Tensor, packing: Packing | None = None) -> tuple[Tensor, Tensor]:
        """memory (B, Ne, D), or with ``packing`` its valid rows (n, D) -> keys, values (B, H, Ne, d): computed
        once per generation, then cached."""
        kv = unpack(self.kv(memory), packing)
        k, v = kv.unflatten(-1, (2, self.heads, -1)).permute(2, 0, 3, 1, 4)  # b n (2 h d) -> 2 b h n d
        return self.k_norm(k), v

    def forward(self, x: Tensor, memory: Tensor | None = None, mask: AttentionMask | None = None,
                kv: tuple[Tensor, Tensor] | None = None, packing: Packing | None = None,
                memory_packing: Packing | None = None) -> Tensor:
        """x (B, Nq, D), or with ``packing`` the queries' valid rows (n, D); memory (B, Ne, D), or with
        ``memory_packing`` its valid rows, or its cached ``kv`` -> x's shape."""
        k, v = kv if kv is not None else self.project_kv(memory, memory_packing)
        q = unpack(self.q(x), packing)
        q = self.q_norm(q.unflatten(-1, (self.heads, -1)).transpose(1, 2))  # b n (h d) -> b h n d
        return self.proj(pack(attend(q, k, v, mask, self.dropout if self.training else 0.0), packing))
