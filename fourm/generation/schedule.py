"""Chained generation as plain data: an ordered list of :class:`Target` steps.

Targets are produced one after another; each finished target becomes an input of the next (4M's
chained generation, arXiv 2312.06647 Sec. 3.3). :func:`build_schedule` turns names or partial
settings into validated targets, filling each one's scheme from its modality's kind, and its
temperature schedule from its scheme.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from fourm.generation.sampling import MASK_SCHEDULES, TEMPERATURE_SCHEDULES
from fourm.kinds import handler
from fourm.modalities import Modality

PARALLEL_SCHEMES = ("maskgit", "roar")  # image and global targets
SEQUENCE_SCHEMES = ("ar",)  # left to right, stopping at [EOS]
# A target's temperature schedule when it names none. MaskGIT's last steps decide many tokens at once
# (the last of 8 cosine steps a fifth of the grid), whatever their confidence: at full temperature they
# include unlikely codes, which show as specks of colours the caption did not name. Annealing to near
# greedy there, as 4M's generation notes advise, took the demo's caption -> RGB false alarms from
# 0.38-0.43 to 0.14-0.24 in four runs of five (0.60 -> 0.48 in the fifth; named colours 0.84-0.97 ->
# 0.75-0.93), and two draws of a caption still differ in 56-77% of their tokens
# (benchmarks/caption_to_rgb.py). A sequence's tokens are each decided once, in order: it keeps its
# temperature (a schedule would anneal it over the maximum length, not the caption's).
DEFAULT_TEMPERATURE_SCHEDULES = {"maskgit": "linear", "roar": "linear", "ar": "constant"}


@dataclass
class Target:
    """How to generate one modality.

    Args:
        modality: model modality key.
        scheme: maskgit | roar (image / global tokens) | ar (sequences); None: maskgit or ar by kind.
        steps: MaskGIT / ROAR steps (ignored by ar).
        schedule: how many tokens each step decides: cosine | cosine_annealing | linear
            (``fourm.generation.sampling.MASK_SCHEDULES``).
        temperature: sampling temperature (0: greedy), scaled per step by ``temperature_schedule``
            (constant | linear | cosine, annealing towards 0 over the steps; None: the scheme's
            default, linear for maskgit and roar, constant for ar).
        top_k, top_p: keep the k best / the smallest set holding mass p (0 / 1: off).
        guidance: classifier-free guidance scale w: cond + w * (cond - uncond); 0 is unguided.
        condition_weights: weighted multi-condition guidance, ``{input modality: weight}``:
            uncond + sum_m w_m * (cond_m - uncond), cond_m conditioned on modality m alone.
            Overrides ``guidance`` when given.
        max_tokens: ar only: length cap (default: the modality's maximum).
        min_tokens: ar only: [EOS] is not sampled before this many tokens.
        encode_every: maskgit and roar: encode the target's tokens whole every this many steps; the
            steps between encode only those decided since, beside the encodings kept of its earlier ones,
            and every other input afresh (``FourM.encode_step``). 1: every step, exact; more is faster
            and approximate (kept encodings do not see the tokens that came after them); ``steps`` or
            more encodes each of the target's tokens once.
    """

    modality: str
    scheme: str | None = None
    steps: int = 8
    schedule: str = "cosine"
    temperature: float = 1.0
    temperature_schedule: str | None = None
    top_k: int = 0
    top_p: float = 1.0
    guidance: float = 0.0
    condition_weights: dict[str, float] = field(default_factory=dict)
    max_tokens: int | None = None
    min_tokens: int = 0
    encode_every: int = 1

    def __post_init__(self):
        if self.scheme is not None and self.scheme not in (*PARALLEL_SCHEMES, *SEQUENCE_SCHEMES):
            raise ValueError(f"{self.modality}: unknown scheme {self.scheme!r}; known: "
                             f"{', '.join((*PARALLEL_SCHEMES, *SEQUENCE_SCHEMES))}")
        for name in ("steps", "encode_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{self.modality}: {name} must be >= 1, not {getattr(self, name)}")
        MASK_SCHEDULES.check(self.schedule, context=self.modality)
        if self.temperature_schedule is None and self.scheme is not None:
            self.temperature_schedule = DEFAULT_TEMPERATURE_SCHEDULES[self.scheme]
        if self.temperature_schedule is not None:
            TEMPERATURE_SCHEDULES.check(self.temperature_schedule, context=self.modality)
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"{self.modality}: need temperature >= 0, top_k >= 0 and top_p in (0, 1]")
        self.condition_weights = dict(self.condition_weights)


@dataclass
class Guidance:
    """Logits as an affine combination (``coefficients`` summing to 1) of the same queries' logits under
    several condition sets (``variants``: the input modalities kept, None = all), computed in one batched
    pass. Every output head is affine in the decoder's output, so the combination is taken of the decoder
    states before the head: one head pass a query instead of one per variant, the same logits."""

    variants: list[tuple[str, ...] | None]
    coefficients: list[float]

    def __post_init__(self) -> None:
        if len(self.variants) != len(self.coefficients) or abs(sum(self.coefficients) - 1.0) > 1e-6:
            raise ValueError(f"guidance needs one coefficient per variant, summing to 1: {self.coefficients} "
                             f"for {len(self.variants)} variants")

    @classmethod
    def plain(cls) -> Guidance:
        return cls([None], [1.0])

    @classmethod
    def classifier_free(cls, scale: float) -> Guidance:
        """cond + scale * (cond - uncond) (Ho & Salimans, arXiv 2207.12598)."""
        return cls([None, ()], [1.0 + scale, -scale])

    @classmethod
    def multi_condition(cls, weights: dict[str, float]) -> Guidance:
        """uncond + sum_m w_m * (cond_m - uncond) (4M's weighted multi-condition guidance)."""
        names = list(weights)
        return cls([(m,) for m in names] + [()], [weights[m] for m in names] + [1.0 - sum(weights.values())])

    @classmethod
    def of(cls, target: Target) -> Guidance:
        if target.condition_weights:
            return cls.multi_condition(target.condition_weights)
        return cls.classifier_free(target.guidance) if target.guidance else cls.plain()

    def combine(self, x: Tensor) -> Tensor:
        """(V * n, ...) logits or decoder states, variant-major -> (n, ...)."""
        if len(self.variants) == 1:
            return x
        weights = torch.tensor(self.coefficients, dtype=x.dtype, device=x.device)
        return torch.einsum("v,v...->...", weights, x.view(len(self.variants), -1, *x.shape[1:]))


def build_schedule(targets: list[str | Target | dict], specs: dict[str, Modality],
                   given: list[str] = (), **defaults) -> list[Target]:
    """Validated targets in order. ``targets``: names, :class:`Target` s or dicts of its fields;
    ``defaults``: Target fields applied where an entry does not set them; ``given``: the input
    modalities (a multi-condition weight must name one of them, or an earlier target)."""
    out: list[Target] = []
    for entry in targets:
        if isinstance(entry, str):
            target = Target(entry, **defaults)
        elif isinstance(entry, dict):
            target = Target(**{**defaults, **entry})
        else:
            target = entry
        name = target.modality
        if name not in specs:
            raise ValueError(f"target {name!r} is not one of the model's modalities: {', '.join(specs)}")
        spec = specs[name]
        if spec.input_only:
            raise ValueError(f"target {name!r} is input-only: the model cannot generate it")
        if any(t.modality == name for t in out):
            raise ValueError(f"target {name!r} is listed twice")
        sequence = handler(spec).autoregressive
        scheme = target.scheme or ("ar" if sequence else "maskgit")
        allowed = SEQUENCE_SCHEMES if sequence else PARALLEL_SCHEMES
        if scheme not in allowed:
            raise ValueError(f"target {name!r} ({spec.kind_name}) takes scheme {' or '.join(allowed)}, not {scheme!r}")
        known = [*given, *(t.modality for t in out)]
        stray = [m for m in target.condition_weights if m not in known]
        if stray:
            raise ValueError(f"target {name!r}: condition_weights name {', '.join(stray)}, which are not inputs "
                             f"at that point ({', '.join(known) or 'none'})")
        if target.max_tokens is not None and not 1 <= target.max_tokens <= spec.tokens:
            raise ValueError(f"target {name!r}: max_tokens must lie in [1, {spec.tokens}]")
        out.append(replace(target, scheme=scheme))
    return out
