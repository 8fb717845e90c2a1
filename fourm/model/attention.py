"""Multi-head self- and cross-attention on ``F.scaled_dot_product_attention``, with a KV cache.

All attention goes through torch's fused SDPA (flash / memory-efficient kernels where the device
has them), never a hand-written softmax. Masks are boolean, built once per forward for the whole
batch (:func:`attention_mask`) and shared by every layer.

Shape letters: B batch, H heads, N / Nq / Nk tokens (queries, keys), D model width, d head width.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from rotary_embedding_torch import apply_rotary_emb
from torch import Tensor, nn


class AttentionMask(NamedTuple):
    allowed: Tensor  # (B, 1, Nq or 1, Nk) bool: True where a query may attend a key
    has_key: Tensor  # (B, 1, Nq or 1, 1) bool: False where a query may attend nothing


def attention_mask(allowed: Tensor) -> AttentionMask:
    """``(B, Nq, Nk)`` (or broadcastable ``(B, 1, Nk)``) bool -> the form every layer takes.

    A query with no key to attend (a padded decoder token; any token of a sample with no input at
    all, as in unconditional generation) would divide 0 by 0 in the softmax, and the fused kernels
    disagree on what comes out. Such rows attend everything instead and their output is zeroed,
    the same on every backend: a decoder with no input gets nothing from cross-attention.
    """
    has_key = allowed.any(-1, keepdim=True)
    return AttentionMask((allowed | ~has_key)[:, None], has_key[:, None])


# (device type, dtype, with backward) -> whether SDPA runs faster on fp32 copies: filled by timing
_SDPA_UPCAST: dict[tuple[str, torch.dtype, bool], bool] = {}


def sdpa_upcast(device: torch.device, dtype: torch.dtype, backward: bool = True) -> bool:
    """Whether attention in ``dtype`` is faster done in fp32 on this device, for training
    (``backward``) or inference (timed once per process and case).

    torch's CPU flash kernel is slower in bf16 than in fp32 for the backward pass, even where bf16
    matmuls are native: forward + backward at the reference's tiny shapes took 41 ms against 21 ms
    with fp32 copies (2-core Xeon with AMX), while its bf16 forward alone is the faster. Whether that
    holds is measured here, not assumed from the CPU, so a future kernel that wins in bf16 is used as
    it is. GPUs keep their low-precision kernels. Call it outside ``torch.compile`` (the training
    loop does, when it picks bf16) so compiled code only reads the decision.
    """
    key = (device.type, dtype, backward)
    if key not in _SDPA_UPCAST:
        _SDPA_UPCAST[key] = device.type == "cpu" and dtype != torch.float32 and _time_upcast(device, dtype, backward)
    return _SDPA_UPCAST[key]


def _time_upcast(device: torch.device, dtype: torch.dtype, backward: bool) -> bool:
    """Time SDPA at (8, 6, 128, 64) with a mask, in ``dtype`` and on fp32 copies (about 0.3 s in all);
    fp32 must win by 10% (its casts cost a little)."""
    import time

    # the first call may come from generation, under no_grad or inference_mode, or from a forward pass
    # under autocast, which would cast the fp32 copies back to bf16 and time bf16 twice: 24 ms a layer's
    # backward in the train step benchmark (bf16 kept) against 6 ms once decided outside autocast
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        q, k, v = (torch.randn(8, 6, 128, 64, device=device, dtype=dtype, requires_grad=backward) for _ in range(3))
        allowed = torch.ones(8, 1, 128, 128, dtype=torch.bool, device=device).tril()

        def step(upcast: bool) -> float:
            start = time.perf_counter()
            a, b, c = (t.float() for t in (q, k, v)) if upcast else (q, k, v)
            out = F.scaled_dot_product_attention(a, b, c, attn_mask=allowed).to(dtype)
            if backward:
                out.sum().backward()
            return time.perf_counter() - start

        timings = {}
        for upcast in (False, True):
            step(upcast)  # warm-up: kernel selection, first-touch
            timings[upcast] = sorted(step(upcast) for _ in range(3))[1]  # the median
    return timings[True] * 1.1 < timings[False]


def attend(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask | None, dropout: float = 0.0) -> Tensor:
    """(B, H, Nq, d), (B, H, Nk, d) x2 -> (B, Nq, H * d)."""
    dtype = q.dtype
    backward = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    upcast = dtype != torch.float32 and sdpa_upcast(q.device, dtype, backward)
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    # autocast would cast the fp32 copies straight back to bf16
    with torch.autocast(q.device.type, enabled=False) if upcast else contextlib.nullcontext():
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.allowed, dropout_p=dropout)
            out = out.masked_fill(~mask.has_key, 0.0)
    return rearrange(out.to(dtype), "b h n d -> b n (h d)")


class KVCache:
    """Keys and values of the tokens one self-attention layer has seen so far; grows by appending.

    Incremental decoding feeds only the new tokens; their keys and values are appended here and
    they attend over everything cached, so a step costs O(new tokens) projections, not O(length).
    """

    def __init__(self):
        self.k: Tensor | None = None  # (B, H, T, d)
        self.v: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        return k, v


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

    def forward(self, x: Tensor, mask: AttentionMask | None = None, cache: KVCache | None = None,
                rotary: Tensor | None = None) -> Tensor:
        """x (B, N, D) -> (B, N, D). With ``cache``, x holds only the new tokens; the mask is
        (B, 1, N, T + N) over cached + new keys. ``rotary`` (B, 1, N, d): angles that rotate each
        token's query and key (RoPE), so that their dot product depends on where the two tokens lie
        relative to each other."""
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None:
            q, k = apply_rotary_emb(rotary, q), apply_rotary_emb(rotary, k)
        if cache is not None:
            k, v = cache.append(k, v)
        return self.proj(attend(q, k, v, mask, self.dropout if self.training else 0.0))


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

    def project_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """memory (B, Ne, D) -> keys, values (B, H, Ne, d): computed once per generation, then cached."""
        k, v = rearrange(self.kv(memory), "b n (two h d) -> two b h n d", two=2, h=self.heads)
        return self.k_norm(k), v

    def forward(self, x: Tensor, memory: Tensor | None = None, mask: AttentionMask | None = None,
                kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x (B, Nq, D), memory (B, Ne, D) or its cached ``kv`` -> (B, Nq, D)."""
        k, v = kv if kv is not None else self.project_kv(memory)
        q = self.q_norm(rearrange(self.q(x), "b n (h d) -> b h n d", h=self.heads))
        return self.proj(attend(q, k, v, mask, self.dropout if self.training else 0.0))
