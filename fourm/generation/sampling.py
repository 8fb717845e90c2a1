"""Per-step sampling decisions: how many tokens each step decides, at what temperature, and how a
token is drawn from logits (temperature, top-k, top-p).

Only the rows being sampled reach :func:`sample`. Top-k keeps a short candidate list from
``torch.topk``; top-p finds each row's nucleus without sorting the vocabulary and draws from it in the
order its search left (:class:`Nucleus`; the public 4M implementation sorts every masked position's full
vocabulary with its indices at every step, 40% of its MaskGIT time on a CPU).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fourm.registry import Registry

# fraction of the tokens still undecided after a share ``t`` in [0, 1] of the steps
MASK_SCHEDULES: Registry[Callable[[float], float]] = Registry("mask schedule", {
    "cosine": lambda t: math.cos(math.pi / 2 * t),  # MaskGIT (arXiv 2202.04200): few tokens first, many last
    # (1 + cos pi t) / 2: few first and last, most in the middle; what 4M's public code calls "cosine"
    "cosine_annealing": lambda t: (1.0 + math.cos(math.pi * t)) / 2,
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
CDF_BLOCK = 128  # the draw's two-level CDF without top-p: a cumsum over blocks of this many tokens, then inside one
PEAKED = 8.0  # rows whose weights sum below this (the best's 1) try the nucleus among their best TOP_CANDIDATES
TOP_CANDIDATES = 64
NUCLEUS_BUCKETS = 1024  # the nucleus search's histogram of each row's mass by log-weight
NUCLEUS_SPAN = 43.0  # log2-weights further below the row's best share the last bucket (2^-43 of its weight)
LOG2_E = 1.0 / math.log(2.0)


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
        weights = _log_weights(values, 1.0 / temperature, Scratch())[1]
        if top_p < 1.0:  # the mass of the better candidates, by a running sum
            before = weights.cumsum(-1) - weights
            weights.masked_fill_(before >= top_p * weights.sum(-1, keepdim=True), 0.0)
        choice, logp = _draw(weights, u)
        return cand.gather(-1, choice[:, None]).squeeze(-1), logp
    ids, logp = torch.empty(n, dtype=torch.long), torch.empty(n, dtype=torch.float64)
    rows, scratch = max(1, ROW_BLOCK // vocab), _scratch()
    for i in range(0, n, rows):
        block = slice(i, i + rows)
        log2_w, weights = _log_weights(logits[block], 1.0 / temperature, scratch)
        if top_p < 1.0:
            ids[block], logp[block] = _nucleus_draw(log2_w, weights, top_p, u[block], scratch)
        else:
            ids[block], logp[block] = _draw(weights, u[block])
    return ids, logp.float()


class Scratch:
    """Named numpy buffers of a block's shape, reused block after block and call after call: on a CPU (a VM's
    above all) a fresh multi-megabyte temporary pays its page faults every time, and a pass over a fresh
    (196, 16384) tensor took 3-4x one over a block of rows written into the same memory again."""

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def __call__(self, name: str, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        buf = self.buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.shape[1:] != shape[1:] or len(buf) < shape[0]:
            buf = self.buffers[name] = np.empty(shape, dtype=dtype)
        return buf[: shape[0]]


_SCRATCH = threading.local()


def _scratch() -> Scratch:
    """This thread's buffers for the draws (about 6 MB at ``ROW_BLOCK``), kept between calls: a MaskGIT step's
    fresh ones cost some 1500 page faults (a run's draws 10% of their time)."""
    if not hasattr(_SCRATCH, "buffers"):
        _SCRATCH.buffers = Scratch()
    return _SCRATCH.buffers


def _log_weights(logits: Tensor, scale: float, scratch: Scratch) -> tuple[Tensor, Tensor]:
    """(n, V) logits -> base-2 log-weights ``scale`` * (logits - best) / ln 2, peaking at 0 in every row, and
    the weights exp(``scale`` * (logits - best)) as their exp2 (torch's exp2 takes 0.55x its exp's time)."""
    # in one pass: <= 0 up to a rounding, so the weights cannot overflow
    scale *= LOG2_E
    shift = logits.amax(-1, keepdim=True).mul_(-scale)
    log2_w = torch.add(shift, logits, alpha=scale, out=torch.from_numpy(scratch("log2_w", logits.shape)))
    return log2_w, torch.exp2(log2_w, out=torch.from_numpy(scratch("weights", logits.shape)))


def _nucleus_draw(log2_w: Tensor, weights: Tensor, top_p: float, u: Tensor, scratch: Scratch) -> tuple[Tensor, Tensor]:
    """One draw per row from the nucleus ``top_p`` of (n, V) base-2 log-weights peaking at 0 and their
    weights -> ids (n,), log-probabilities (n,). Peaked rows (a total weight below ``PEAKED``, the best's
    being 1: a caption's token at a low temperature) first look among their best ``TOP_CANDIDATES`` (a
    topk: 0.6x the histogram's time for a row of 30k); the others, and those whose nucleus does not end
    there, take :class:`Nucleus`. Each row's path depends on that row alone, so a row draws the same
    token from the same uniform in any batch."""
    n = len(u)
    x, w, u = log2_w.numpy(), weights.numpy(), u.double().numpy()
    ids, logp = np.zeros(n, dtype=np.int64), np.zeros(n)
    rest = (weights.sum(-1) >= PEAKED).numpy()
    if not rest.all():
        peaked = np.flatnonzero(~rest)
        beyond, ids[peaked], logp[peaked] = _top_nucleus_draw(*_rows(peaked, n, log2_w, w), top_p, u[peaked])
        rest[peaked] = beyond
    if rest.any():
        rows = np.flatnonzero(rest)
        ids[rows], logp[rows] = Nucleus(*_rows(rows, n, x, w), top_p, scratch).draw(u[rows])
    return torch.from_numpy(ids), torch.from_numpy(logp)


def _rows(rows: np.ndarray, n: int, *arrays):
    """``arrays`` at ``rows`` of their ``n``: the arrays themselves where that is all of them (no copy)."""
    return arrays if len(rows) == n else tuple(a[rows] for a in arrays)


def _top_nucleus_draw(log2_w: Tensor, w: np.ndarray, top_p: float, u: np.ndarray) -> tuple[np.ndarray, ...]:
    """The nucleus draw among each row's best ``TOP_CANDIDATES`` -> the rows whose nucleus may not end among
    them (n,; their draws are void), ids (n,), log-probabilities (n,)."""
    n, vocab = w.shape
    k = min(TOP_CANDIDATES, vocab)
    values, index = (a.numpy() for a in torch.topk(log2_w, k, -1))  # best first
    mass = np.take_along_axis(w, index, -1).astype(np.float64)
    running = np.cumsum(mass, -1)
    # the nucleus as defined (tokens while the better ones hold less than top_p, and ties with the last one)
    inside = (running - mass) < top_p * w.sum(-1, dtype=np.float64, keepdims=True)
    kept = values >= np.take_along_axis(values, inside.sum(-1, keepdims=True) - 1, -1)  # a prefix
    count, row = kept.sum(-1), np.arange(n)
    total = running[row, count - 1]
    # the first kept candidate whose running mass passes the uniform's share (a rounding past all: the last)
    choice = np.minimum((running <= (u * total)[:, None]).sum(-1), count - 1)
    # a kept last candidate may have more of the nucleus (or of its ties) outside the candidates
    beyond = kept[:, -1] & (k < vocab)
    return beyond, index[row, choice], np.log(mass[row, choice] / total)


def nucleus_threshold(log_w: Tensor, top_p: float) -> Tensor:
    """(n, V) log-weights on the CPU (logits, up to a per-row shift and a positive scale) -> (n, 1): the
    smallest log-weight of each row's nucleus, the fewest best tokens that hold at least ``top_p`` of the
    mass (a token stays while the better ones hold less than ``top_p``; tokens tied with the last one stay
    too)."""
    given = log_w.detach().numpy()
    x = (given - given.max(-1, keepdims=True)) * np.float32(LOG2_E)  # base 2, rows peaking at 0
    last = Nucleus(x, np.exp2(x), top_p, Scratch()).last
    return torch.from_numpy(given.reshape(-1)[last])[:, None]  # the caller's own values: they compare exactly


class Nucleus:
    """Each row's nucleus of ``top_p`` from its base-2 log-weights ``x`` (n, V), peaking at 0, and its
    weights ``w`` = exp2(x), found without sorting the vocabulary, and draws from it.

    A histogram of each row's mass over ``NUCLEUS_BUCKETS`` log-weight buckets (bucket 0 holds the best)
    finds the bucket where the mass from the top reaches ``top_p``: the buckets above it are inside, the
    ones below outside, and only that crossing bucket's tokens (tens of a 16k vocabulary) are ordered.
    :meth:`draw` inverts the nucleus's CDF in the same bucket order, so no pass over the vocabulary masks
    the weights or sums them again.
    """

    def __init__(self, x: np.ndarray, w: np.ndarray, top_p: float, scratch: Scratch) -> None:
        n, vocab = x.shape
        self.x, self.w, self.scratch = x.reshape(-1), w.reshape(-1), scratch
        last, spread = NUCLEUS_BUCKETS - 1, -x.min(-1, keepdims=True)
        scale = (-last / np.clip(spread, 1e-6, NUCLEUS_SPAN)).astype(np.float32)
        # monotone in the log-weight, 0 for the best (the cast truncates: a floor of values >= 0, and a best
        # token a rounding above 0 still lands in 0)
        self.bucket = bucket = scratch("bucket", x.shape, np.int16)  # int16: the search's passes read less
        if (spread > NUCLEUS_SPAN).any():  # rows reaching past the span (a filtered -inf among them): tail in last
            scaled = np.multiply(x, scale, out=scratch("scaled", x.shape))
            bucket[:] = np.minimum(scaled, last, out=scaled)
        else:  # the multiply and the cast in one call
            np.multiply(x, scale, out=bucket, casting="unsafe")
        index = scratch("index", x.shape, np.int64)  # scatter's; AVX2 converts float -> int16 -> int64 faster
        index[:] = bucket
        # torch's scatter: numpy's bincount would take the weights in float64, a conversion pass more
        mass = torch.zeros(n, NUCLEUS_BUCKETS).scatter_add_(1, torch.from_numpy(index), torch.from_numpy(w))
        reach = mass.cumsum(-1, dtype=torch.float64)  # mass at or above each bucket
        goal = reach[:, -1:] * top_p
        self.cross = torch.searchsorted(reach, goal).clamp_(max=last).numpy()[:, 0]  # holds the goal
        # the mass above each bucket, a column of zeros first: row r's above bucket b at [r, b]
        self.above = np.concatenate([np.zeros((n, 1)), reach.numpy()], 1)
        self.before = self.above[np.arange(n), self.cross]
        # that bucket's tokens, each row's best first
        rows, found = self._tokens(self.cross)
        values = self.x[found]
        order = np.lexsort((-values, rows))
        rows, found, values = rows[order], found[order], values[order]
        start, count = _segments(rows, n)
        reach = self.before[rows] + _running(self.w[found], rows, start)  # the mass at or above each of them
        # the last token kept is the first whose own mass takes the reach to the goal (the mass above it is
        # short of the goal); sums in another order may miss it by a rounding: the bucket's last token then
        short = np.bincount(rows, weights=reach < goal.numpy()[rows, 0], minlength=n).astype(np.int64)
        self.last = found[start + np.minimum(short, count - 1)]  # flat index
        # tokens tied with the last one kept stay too: the kept ones are a prefix of each row's bucket
        kept = np.bincount(rows, weights=values >= self.x[self.last][rows], minlength=n).astype(np.int64)
        self.total = reach[start + kept - 1]  # the nucleus's mass
        self.crossing = rows, found, reach, start, kept

    def _tokens(self, bucket: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's tokens in its bucket of ``bucket`` (n,; -1: none) -> their rows and flat indices."""
        mask = self.scratch("mask", self.bucket.shape, np.bool_)
        found = np.flatnonzero(np.equal(self.bucket, bucket.astype(np.int16)[:, None], out=mask))
        return found // self.bucket.shape[1], found

    def draw(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One token per row by inverting the nucleus's CDF at the uniforms ``u`` (n,), in bucket order (the
        buckets above the crossing one best first, then its kept tokens best first) -> the columns (n,) and
        their log-probabilities under the nucleus (n,)."""
        n = len(u)
        target = u * self.total
        pick = np.zeros(n, dtype=np.int64)  # flat index
        above = target < self.before  # lands in a bucket above the crossing one: that bucket's tokens, in column order
        if above.any():
            # the first bucket whose reach (the mass above the next one) passes the target
            land = (self.above[:, 1:] <= target[:, None]).sum(-1)
            land = np.where(above, np.minimum(land, self.cross - 1), -1)
            rows, found = self._tokens(land)
            start, count = _segments(rows, n)
            reach = self.above[rows, land[rows]] + _running(self.w[found], rows, start)
            pick[above] = found[_first_past(reach, target, rows, start, count)[above]]
        if not above.all():
            rows, found, reach, start, kept = self.crossing
            pick[~above] = found[_first_past(reach, target, rows, start, kept)[~above]]
        chosen = self.w[pick].astype(np.float64)
        # a rounding may pass a row's every token and fall back on a filtered one (weight 0): its best then
        bad = chosen <= 0
        if bad.any():
            pick[bad] = np.flatnonzero(bad) * self.bucket.shape[1] + self.w.reshape(n, -1)[bad].argmax(-1)
            chosen = self.w[pick].astype(np.float64)
        return pick % self.bucket.shape[1], np.log(chosen / self.total)


def _segments(rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted row numbers -> each row's first position and count (a row of none: its count 0)."""
    count = np.bincount(rows, minlength=n)
    return np.cumsum(count) - count, count


def _running(mass: np.ndarray, rows: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Each token's mass with its row's tokens before it (rows sorted, segments from ``_segments``)."""
    running = np.cumsum(mass, dtype=np.float64)
    return running - (running - mass)[start[rows]]


def _first_past(reach: np.ndarray, target: np.ndarray, rows: np.ndarray, start: np.ndarray,
                limit: np.ndarray) -> np.ndarray:
    """Per row the position of its first token whose ``reach`` passes ``target``, among its first ``limit``
    (a rounding that passes none: the last of them); rows of no tokens get a position they must not read."""
    passed = np.bincount(rows, weights=reach <= target[rows], minlength=len(target)).astype(np.int64)
    return start + np.minimum(passed, limit - 1)


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
