"""Multi-head self- and cross-attention on ``F.scaled_dot_product_attention``, with a KV cache.

All attention goes through torch's fused SDPA (flash / memory-efficient kernels where the device
has them), never a hand-written softmax. Masks are boolean, built once per forward for the whole
batch (:func:`attention_mask`) and shared by every layer.

Shape letters: B batch, H heads, N / Nq / Nk tokens (queries, keys), D model width, d head width.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
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


def attend(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask | None, dropout: float = 0.0) -> Tensor:
    """(B, H, Nq, d), (B, H, Nk, d) x2 -> (B, Nq, H * d)."""
    if mask is None:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.allowed, dropout_p=dropout)
        out = out.masked_fill(~mask.has_key, 0.0)
    return rearrange(out, "b h n d -> b n (h d)")


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

    def forward(self, x: Tensor, mask: AttentionMask | None = None, cache: KVCache | None = None) -> Tensor:
        """x (B, N, D) -> (B, N, D). With ``cache``, x holds only the new tokens; the mask is
        (B, 1, N, T + N) over cached + new keys."""
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
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
