"""Per-step sampling decisions: how many tokens each step decides, at what temperature, and how a
token is drawn from logits (temperature, top-k, top-p).

Only the rows being sampled reach :func:`sample`. Top-k keeps a short candidate list from
``torch.topk``; top-p finds each row's threshold without sorting the vocabulary (``nucleus_threshold``)
and zeroes the row's weights below it where they lie (the public 4M implementation sorts every masked
position's full vocabulary with its indices at every step, 40% of its MaskGIT time on a CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fourm.registry import Registry

# fraction of the tokens still undecided after a share ``t`` in [0, 1] of the steps
MASK_SCHEDULES: Registry[Callable[[float], float]] = Registry("mask schedule", {
    "cosine": lambda t: math.cos(math.pi / 2 * t),  # MaskGIT (arXiv 2202.04200): few tokens first, many last
    "linear": lambda t: 1.0 - t,
})
# temperature multiplier at a share ``t`` of the steps (annealed to sharpen the last decisions)
TEMPERATURE_SCHEDULES: Registry[Callable[[float], float]] = Registry("temperature schedule", {
    "constant": lambda t: 1.0,
    "linear": lambda t: 1.0 - t,
    "cosine": lambda t: math.cos(math.pi / 2 * t),
})


def tokens_per_step(total: int, steps: int, schedule: str = "cosine") -> list[int]:
    """How many of ``total`` tokens each of ``steps`` steps decides: sums to ``total`` exactly, at
    least one per step while tokens remain (a schedule that would decide none in a step gets one)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, not {steps}")
    remaining = MASK_SCHEDULES[schedule]
    counts, left = [], total
    for s in range(steps):
        goal = 0 if s == steps - 1 else math.floor(total * remaining((s + 1) / steps))
        # at least one per step, and leave at least one for each later step while possible
        n = max(min(left - goal, left), min(1, left))
        n = min(n, max(left - (steps - 1 - s), min(1, left)))
        counts.append(n)
        left -= n
    return counts


def temperature_at(step: int, steps: int, temperature: float, schedule: str) -> float:
    return temperature * TEMPERATURE_SCHEDULES[schedule](step / steps)


ROW_BLOCK = 1 << 18  # logits a draw handles at once (16 rows of 16k): passes over a block stay in cache
SMALL_DRAW = 1 << 16  # logits up to which the CDF is one running sum: few operations beat a shorter pass
CDF_BLOCK = 128  # the draw's two-level CDF: a cumsum over blocks of this many tokens, then inside one
NUCLEUS_BUCKETS = 1024  # the nucleus search's histogram of each row's mass by log-weight
NUCLEUS_SPAN = 30.0  # log-weights further below the row's best share the last bucket (e^-30 of its weight)


