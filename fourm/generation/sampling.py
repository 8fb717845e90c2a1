"""Per-step sampling decisions: how many tokens each step decides, at what temperature, and how a
token is drawn from logits (temperature, top-k, top-p).

Only the rows being sampled reach :func:`sample`, and top-k / top-p work on a short candidate list
from ``torch.topk``: the full vocabulary is sorted only for the rare row whose nucleus does not fit
in the candidates (the public 4M implementation sorts every masked position's full vocabulary at
every step, 40% of its MaskGIT time on a CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable

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
NUCLEUS_CANDIDATES = 256  # top-p looks at this many candidates first; rows that need more are sorted whole


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


def _candidates(logits: Tensor, top_k: int, top_p: float) -> tuple[Tensor, Tensor]:
    """(n, V) scaled logits -> candidate logits (n, k) (-inf outside the kept set), their ids (n, k)."""
    vocab = logits.shape[-1]
    k = min(top_k, vocab) if top_k > 0 else min(NUCLEUS_CANDIDATES, vocab)
    values, ids = torch.topk(logits, k, dim=-1)  # sorted, largest first
    if top_p >= 1.0:
        return values, ids
    if top_k <= 0 and k < vocab:
        # rows whose nucleus is wider than the candidates (flat distributions): sort those rows whole
        mass = (values - torch.logsumexp(logits, -1, keepdim=True)).exp().sum(-1)
        wide = mass < top_p
        if wide.any():
            full_v, full_i = torch.sort(logits[wide], dim=-1, descending=True)
            values = torch.cat([values, values.new_full((len(values), vocab - k), -math.inf)], 1)
            ids = torch.cat([ids, ids.new_zeros(len(ids), vocab - k)], 1)
            values[wide], ids[wide] = full_v, full_i
    probs = values.softmax(-1)
    before = probs.cumsum(-1) - probs  # mass of the better candidates
    return values.masked_fill(before >= top_p, -math.inf), ids  # the best candidate always stays


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
    logits = logits / temperature
    filtered = top_k > 0 or top_p < 1.0
    cand, cand_ids = _candidates(logits, top_k, top_p) if filtered else (logits, None)
    choice, chosen_logp = _draw(cand, generator)
    ids = choice if cand_ids is None else cand_ids.gather(-1, choice[:, None]).squeeze(-1)
    return ids, chosen_logp


def _draw(logits: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """One draw per row of softmax(logits) by inverting the CDF at a uniform: one exp and one cumsum
    over the row (torch.multinomial took 3x as long on 16k-token vocabularies on this CPU)."""
    weights = (logits - logits.max(-1, keepdim=True).values).exp()
    cdf = weights.cumsum(-1)
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=generator, device=logits.device, dtype=cdf.dtype) * total
    choice = torch.searchsorted(cdf, u).clamp_(max=logits.shape[-1] - 1)
    # a zero-weight token (filtered out) is never chosen: searchsorted lands on the first cdf >= u,
    # and a zero weight does not raise the cdf; u == 0 exactly would pick index 0, so nudge past it
    chosen = weights.gather(-1, choice)
    bad = chosen <= 0
    if bad.any():
        choice[bad] = (weights[bad.squeeze(-1)] > 0).float().argmax(-1)
        chosen = weights.gather(-1, choice)
    return choice.squeeze(-1), (chosen / total).log().squeeze(-1)
