"""The valid tokens of a padded (B, N) batch as one list of rows, for the row-wise work of the trunk.

A batch holds each sample's tokens padded to the budget. Masked as the reference masks its benchmark's
batch (budget a 12-16-token caption cannot use stays empty), 37% of the encoder's rows and 46% of the
decoder's are padding; in the demo's batches 11% and 28%. Everything in a block but attention works row
by row -- the norms, the qkv / output projections, the MLP, which hold nearly all of its FLOPs -- so the
blocks carry the residual stream as the valid rows alone, (n, D), and only attention sees the padded
(B, N) layout: its projections' outputs are scattered into it and its output gathered back
(:func:`unpack` and :func:`pack`, a pass over (n, C) each, against the padding's share of the matmuls).

Row counts are bucketed as a head's are (:func:`~fourm.model.embeddings.pad_rows`: a compiled block
and oneDNN's bf16 kernels see a few sizes, not any). The extra rows gather the batch's first valid token
and scatter into a spare row past the end of the padded layout, which attention never reads: their
gradient is zero, so they add nothing to the first token's.
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor

from fourm.model.embeddings import pad_rows


class Packing(NamedTuple):
    gather: Tensor  # (n,) flat positions (into B * N) of the rows, in order; bucket padding repeats the first
    scatter: Tensor  # (n,) the same with the padding sent to B * N, the spare row
    empty: Tensor  # positions (into B * N) that no row lands on: the batch's padding (and the spare row, see of)
    batch: int
    tokens: int  # N, per sample

    @classmethod
    def of(cls, valid: Tensor, like: Tensor, compiled: bool = False) -> Packing | None:
        """``valid`` (B, N) bool -> where its valid tokens are, or None where packing would save no rows
        (a full batch, or one a bucket rounds back up to B * N). ``like``: a tensor of the rows' dtype,
        which decides the bucketing (:func:`~fourm.model.embeddings.pads_rows`).

        ``compiled``, for compiled blocks: one layout whatever the batch, so one graph. Always a packing,
        and ``empty`` also lists the spare row twice: never 0 or 1 long, sizes that torch.compile gives
        graphs of their own."""
        b, n = valid.shape
        index = valid.flatten().nonzero().squeeze(1)
        gather = pad_rows(index, like)
        if gather.numel() >= b * n and not compiled:
            return None
        scatter = F.pad(index, (0, gather.numel() - index.numel()), value=b * n)
        empty = (~valid).flatten().nonzero().squeeze(1)
        return cls(gather, scatter, F.pad(empty, (0, 2), value=b * n) if compiled else empty, b, n)


def mark_dynamic(rows: Tensor, p: Packing) -> None:
    """Tell ``torch.compile`` that the row counts of ``rows`` and ``p`` change from batch to batch. Unmarked,
    a compiled block compiled for the first batch's counts, then again with them symbolic at the second
    (cold, ~25 s a block stack's forward and backward on a 2-core CPU)."""
    from torch._dynamo import maybe_mark_dynamic  # torch.compile's: only where a block is compiled

    for t in (rows, p.gather, p.scatter, p.empty):
        maybe_mark_dynamic(t, 0)


def pack(x: Tensor, p: Packing | None) -> Tensor:
    """(B, N, C) -> (n, C), the packed rows; unchanged without a packing."""
    return x if p is None else x.flatten(0, 1).index_select(0, p.gather)


def unpack(rows: Tensor, p: Packing | None) -> Tensor:
    """(n, C) -> (B, N, C), zeros where no row lands; unchanged without a packing."""
    if p is None:
        return rows
    # zeros written only where no row lands: a zero-filled buffer first cost 12x as much (the fill,
    # then index_copy's out-of-place clone of it, both over fresh pages)
    out = rows.new_empty(p.batch * p.tokens + 1, rows.shape[-1]).index_copy_(0, p.scatter, rows)
    return out.index_fill_(0, p.empty, 0.0)[:-1].view(p.batch, p.tokens, -1)