def sample(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Draw one token per row of ``logits`` (n, V) -> ids (n,), their log-probability (n,) under the
    distribution actually sampled (after temperature and filtering: MaskGIT's confidence).

    ``temperature`` 0 is greedy. ``top_k`` 0 and ``top_p`` 1 switch those filters off. Draws run on the
    CPU, from ``generator`` (a CPU generator: one seeded stream whatever device computed the logits), in
    blocks of ``ROW_BLOCK`` logits that reuse one set of buffers.
    """
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], not {top_p}")
    logits = logits.detach().float().cpu()
    if temperature <= 0:
        logp = F.log_softmax(logits, -1)
        best, ids = logp.max(-1)
        return ids, best
    n, vocab = logits.shape
    u = torch.rand(n, generator=generator)  # one uniform per row, whatever the blocks
    if top_k > 0:
        values, cand = torch.topk(logits, min(top_k, vocab), dim=-1)  # sorted, best first
        choice, logp = _draw(_weights(values, 1.0 / temperature, top_p, ordered=True), u)
        return cand.gather(-1, choice[:, None]).squeeze(-1), logp
    ids, logp = torch.empty(n, dtype=torch.long), torch.empty(n)
    rows, scratch = max(1, ROW_BLOCK // vocab), Scratch()
    for i in range(0, n, rows):
        block = slice(i, i + rows)
        ids[block], logp[block] = _draw(_weights(logits[block], 1.0 / temperature, top_p, scratch=scratch), u[block])
    return ids, logp


class Scratch:
    """Named numpy buffers of a block's shape, reused block after block: on a CPU (a VM's above all) a fresh
    multi-megabyte temporary pays its page faults every time, and a pass over a fresh (196, 16384) tensor
    took 3-4x one over a block of rows written into the same memory again."""

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def __call__(self, name: str, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        buf = self.buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.shape[1:] != shape[1:] or len(buf) < shape[0]:
            buf = self.buffers[name] = np.empty(shape, dtype=dtype)
        return buf[: shape[0]]


def _weights(logits: Tensor, scale: float, top_p: float, ordered: bool = False,
             scratch: Scratch | None = None) -> Tensor:
    """(n, V) logits -> unnormalised weights exp(``scale`` * (logits - best)), zero outside the nucleus
    ``top_p``; ``ordered``: each row already sorted best first (a top-k list)."""
    scratch = scratch or Scratch()
    # scale * logits - scale * best in one pass: <= 0 up to a rounding, so the exp cannot overflow
    shift = logits.amax(-1, keepdim=True).mul_(-scale)
    log_w = torch.add(shift, logits, alpha=scale, out=torch.from_numpy(scratch("log_w", logits.shape)))
    weights = torch.exp(log_w, out=torch.from_numpy(scratch("weights", logits.shape)))
    if top_p < 1.0:
        if ordered:  # the mass of the better candidates, by a running sum
            before = weights.cumsum(-1) - weights
            weights.masked_fill_(before >= top_p * weights.sum(-1, keepdim=True), 0.0)
        else:  # numpy's comparison: 2.3 us a 16k row on a CPU where torch's took 18 (and masked_fill 30 more)
            threshold = nucleus_threshold(log_w, top_p, weights, scratch).numpy()
            inside = np.greater_equal(log_w.numpy(), threshold, out=scratch("mask", log_w.shape, np.bool_))
            np.multiply(weights.numpy(), inside, out=weights.numpy())
    return weights


def nucleus_threshold(log_w: Tensor, top_p: float, weights: Tensor | None = None,
                      scratch: Scratch | None = None) -> Tensor:
    """(n, V) log-weights on the CPU (logits, up to a per-row shift and a positive scale) -> (n, 1): the
    smallest log-weight of each row's nucleus, the fewest best tokens that hold at least ``top_p`` of the
    mass (a token stays while the better ones hold less than ``top_p``; tokens tied with the last one stay
    too). ``weights``: exp(log_w), from a caller whose log-weights peak at 0 in every row (``_weights``).

    No sort of the vocabulary (the public 4M code sorts every position's logits with their indices at
    every step, 40% of its MaskGIT time on a CPU): a histogram of each row's mass over
    ``NUCLEUS_BUCKETS`` log-weight buckets finds the bucket where the mass from the top reaches
    ``top_p``, and only that bucket's tokens (tens of a 16k vocabulary) are ordered.
    """
    scratch = scratch or Scratch()
    given = log_w.detach().numpy()
    n, vocab = given.shape
    x = given if weights is not None else given - given.max(-1, keepdims=True)  # rows peaking at 0
    w = np.exp(x) if weights is None else weights.numpy()
    last, spread = NUCLEUS_BUCKETS - 1, -x.min(-1, keepdims=True)
    scale = (-last / np.clip(spread, 1e-6, NUCLEUS_SPAN)).astype(np.float32)
    # 0 holds the best; monotone in the log-weight (the cast to int truncates: a floor of values >= 0, and a
    # best token a rounding above 0 still lands in 0)
    scaled = np.multiply(x, scale, out=scratch("scaled", x.shape))
    if (spread > NUCLEUS_SPAN).any():  # rows reaching past the span (a filtered -inf among them): their tail in last
        np.minimum(scaled, last, out=scaled)
    bucket = scratch("bucket", x.shape, np.int32)
    bucket[:] = scaled
    index = scratch("index", x.shape, np.int64)  # scatter's index type; AVX2 converts float -> int32 -> int64 faster
    index[:] = bucket
    # torch's scatter: numpy's bincount would take the weights in float64, a conversion pass more
    mass = torch.zeros(n, NUCLEUS_BUCKETS).scatter_add_(1, torch.from_numpy(index), torch.from_numpy(w))
    reach = np.cumsum(mass.numpy(), -1, dtype=np.float64)  # mass at or above each bucket
    goal = reach[:, -1] * top_p
    cross = np.minimum(np.count_nonzero(reach < goal[:, None], -1), last)  # the first bucket that holds the goal
    before = np.where(cross > 0, reach[np.arange(n), np.maximum(cross - 1, 0)], 0.0)
    # that bucket's tokens (tens of a 16k row), by row in row-major order, each row's best first
    found = np.flatnonzero(np.equal(bucket, cross[:, None].astype(np.int32), out=scratch("mask", x.shape, np.bool_)))
    rows = found // vocab
    values, mass_in = given.reshape(-1)[found], w.reshape(-1)[found].astype(np.float64)
    counts = np.bincount(rows, minlength=n)
    order = np.lexsort((-values, rows))
    values, mass_in = values[order], mass_in[order]
    start = np.cumsum(counts) - counts
    running = np.cumsum(mass_in)
    # the mass at or above each of them: the buckets above, then the bucket's better tokens and itself
    reach_in = before[rows] + running - (running[start] - mass_in[start])[rows]
    # the last token kept is the first whose own mass takes the reach to the goal (the mass above it is short
    # of the goal); sums in another order may miss it by a rounding: the bucket's last token then
    short = np.bincount(rows, weights=reach_in < goal[rows], minlength=n).astype(np.int64)
    last_kept = start + np.minimum(short, counts - 1)
    return torch.from_numpy(values[last_kept]).unsqueeze(-1)


def _draw(weights: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """One draw per row from unnormalised ``weights`` (n, V) by inverting its CDF at the uniform ``u``
    (n,) -> the chosen column (n,) and its log-probability (n,).

    torch.multinomial took 3x as long on 16k-token vocabularies on a CPU. A cumsum over the whole row
    is sequential and as slow as the exp (3.5 ms for 196 x 16384 on one core), so the CDF has two levels:
    the uniform picks a block of ``CDF_BLOCK`` tokens by the blocks' running sums, then a token inside it.
    """
    n, vocab = weights.shape
    u = u[:, None]
    if vocab <= 2 * CDF_BLOCK or n * vocab <= SMALL_DRAW:
        cdf = weights.cumsum(-1)
        total = cdf[:, -1:]
        choice = torch.searchsorted(cdf, u * total).clamp_(max=vocab - 1)
    else:
        padded = F.pad(weights, (0, -vocab % CDF_BLOCK)) if vocab % CDF_BLOCK else weights  # zero weights
        blocks = padded.view(n, -1, CDF_BLOCK)
        ends = blocks.sum(-1).cumsum(-1)  # (n, G): the CDF at each block's end
        total = ends[:, -1:]
        target = u * total
        block = torch.searchsorted(ends, target).clamp_(max=ends.shape[1] - 1)  # (n, 1)
        before = torch.where(block > 0, ends.gather(-1, (block - 1).clamp(min=0)), 0.0)
        inner = blocks[torch.arange(n, device=weights.device), block.squeeze(-1)].cumsum(-1)  # (n, CDF_BLOCK)
        offset = torch.searchsorted(inner, target - before).clamp_(max=CDF_BLOCK - 1)
        choice = (block * CDF_BLOCK + offset).clamp_(max=vocab - 1)
    # a zero-weight token (filtered out, or the block's padding) is never chosen: searchsorted lands on the
    # first CDF entry >= u, and a zero weight does not raise the CDF; rounding between the block sums and
    # the running sum inside a block, or u == 0 exactly, could still land on one: take the row's first
    # token of nonzero weight then
    chosen = weights.gather(-1, choice)
    bad = chosen <= 0
    if bad.any():
        choice[bad] = (weights[bad.squeeze(-1)] > 0).float().argmax(-1)
        chosen = weights.gather(-1, choice)
    return choice.squeeze(-1), (chosen / total).log().squeeze(-1)
