"""Per-step sampling decisions: how many tokens each step decides, at what temperature, and how a
token is drawn from logits (temperature, top-k, top-p).

Only the rows being sampled reach :func:`sample`. Top-k keeps a short candidate list from
``torch.topk``; top-p finds each row's threshold from its sorted values alone and masks the row in
place (the public 4M implementation sorts every masked position's full vocabulary with its indices
at every step, 40% of its MaskGIT time on a CPU).
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


def _top_k(logits: Tensor, top_k: int, top_p: float) -> tuple[Tensor, Tensor]:
    """(n, V) scaled logits -> the k best logits (n, k), -inf outside the nucleus ``top_p`` among them,
    and their ids (n, k)."""
    values, ids = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1)  # sorted, largest first
    if top_p < 1.0:
        probs = values.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of the better candidates
        values = values.masked_fill(before >= top_p, -math.inf)  # the best candidate always stays
    return values, ids


def _ascending(logits: Tensor) -> Tensor:
    """Each row's values sorted, smallest first. On a CPU numpy's SIMD sort: torch.sort also orders the
    indices and took 257 ms for (196, 16384) on one core where ``np.sort`` of the values took 19 ms."""
    if logits.device.type == "cpu":
        return torch.from_numpy(np.sort(logits.detach().numpy(), axis=-1))
    return torch.sort(logits, dim=-1).values


def nucleus_threshold(logits: Tensor, top_p: float) -> Tensor:
    """(n, V) scaled logits -> (n, 1): the smallest logit of each row's nucleus, the fewest best tokens
    that hold at least ``top_p`` of the mass (a token stays while the better ones hold less than
    ``top_p``; tokens tied with the last one stay too). Only values are sorted: the threshold then
    masks the row where it is, so no row is gathered or scattered by a permutation."""
    ascending = _ascending(logits)
    cdf = ascending.softmax(-1).cumsum(-1)  # mass at or below each value; small values first keeps it exact
    total = cdf[:, -1:]
    # kept where the mass above is < top_p, i.e. cdf > total * (1 - top_p): the first such value
    first = torch.searchsorted(cdf, total * (1.0 - top_p), right=True).clamp_(max=logits.shape[-1] - 1)
    return ascending.gather(-1, first)


def sample(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Draw one token per row of ``logits`` (n, V) -> ids (n,), their log-probability (n,) under the
    distribution actually sampled (after temperature and filtering: MaskGIT's confidence).

    ``temperature`` 0 is greedy. ``top_k`` 0 and ``top_p`` 1 switch those filters off.
    """
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], not {top_p}")
    logits = logits.float()
    if temperature <= 0:
        logp = F.log_softmax(logits, -1)
        best, ids = logp.max(-1)
        return ids, best
    if top_k > 0:
        cand, cand_ids = _top_k(logits / temperature, top_k, top_p)
        choice, chosen_logp = _draw(cand, generator)
        return cand_ids.gather(-1, choice[:, None]).squeeze(-1), chosen_logp
    if top_p < 1.0:
        scaled = logits / temperature
        return _draw(scaled.masked_fill_(scaled < nucleus_threshold(scaled, top_p), -math.inf), generator)
    return _draw(logits, generator, 1.0 / temperature)  # the temperature rides in the draw's exp


CDF_BLOCK = 128  # the draw's two-level CDF: a cumsum over blocks of this many tokens, then inside one


def _draw(logits: Tensor, generator: torch.Generator | None, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """One draw per row of softmax(``scale`` * logits) by inverting the CDF at a uniform -> the chosen
    column (n,) and its log-probability (n,).

    torch.multinomial took 3x as long on 16k-token vocabularies on a CPU. A cumsum over the whole row
    is sequential and as slow as the exp (3.5 ms for 196 x 16384 on one core), so the CDF has two levels:
    the uniform picks a block of ``CDF_BLOCK`` tokens by the blocks' running sums, then a token inside
    it; the row is read once by the exp and once by the block sums.
    """
    # amax, not max: max also finds the indices, 15x slower over a (196, 16384) block on a CPU
    shifted = logits - logits.amax(-1, keepdim=True)
    weights = (shifted.mul_(scale) if scale != 1.0 else shifted).exp_()
    n, vocab = weights.shape
    u = torch.rand((n, 1), generator=generator, device=weights.device, dtype=weights.dtype)
    if vocab <= 2 * CDF_BLOCK:
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
