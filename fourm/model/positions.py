"""Fixed sine-cosine positions: 1D for sequences and globals, 2D for patch grids."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor


def sincos_1d(length: int, dim: int) -> Tensor:
    """(length, dim): the Transformer's fixed positions (Vaswani et al. 2017), sin half then cos."""
    if dim % 2:
        raise ValueError(f"sine-cosine positions need an even width, not {dim}")
    freqs = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angles = torch.arange(length, dtype=torch.float64)[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(side: int, dim: int) -> Tensor:
    """(side * side, dim), row-major like the patch order ``(h w)``: half the width encodes the row,
    half the column (MAE, arXiv 2111.06377)."""
    if dim % 4:
        raise ValueError(f"2D sine-cosine positions need a width divisible by 4, not {dim}")
    rows = sincos_1d(side, dim // 2)[:, None, :].expand(side, side, dim // 2)
    cols = sincos_1d(side, dim // 2)[None, :, :].expand(side, side, dim // 2)
    return rearrange(torch.cat([rows, cols], dim=-1), "h w d -> (h w) d")
