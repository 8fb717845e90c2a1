"""The sampler: runs a chained schedule of targets over a :class:`GenerationState`.

Schemes (one function each, in ``SCHEMES``):

* ``maskgit`` (arXiv 2202.04200): each step predicts every still-masked token of the target, samples
  them, and keeps the most confident; a cosine (or linear) schedule sets how many per step.
* ``roar`` (random-order autoregression, 4M): each step picks a random subset of the masked positions
  (as many as the schedule says), decodes only those, and keeps them all.
* ``ar``: a sequence left to right from ``[SOS]`` until ``[EOS]``, on the model's KV cache
  (``FourM.start_decoding`` / ``decode_step``): the inputs, the encoder memory and its
  cross-attention keys/values are computed once per target, each step runs one token per row.

MaskGIT and ROAR steps feed the tokens decided so far back as inputs, as in training (a decoder
query of an image target carries no content, so what was decided can only reach the model through
the encoder): the encoder runs once per step on the changed inputs, the decoder only on the
queries still open. With ``Target.encode_every`` N > 1 the encoder reads the target's tokens whole only
every N-th step and in between only those decided since, beside the keys and values kept of its earlier
ones; the other inputs (the condition) are encoded afresh at every step, so they see every decided token
(faster, approximate: :meth:`~fourm.model.fourm.FourM.encode_step`). Guidance stacks the conditional
and unconditional rows of every sample in the same forward (:class:`~fourm.generation.schedule.Guidance`).
Sampling draws from one seeded generator, so a seed gives the same tokens again.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fourm.generation.sampling import sample, temperature_at, tokens_per_step
from fourm.generation.schedule import DEFAULT_TEMPERATURE_SCHEDULES, Guidance, Target
from fourm.generation.state import GenerationState, with_queries
from fourm.model.caches import EncodeCache
from fourm.model.fourm import FourM
from fourm.model.precision import check_precision, resolve_precision
from fourm.pretrained import inference
from fourm.registry import Registry

Scheme = Callable[[FourM, GenerationState, Target, torch.Generator], None]
SCHEMES: Registry[Scheme] = Registry("scheme")
scheme = SCHEMES.register


def guided_logits(model: FourM, state: GenerationState, name: str, guidance: Guidance, pos: Tensor,
                  valid: Tensor, cache: EncodeCache | None = None, new: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Logits of target ``name`` at query positions ``pos`` (B, Nq) where ``valid``, guided.

    The inputs are encoded whole, or with ``cache`` added to it (:meth:`FourM.encode_step`): all of them
    into an empty cache, else the target's tokens at ``new`` (B, N) bool, those decided since, and every other
    input again, in its place (the target's earlier tokens keep their cached encodings).

    -> rows (n, 2) as (sample, query column) of the valid queries in row-major order, logits (n, K).
    """
    device = model.embed.mask_token.device
    if cache is not None and len(cache):
        if new is None:
            raise ValueError("guided_logits: a cache that holds inputs needs new, the tokens decided since")
        enc = state.encoder_batch(guidance.variants, target=name, target_tokens=new).to(device)
    else:
        enc = state.encoder_batch(guidance.variants, target=name).to(device)
    if cache is None:
        memory, memory_valid = model.encode(enc)
    else:
        model.encode_step(cache, enc)
        memory = memory_valid = None
    batch = with_queries(enc, model.modality_index(name), pos.to(device), valid.to(device))
    # combined before the (affine) head: one head pass over the first variant's rows, whatever the guidance
    hidden = guidance.combine(model.decode(batch, memory, memory_valid, encoded=cache).float())
    out = model.logits(hidden, batch.dec_mod[: len(hidden)], batch.dec_valid[: len(hidden)])[name]
    # sampled in fp32 on the CPU (bf16 logits would coarsen the softmax): one seeded generator for every device
    logits, index = out.logits.float().cpu(), out.index.cpu()  # index: (b, q) of each valid query, flat
    return torch.stack([index // pos.shape[1], index % pos.shape[1]], 1), logits


def _temperature(target: Target, scheme: str, step: int, steps: int) -> float:
    """The temperature of ``step`` of ``steps``; a target that names no schedule (one given straight to a
    scheme, not through ``build_schedule``) takes its scheme's default."""
    schedule = target.temperature_schedule or DEFAULT_TEMPERATURE_SCHEDULES[scheme]
    return temperature_at(step, steps, target.temperature, schedule)


def _open_positions(known: Tensor, order: Tensor) -> tuple[Tensor, Tensor]:
    """Per row the unknown positions sorted by ``order`` (ascending): pos (B, Nq), valid (B, Nq)."""
    key = order.masked_fill(known, float("inf"))
    count = int((~known).sum(1).max())
    pos = key.argsort(dim=1, stable=True)[:, :count]
    return pos, ~known.gather(1, pos)


def _parallel(model: FourM, state: GenerationState, target: Target, generator: torch.Generator,
              random_order: bool) -> None:
    """MaskGIT (``random_order`` False) or ROAR over an image / global target."""
    name, guidance = target.modality, Guidance.of(target)
    spec = state.specs[name]
    if name not in state.grids:
        empty = torch.zeros(state.batch_size, spec.tokens, dtype=torch.long)
        state.set_grid(name, empty, torch.zeros_like(empty, dtype=torch.bool))
    ids, known = (t.clone() for t in state.grids[name])
    plans = [tokens_per_step(int(n), target.steps, target.schedule) for n in (~known).sum(1).tolist()]
    # encode_every > 1: the inputs encoded so far (FourM.encode_step), and which of the target's tokens they hold
    cache, cached = None, known.clone()
    for step in range(target.steps):
        counts = torch.tensor([p[step] for p in plans])
        if not counts.any():
            continue
        temperature = _temperature(target, "roar" if random_order else "maskgit", step, target.steps)
        if random_order:  # a random subset of the open positions: decode only those
            pos, valid = _open_positions(known, torch.rand(known.shape, generator=generator))
            pos, valid = pos[:, : int(counts.max())], valid[:, : int(counts.max())]
            valid &= torch.arange(pos.shape[1])[None] < counts[:, None]
        else:  # every open position; the most confident are kept below
            pos, valid = _open_positions(known, torch.arange(known.shape[1]).float().expand_as(known))
        if target.encode_every > 1 and step % target.encode_every == 0:  # every input encoded again
            cache = model.start_encoding(len(guidance.variants) * state.batch_size)
        where, logits = guided_logits(model, state, name, guidance, pos, valid, cache, known & ~cached)
        cached = known.clone()
        sampled, confidence = sample(logits, temperature, target.top_k, target.top_p, generator)
        b, q = where.unbind(1)
        if not random_order:
            score = torch.full(pos.shape, -float("inf"))
            score[b, q] = confidence
            rank = score.argsort(dim=1, descending=True, stable=True).argsort(1)
            keep = rank[b, q] < counts[b]
            b, q, sampled = b[keep], q[keep], sampled[keep]
        ids[b, pos[b, q]] = sampled
        known[b, pos[b, q]] = True
        state.grids[name] = (ids.clone(), known.clone())


@scheme("maskgit")
def maskgit(model: FourM, state: GenerationState, target: Target, generator: torch.Generator) -> None:
    _parallel(model, state, target, generator, random_order=False)


@scheme("roar")
def roar(model: FourM, state: GenerationState, target: Target, generator: torch.Generator) -> None:
    _parallel(model, state, target, generator, random_order=True)


def _templates(state: GenerationState, name: str) -> list[list[int]]:
    """Per sample the encoder form of a sequence target: the given tokens with sentinels for the
    spans to fill, or ``[S_0] [EOS]`` (everything to generate) where nothing is given."""
    given = state.seqs.get(name) or [None] * state.batch_size
    whole = [state.specials.sentinels[0], state.specials.eos]
    return [list(s) if s is not None else whole for s in given]


def merge_spans(template: list[int], generated: list[int], sentinels: list[int], eos: int,
                limit: int) -> list[int]:
    """Fill the sentinels of ``template`` with the spans of ``generated`` (``[S_j] span_j ...``, as
    training's targets): tokens before any sentinel belong to the template's first span; a span
    the model did not produce stays empty. -> body + [EOS], at most ``limit`` tokens."""
    sentinel_set = set(sentinels)
    first = next((i for i in template if i in sentinel_set), None)
    spans: dict[int, list[int]] = {}
    current = first
    for i in generated:
        if i == eos:
            break
        if i in sentinel_set:
            current = i
            continue
        if current is not None:
            spans.setdefault(current, []).append(i)
    body = []
    for i in template:
        if i == eos:
            break
        body.extend(spans.get(i, []) if i in sentinel_set else [i])
    return [*body[: limit - 1], eos]


@scheme("ar")
def autoregressive(model: FourM, state: GenerationState, target: Target, generator: torch.Generator,
                   use_cache: bool = True) -> None:
    """Left-to-right decoding of a sequence target; ``use_cache=False`` re-runs the decoder over the
    whole prefix at every step (the reference's way, kept to check the cache against)."""
    name, guidance, specials = target.modality, Guidance.of(target), state.specials
    spec = state.specs[name]
    templates = _templates(state, name)
    state.seqs[name] = templates  # partial inputs (with sentinels) are read by the encoder
    device = model.embed.mask_token.device
    enc = state.encoder_batch(guidance.variants, target=name).to(device)
    memory, memory_valid = model.encode(enc)
    mod = model.modality_index(name)
    rows = enc.enc_ids.shape[0]
    length = target.max_tokens or spec.tokens
    cache = model.start_decoding(memory, memory_valid) if use_cache else None
    prefix = torch.full((rows, 1), specials.sos, dtype=torch.long, device=device)
    out = torch.zeros(state.batch_size, 0, dtype=torch.long)
    done = torch.zeros(state.batch_size, dtype=torch.bool)
    for t in range(length):
        if use_cache:
            pos = torch.full((rows, 1), t, dtype=torch.long, device=device)
            logits = model.decode_step(cache, prefix[:, -1:], name, pos)[name].logits
        else:
            b = state.batch_size
            pos = torch.arange(t + 1, device=device).expand(b, -1)
            batch = with_queries(enc, mod, pos, torch.ones_like(pos, dtype=torch.bool), ids=prefix[:b])
            hidden = model.decode(batch, memory, memory_valid)[:, -1:]
            logits = model.logits(hidden, batch.dec_mod[:, -1:])[name].logits
        logits = guidance.combine(logits.float()).cpu()
        if t < target.min_tokens:
            logits[:, specials.eos] = -float("inf")
        temperature = _temperature(target, "ar", t, length)
        token, _ = sample(logits, temperature, target.top_k, target.top_p, generator)
        token = token.masked_fill(done, specials.pad)
        out = torch.cat([out, token[:, None]], 1)
        done |= token == specials.eos
        if done.all():
            break
        prefix = torch.cat([prefix, token.repeat(len(guidance.variants))[:, None].to(device)], 1)
    generated = [row[: row.index(specials.eos) + 1] if specials.eos in row else row for row in out.tolist()]
    state.seqs[name] = [merge_spans(tpl, gen, specials.sentinels, specials.eos, spec.tokens)
                        for tpl, gen in zip(templates, generated, strict=True)]


def seeded(seed: int | None) -> torch.Generator:
    """A generator of its own for one run or request (a fresh seed for None): never global RNG state."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


# The schemes that run in bf16 where the machine computes it faster (``precision``): their forwards
# are whole grids, where bf16 matmuls pay (MaskGIT and ROAR 1.35-1.5x on a 2-core Xeon with AMX). A
# cached ``ar`` step is one token a row, where casts and small kernels cost more than they save
# (0.85x there): it stays in fp32.
LOW_PRECISION_SCHEMES = frozenset({"maskgit", "roar"})


def generate(model: FourM, state: GenerationState, schedule: list[Target], seed: int | None = 0,
             generator: torch.Generator | None = None, precision: str = "fp32") -> GenerationState:
    """Run ``schedule`` in order on ``state`` (updated in place and returned); each finished target
    is an input of the next. The model runs in eval mode without gradients; ``precision`` (auto, bf16,
    fp32; see ``fourm.model.precision``) is what the parallel schemes compute in, logits sampled in fp32."""
    generator = seeded(seed) if generator is None else generator
    device = model.embed.mask_token.device
    bf16 = resolve_precision(check_precision(precision), device) == "bf16"
    with inference(model):
        for target in schedule:
            low = bf16 and target.scheme in LOW_PRECISION_SCHEMES
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=low):
                SCHEMES[target.scheme](model, state, target, generator)
    return state
