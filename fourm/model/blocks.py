"""Pre-norm transformer blocks of the FourM encoder and decoder, with a SwiGLU MLP.

As in 4M-21 (arXiv 2406.09406): pre-norm residual blocks, SwiGLU MLP (Shazeer 2020, arXiv
2002.05202), no biases by default. The decoder block adds cross-attention to the encoder output
between its self-attention and its MLP.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from fourm.model.attention import AttentionMask, CacheSlots, CrossAttention, KVCache, SelfAttention
from fourm.model.packing import Packing
from fourm.registry import Registry

NORMS: Registry[Callable[[int, bool], nn.Module]] = Registry("norm", {  # (dim, use_bias) -> norm
    "layernorm": lambda dim, use_bias: nn.LayerNorm(dim, bias=use_bias),
    "rmsnorm": lambda dim, use_bias: nn.RMSNorm(dim),
})


def make_norm(kind: str, dim: int, use_bias: bool = False) -> nn.Module:
    return NORMS[kind](dim, use_bias)


def swiglu_hidden(dim: int, mlp_ratio: float) -> int:
    """Hidden width giving a SwiGLU (3 matrices) the parameters of a plain ``mlp_ratio`` MLP (2
    matrices), rounded up to a multiple of 8; 768 x 4 -> 2048, which reproduces the reference's
    198M trunk for the base size."""
    hidden = int(2 * mlp_ratio * dim / 3)
    return (hidden + 7) // 8 * 8


class SwiGLU(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float = 4.0, use_bias: bool = False):
        super().__init__()
        hidden = swiglu_hidden(dim, mlp_ratio)
        self.w12 = nn.Linear(dim, 2 * hidden, bias=use_bias)  # gate and value in one matmul
        self.w3 = nn.Linear(hidden, dim, bias=use_bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class GeluMLP(nn.Sequential):
    """ViT's Linear-GELU-Linear MLP (the image tokenizers' ViT uses it; keys ``0``, ``2``)."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, use_bias: bool = False):
        hidden = int(dim * mlp_ratio)
        super().__init__(nn.Linear(dim, hidden, bias=use_bias), nn.GELU(), nn.Linear(hidden, dim, bias=use_bias))


MLPS = Registry("mlp", {"swiglu": SwiGLU, "gelu": GeluMLP})


def residual_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout on a residual branch; nothing at all (not even a call) in eval mode or at ``p`` 0: a decode
    step has 18 branches, and an ``nn.Dropout`` module's call cost ~7 us each on a 2-core CPU."""
    return F.dropout(x, p, training=True) if training and p > 0 else x


class EncoderBlock(nn.Module):
    """x + SelfAttn(norm(x)), then + MLP(norm(x)); bidirectional over the valid input tokens.

    ``zero_init``: the residual branches' output projections start at zero, so the block starts as
    the identity (small models on a short budget learn faster so, see the image tokenizer's ViT).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, use_bias: bool = False,
                 norm: str = "layernorm", use_qk_norm: bool = False, dropout: float = 0.0, mlp: str = "swiglu",
                 zero_init: bool = False):
        super().__init__()
        MLPS.check(mlp)
        qk_norm = partial(make_norm, norm, use_bias=use_bias) if use_qk_norm else None
        self.norm1 = make_norm(norm, dim, use_bias)
        self.attn = SelfAttention(dim, heads, use_bias, dropout, qk_norm)
        self.norm2 = make_norm(norm, dim, use_bias)
        self.mlp = MLPS[mlp](dim, mlp_ratio, use_bias)
        self.dropout = dropout
        if zero_init:
            last_mlp = [m for m in self.mlp.modules() if isinstance(m, nn.Linear)][-1]
            for p in (*self.attn.proj.parameters(), *last_mlp.parameters()):
                nn.init.zeros_(p)

    def forward(self, x: Tensor, mask: AttentionMask | None = None, rotary: Tensor | None = None,
                packing: Packing | None = None, cache: CacheSlots | None = None) -> Tensor:
        """x (B, N, D), or with ``packing`` its valid rows (n, D) (``fourm.model.packing``); with ``cache``, x
        holds a step's tokens, which go into the cache and attend to every token it holds
        (:meth:`~fourm.model.fourm.FourM.encode_step`)."""
        attn = self.attn(self.norm1(x), mask, cache, rotary=rotary, packing=packing)
        x = x + residual_dropout(attn, self.dropout, self.training)
        return x + residual_dropout(self.mlp(self.norm2(x)), self.dropout, self.training)


class DecoderBlock(nn.Module):
    """Self-attention (within a target group), cross-attention to the memory, MLP; all pre-norm."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, use_bias: bool = False,
                 norm: str = "layernorm", use_qk_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        qk_norm = partial(make_norm, norm, use_bias=use_bias) if use_qk_norm else None
        self.norm1 = make_norm(norm, dim, use_bias)
        self.self_attn = SelfAttention(dim, heads, use_bias, dropout, qk_norm)
        self.norm2 = make_norm(norm, dim, use_bias)
        self.cross_attn = CrossAttention(dim, heads, use_bias, dropout, qk_norm)
        self.norm3 = make_norm(norm, dim, use_bias)
        self.mlp = SwiGLU(dim, mlp_ratio, use_bias)
        self.dropout = dropout

    def forward(self, x: Tensor, self_mask: AttentionMask | None, cross_mask: AttentionMask | None,
                memory: Tensor | None = None, cross_kv: tuple[Tensor, Tensor] | None = None,
                cache: KVCache | None = None, packing: Packing | None = None,
                memory_packing: Packing | None = None) -> Tensor:
        """x (B, Nd, D), or with ``packing`` its valid rows (n, D); memory (B, Ne, D), or with ``memory_packing``
        its valid rows, or its keys/values ``cross_kv`` when decoding step by step (then ``cache`` holds this
        layer's self-attention keys/values so far)."""
        p, training = self.dropout, self.training
        x = x + residual_dropout(self.self_attn(self.norm1(x), self_mask, cache, packing=packing), p, training)
        cross = self.cross_attn(self.norm2(x), memory, cross_mask, cross_kv, packing, memory_packing)
        x = x + residual_dropout(cross, p, training)
        return x + residual_dropout(self.mlp(self.norm3(x)), p, training)
