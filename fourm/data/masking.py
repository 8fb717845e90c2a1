"""Multimodal masking for FourM pre-training: per sample, which tokens are inputs and which targets.

The objective of 4M (arXiv 2312.06647, Sec. 2.3) as used by 4M-21 (arXiv 2406.09406): each sample
gets an input and a target token budget; each budget is split over the sample's modalities by a
draw from a mixture of Dirichlets (small alphas put the whole budget on one modality, large ones
spread it evenly). Then, per modality:

* set-like modalities (image token grids, global tokens, rgb patches, t5_caption vectors): a
  random permutation of the positions; the first ``N`` are inputs, the last ``M`` targets, so a
  modality can be input and target at once on disjoint positions. Modalities of one series (the
  same corpus source and positions: ``rgb`` pixels and ``tok_rgb``) share the permutation, so a
  patch given as pixels is never a target as tokens (drawn apart, 29% of the demo's tok_rgb
  targets had their own pixels among the inputs: copied, not predicted);
* sequences: T5-style span masking (arXiv 1910.10683) over the tokens before the final ``[EOS]``.
  Input: the kept tokens with one sentinel per masked span, then ``[EOS]``. Target:
  ``[S_0] span_0 [S_1] span_1 ... [EOS]``, teacher-forced: ``dec_ids`` is the target shifted right
  with ``[SOS]`` first, positions count from 0 within the target, and the group is causal. A
  sequence given no input budget is a target whole (``[S_0] body [EOS]``), one given no target
  budget an input whole (or, if its input share is short, span-masked to fit with no target).

Budgets are exact where the sample has tokens enough: per-modality counts are capped by what the
modality holds (for an image target: what its inputs left), the excess is re-spread by water
filling, and what sequences leave unused after masking goes to the set-like modalities. With
``use_input_fill=False`` inputs get their Dirichlet share and no more (a draw that puts the budget on a
20-token caption shows the caption alone); ``use_target_fill=False`` does the same for targets (both
off is 4M's own masking, where such budget is padding). Only modalities the chosen component offers
(alpha > 0) receive any budget, so an RGB-to-all draw never leaks other inputs; where the offered ones
run out, the rest is padding.

A masked sample is a dict of flat int64 arrays (encoder: ``enc_ids, enc_mod, enc_pos``; decoder:
``dec_ids, dec_target, dec_mod, dec_pos, dec_group``); :func:`collate` pads a list of them into a
:class:`~fourm.model.batch.Batch`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from fourm.kinds import handler
from fourm.modalities import CORPUS, MODALITIES, Modality
from fourm.model.batch import Batch
from fourm.tokenization.base import load_tokenizer

IGNORE_INDEX = -100  # dec_target on padding: skipped by cross-entropy
PAD_GROUP = -1  # dec_group on padding: padding queries attend to each other only, never to real tokens
_ENC_KEYS = ("enc_ids", "enc_mod", "enc_pos")
_DEC_KEYS = ("dec_ids", "dec_target", "dec_mod", "dec_pos", "dec_group")


# ----------------------------------------------------------------------------- config
@dataclass
class TextSpecials:
    """Special ids of the shared WordPiece vocabulary (defaults: the layout of fourm.tokenization.text)."""

    pad: int = 0
    sos: int = 2
    eos: int = 3
    sentinels: list[int] = field(default_factory=lambda: list(range(4, 204)))


def specials_from_tokenizer(path: str | os.PathLike | object) -> TextSpecials:
    """The special ids of a sequence tokenizer (any object with pad/sos/eos/sentinel ids), or of the one saved
    at ``path``."""
    tokenizer = load_tokenizer(path) if isinstance(path, (str, os.PathLike)) else path
    missing = [a for a in ("pad_id", "sos_id", "eos_id", "sentinel_ids") if not hasattr(tokenizer, a)]
    if missing:
        raise ValueError(f"{path}: {type(tokenizer).__name__} has no {', '.join(missing)}: not a sequence tokenizer")
    return TextSpecials(int(tokenizer.pad_id), int(tokenizer.sos_id), int(tokenizer.eos_id),
                        [int(i) for i in tokenizer.sentinel_ids])


@dataclass
class DirichletComponent:
    """One Dirichlet of the mixture. Alphas by modality key, ``"*"`` for all others (default 0).

    A modality with alpha 0 is never offered by this component: it gets no budget, not even the
    leftovers (so an RGB-to-all draw has only rgb inputs).
    """

    weight: float = 1.0
    input_alphas: dict[str, float] = field(default_factory=lambda: {"*": 1.0})
    target_alphas: dict[str, float] = field(default_factory=lambda: {"*": 1.0})


def default_mixture() -> list[DirichletComponent]:
    """4M-21's mixture: all-to-all at alpha 0.01, 0.1, 1 and 10, RGB-to-all, and caption-biased.

    The paper names the components, not their weights or the biased alphas: equal weights and a
    5:0.1 caption bias are our choice.
    """
    all_to_all = [DirichletComponent(1.0, {"*": a}, {"*": a}) for a in (0.01, 0.1, 1.0, 10.0)]
    return [
        *all_to_all,
        DirichletComponent(1.0, {"rgb": 1.0, "*": 0.0}, {"*": 0.5}),
        DirichletComponent(1.0, {"caption": 5.0, "t5_caption": 5.0, "*": 0.1}, {"*": 0.5}),
    ]


@dataclass
class MaskingConfig:
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"fill_inputs": "use_input_fill"}

    input_budget: int = 128  # encoder tokens per sample (4M-21: 256)
    target_budget: int = 128  # decoder tokens per sample (4M-21: 256)
    mixture: list[DirichletComponent] = field(default_factory=default_mixture)
    mean_span: float = 3.0  # mean length of a masked span in a sequence (T5: 3)
    mask_rate: list[float] = field(default_factory=lambda: [0.0, 1.0])  # share of a sequence masked, drawn uniformly
    inputs: list[str] | None = None  # modalities that may be inputs (None: all)
    targets: list[str] | None = None  # modalities that may be targets (None: all but the input-only kinds)
    # Input budget a modality cannot use (a 20-token caption given 90% of 128) goes to the others
    # (True: every encoder slot used) or stays empty (False). Filled, a draw that puts the budget on
    # the caption still shows ~100 image tokens beside it, so caption -> X alone is rarely trained:
    # on the demo corpus (nano, 900-1000 steps) held-out loss of depth given only the caption was
    # 0.78x the unigram baseline filled, 0.49x not. But the evaluation, which gives whole modalities,
    # was better filled (RGB -> semseg mIoU 0.318 vs 0.295, boxes P/R 0.015/0.013 vs 0/0, caption ->
    # image R@1 0.062 vs 0.000): the default.
    use_input_fill: bool = True
    # the same for the target budget, re-spread by default; off (with use_input_fill off) is 4M's masking,
    # whose unused budget is padding (the blocks skip it: fourm.model.packing)
    use_target_fill: bool = True

    def __post_init__(self):
        if self.input_budget < 1 or self.target_budget < 0:
            raise ValueError("input_budget must be >= 1 and target_budget >= 0")
        if not self.mixture or any(c.weight < 0 for c in self.mixture) or sum(c.weight for c in self.mixture) <= 0:
            raise ValueError("mixture needs at least one component and positive total weight")
        if any(a < 0 for c in self.mixture for a in [*c.input_alphas.values(), *c.target_alphas.values()]):
            raise ValueError("Dirichlet alphas must be >= 0")
        if self.mean_span < 1:
            raise ValueError(f"mean_span must be >= 1, not {self.mean_span}")
        if len(self.mask_rate) != 2 or not 0 <= self.mask_rate[0] <= self.mask_rate[1] <= 1:
            raise ValueError(f"mask_rate must be [low, high] within [0, 1], not {self.mask_rate}")


# ----------------------------------------------------------------------------- budgets
def sample_dirichlet(alphas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One Dirichlet draw over the entries with alpha > 0 (the others get exactly 0).

    Drawn in log space as Gamma(a) = Gamma(a + 1) * U^(1/a): plain gamma draws underflow to 0 for
    alphas like 0.01, which would leave 0/0 where the mass should sit on one modality.
    """
    out = np.zeros(len(alphas))
    on = alphas > 0
    if on.any():
        a = alphas[on]
        with np.errstate(divide="ignore"):
            log_g = np.log(rng.standard_gamma(a + 1.0)) + np.log(rng.random(len(a))) / a
        w = np.exp(log_g - log_g.max())
        out[on] = w / w.sum()
    return out


def _water_fill(total: int, weights: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Integer counts <= caps, summing to min(total, caps offered), proportional to weights where uncapped."""
    counts = np.zeros(len(caps), dtype=np.int64)
    active = np.flatnonzero((weights > 0) & (caps > 0))
    if total <= 0 or not len(active):
        return counts
    # Water filling in closed form: in order of cap / weight, the saturated modalities are a prefix;
    # it is the first prefix whose remaining share lam * w leaves the next modality under its cap.
    with np.errstate(over="ignore"):  # weights of ~1e-300 (tiny alphas): ratios overflow to inf, harmlessly
        order = active[np.argsort(caps[active] / weights[active], kind="stable")]
        w, c = weights[order], caps[order]
        goal = int(min(total, c.sum()))
        lam = (goal - (np.cumsum(c) - c)) / np.cumsum(w[::-1])[::-1]
        under = lam * w < c
    cut = int(under.argmax()) if under.any() else len(c)
    share = np.where(np.arange(len(c)) < cut, c, lam[min(cut, len(c) - 1)] * w)
    got = np.minimum(np.floor(share + 1e-9).astype(np.int64), c)
    frac = np.where(got < c, share - got, -1.0)
    got[np.argsort(-frac, kind="stable")[: max(0, goal - int(got.sum()))]] += 1  # largest remainders
    counts[order] = got
    return counts


def allocate(total: int, weights: np.ndarray, caps: np.ndarray, respread: bool = True) -> np.ndarray:
    """Split ``total`` tokens over modalities: proportional to ``weights``, capped by ``caps``.

    What capped modalities cannot take is re-spread over the others; modalities with room but a
    weight of 0 (a Dirichlet draw that underflowed) are filled evenly last. Entries with cap 0 get
    nothing. The result sums to ``min(total, caps.sum())``. With ``respread=False`` each modality
    gets its own share (rounded by largest remainders) capped, and what the caps cut is not given out.
    """
    caps = np.maximum(np.asarray(caps, dtype=np.int64), 0)
    if total <= 0:
        return np.zeros(len(caps), dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    if not respread:
        weights = np.where(caps > 0, weights, 0.0)
        if weights.sum() <= 0:
            return np.zeros(len(caps), dtype=np.int64)
        share = weights / weights.sum() * total
        counts = np.floor(share).astype(np.int64)
        counts[np.argsort(-(share - counts), kind="stable")[: total - int(counts.sum())]] += 1
        return np.minimum(counts, caps)
    # weights many orders below the largest (tiny alphas) count as 0: their cap/weight ratios would
    # overflow the water filling and hand every such modality its whole cap, over the total
    weights = np.where(weights > 1e-9 * weights.max(initial=0.0), weights, 0.0)
    counts = _water_fill(total, weights, caps)
    left, room = total - int(counts.sum()), caps - counts
    if left > 0 and room.any():
        counts += _water_fill(left, (room > 0).astype(np.float64), room)
    return counts


# ----------------------------------------------------------------------------- span masking
def _composition(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random split of ``total`` into ``parts`` positive integers."""
    if parts <= 1:
        return np.full(parts, total, dtype=np.int64)
    cuts = np.sort(rng.choice(total - 1, parts - 1, replace=False)) + 1
    return np.diff(np.concatenate([[0], cuts, [total]]))


def span_mask(body: np.ndarray, num_masked: int, num_spans: int, sentinels: np.ndarray, end: np.ndarray,
              eos: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mask ``num_masked`` of ``body``'s tokens in ``num_spans`` non-adjacent spans at random places.

    Returns (input, target): input = kept tokens with ``sentinels[j]`` in place of span ``j``, then
    ``end`` (the sequence's own ``[EOS]``, if it had one); target = ``sentinels[j]`` + span ``j`` for
    each span, then ``eos``. ``num_spans`` must lie in ``[min(1, num_masked), min(num_masked,
    len(body) - num_masked + 1)]``.
    """
    length, k = len(body), num_spans
    if k == 0:
        return np.concatenate([body, end]), np.array([eos], dtype=body.dtype)
    spans = _composition(num_masked, k, rng)
    # kept tokens into k + 1 gaps, the k - 1 inner ones non-empty (else two spans would merge)
    extra = length - num_masked - (k - 1)
    bars = np.sort(rng.choice(extra + k, k, replace=False))
    gaps = np.diff(np.concatenate([[-1], bars, [extra + k]])) - 1
    gaps[1:-1] += 1
    segments = np.empty(2 * k + 1, dtype=np.int64)
    segments[0::2], segments[1::2] = gaps, spans
    masked = np.repeat(np.arange(2 * k + 1) % 2 == 1, segments)
    starts = (np.cumsum(segments) - segments)[1::2]
    keep = ~masked
    keep[starts] = True
    shown = body.copy()
    shown[starts] = sentinels[:k]
    inputs = np.concatenate([shown[keep], end])
    targets = np.concatenate([np.insert(body[masked], np.cumsum(spans) - spans, sentinels[:k]), [eos]])
    return inputs, targets.astype(body.dtype)


# ----------------------------------------------------------------------------- the masker
class Masker:
    """Turns one sample into encoder and decoder token lists (see the module notes).

    Args:
        modalities: the model's modalities, resolved at its scale; their order gives the ``mod``
            indices, as in the model.
        cfg: budgets, mixture, span settings, input/target eligibility.
        specials: special ids of the text vocabulary; needed when a sequence modality is present.

    ``masker(sample, rng)``: ``sample`` maps modality keys to arrays (absent key: the sample lacks
    that modality): image and global tokens ``(n,)``, sequences ``(L,)`` ending with ``[EOS]``,
    rgb ``(H, W, 3)`` (only its presence matters here), t5_caption ``(L, C)``. Encoder ids of rgb
    and t5_caption are indices of the patch / vector.
    """

    def __init__(self, modalities: dict[str, Modality], cfg: MaskingConfig, specials: TextSpecials | None = None):
        self.names = list(modalities)
        self.modalities = modalities
        self.cfg = cfg
        mods = list(modalities.values())
        for what, names in (("inputs", cfg.inputs), ("targets", cfg.targets)):
            unknown = sorted(set(names or ()) - set(self.names))
            if unknown:
                raise ValueError(f"masking {what} {', '.join(unknown)} are not among the modalities {self.names}")
        only_in = [n for n in cfg.targets or () if modalities[n].input_only]
        if only_in:
            raise ValueError(f"{', '.join(only_in)} are input-only and cannot be targets")
        self.kinds = [handler(m) for m in mods]
        self.is_seq = np.array([kind.autoregressive for kind in self.kinds])  # span-masked, teacher-forced
        self.can_input = np.array([cfg.inputs is None or n in cfg.inputs for n in self.names])
        self.can_target = np.array([not m.input_only and (cfg.targets is None or n in cfg.targets)
                                    for n, m in modalities.items()])
        self.weights = np.array([c.weight for c in cfg.mixture], dtype=np.float64)
        self.input_alphas = np.array([[self._alpha(c.input_alphas, n) for n in self.names] for c in cfg.mixture])
        self.target_alphas = np.array([[self._alpha(c.target_alphas, n) for n in self.names] for c in cfg.mixture])
        if self.is_seq.any() and (specials is None or not specials.sentinels):
            raise ValueError("sequence modalities need the text specials (pad, sos, eos, sentinels)")
        self._offers_in, self._offers_tgt = self.input_alphas > 0, self.target_alphas > 0
        self.specials = specials
        self.sentinels = np.asarray(specials.sentinels if specials else [], dtype=np.int64)
        # the series of each modality: set-like ones of one source and as many positions share one
        series = {}
        self.series = np.array([series.setdefault((m.source, m.tokens) if not seq else ("", i), len(series))
                                for i, (m, seq) in enumerate(zip(mods, self.is_seq, strict=True))])

    def _alpha(self, alphas: dict[str, float], name: str) -> float:
        """The alpha of model modality ``name``: given by its own key, else by its corpus series (``rgb``
        covers both the pixels and ``tok_rgb``: a model that reads RGB only as tokens still gets the
        RGB-to-all component), else by ``"*"``."""
        # registry names the model lacks are fine (the default mixture names rgb and caption)
        unknown = sorted(set(alphas) - {"*"} - set(self.names) - set(MODALITIES) - set(CORPUS))
        if unknown:
            raise ValueError(f"Dirichlet alphas name unknown modalities {', '.join(unknown)}")
        source = self.modalities[name].source
        return float(alphas.get(name, alphas.get(source, alphas.get("*", 0.0))))

    def available(self, sample: dict) -> np.ndarray:
        """Tokens each modality offers in ``sample`` (0 where absent)."""
        counts = np.zeros(len(self.names), dtype=np.int64)
        for i, (name, m) in enumerate(self.modalities.items()):
            value = sample.get(name)
            if value is not None:
                counts[i] = self.kinds[i].available(m, value)
        return counts

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
        cfg, seq = self.cfg, self.is_seq
        n = self.available(sample)
        in_ok, tgt_ok = (n > 0) & self.can_input, (n > 0) & self.can_target
        c = self._component(in_ok, tgt_ok, rng)
        in_alphas, tgt_alphas = self.input_alphas[c] * in_ok, self.target_alphas[c] * tgt_ok
        p_in, p_tgt = sample_dirichlet(in_alphas, rng), sample_dirichlet(tgt_alphas, rng)
        n_in = allocate(cfg.input_budget, p_in, np.where(in_alphas > 0, n, 0), respread=cfg.use_input_fill)
        # a sequence target may take [S_0] + every token (+1); an image target what its series' inputs left
        n_tgt = allocate(cfg.target_budget, p_tgt,
                         np.where(tgt_alphas > 0, np.where(seq, n + 1, n - self._most(n_in)), 0),
                         respread=cfg.use_target_fill)

        seq_parts = {}
        for i in np.flatnonzero(seq & ((n_in > 0) | (n_tgt > 0))):
            inputs, targets = self._mask_sequence(np.asarray(sample[self.names[i]])[: n[i]], n_in[i], n_tgt[i], rng)
            seq_parts[i] = inputs, targets
            n_in[i], n_tgt[i] = len(inputs), len(targets)
        # budget the sequences left unused goes to the set-like modalities still offered and with room
        sets = ~seq
        if cfg.use_input_fill:
            n_in += allocate(cfg.input_budget - int(n_in.sum()), p_in,
                             np.where(sets & (in_alphas > 0), n - n_in - self._most(n_tgt), 0))
        if cfg.use_target_fill:
            n_tgt += allocate(cfg.target_budget - int(n_tgt.sum()), p_tgt,
                              np.where(sets & (tgt_alphas > 0), n - self._most(n_in) - n_tgt, 0))

        parts: dict[str, list] = {k: [] for k in ("enc_ids", "enc_pos", "dec_ids", "dec_target", "dec_pos")}
        orders: dict[int, np.ndarray] = {}  # one permutation per series: inputs its front, targets its back
        for i in np.flatnonzero((n_in > 0) | (n_tgt > 0)):
            kind = self.kinds[i]
            if kind.autoregressive:
                inputs, targets = seq_parts[i]
                enc_ids, enc_pos = inputs, np.arange(len(inputs))
                dec_target, dec_pos = targets, np.arange(len(targets))
                dec_ids = np.concatenate([[self.specials.sos], targets])[: len(targets)]  # teacher forcing
            else:
                order = orders.get(self.series[i])
                if order is None or len(order) != n[i]:
                    order = orders[self.series[i]] = rng.permutation(n[i])
                enc_pos, dec_pos = np.sort(order[: n_in[i]]), np.sort(order[len(order) - n_tgt[i]:])
                if kind.continuous:
                    enc_ids, dec_target = enc_pos, dec_pos  # the id is the patch / vector index
                else:
                    values = np.asarray(sample[self.names[i]])
                    enc_ids, dec_target = values[enc_pos], values[dec_pos]
                dec_ids = np.zeros(len(dec_pos), dtype=np.int64)  # decoder queries carry no content
            for key, value in zip(parts, (enc_ids, enc_pos, dec_ids, dec_target, dec_pos), strict=True):
                parts[key].append(value)
        out = {k: np.concatenate(v).astype(np.int64) if v else np.zeros(0, dtype=np.int64) for k, v in parts.items()}
        index = np.arange(len(n))
        out["enc_mod"], out["dec_mod"] = np.repeat(index, n_in), np.repeat(index, n_tgt)
        out["dec_group"] = np.repeat(np.cumsum(n_tgt > 0) - 1, n_tgt)  # one group per target modality
        return out

    def _most(self, counts: np.ndarray) -> np.ndarray:
        """Per modality, the largest of ``counts`` over its series: its inputs are nested prefixes of one
        permutation and its targets suffixes, disjoint while the most inputs + the most targets fit."""
        most = np.zeros(int(self.series.max()) + 1, dtype=np.int64)
        np.maximum.at(most, self.series, counts)
        return most[self.series]

    def _component(self, in_ok: np.ndarray, tgt_ok: np.ndarray, rng: np.random.Generator) -> int:
        """A mixture component, among those that offer this sample at least one input and one target."""
        weights = self.weights * ((self._offers_in & in_ok).any(1) & (self._offers_tgt & tgt_ok).any(1))
        if weights.sum() <= 0:
            weights = self.weights
        cumulative = np.cumsum(weights)
        return int(min(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"), len(weights) - 1))

    def _mask_sequence(self, ids: np.ndarray, budget_in: int, budget_tgt: int,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(input, target) ids of one sequence within its budgets; either may be empty."""
        ids = ids.astype(np.int64)
        eos = self.specials.eos
        split = len(ids) - 1 if len(ids) and ids[-1] == eos else len(ids)
        body, end = ids[:split], ids[split:]
        length = len(body)
        num_masked = self._fit(length, len(end), budget_in, budget_tgt > 0, rng)
        if num_masked is None:  # no room for an informative input: the whole sequence is a target, or nothing
            if budget_tgt == 0:
                return ids[:0], ids[:0]
            _, targets = span_mask(body, length, min(1, length), self.sentinels, end, eos, rng)
            return ids[:0], self._window(targets, budget_tgt, rng)
        num_spans = int(self._num_spans(length, np.array([num_masked]))[0])
        inputs, targets = span_mask(body, num_masked, num_spans, self.sentinels, end, eos, rng)
        return inputs, self._window(targets, budget_tgt, rng)

    def _num_spans(self, length: int, num_masked: np.ndarray) -> np.ndarray:
        k = np.rint(num_masked / self.cfg.mean_span).astype(np.int64)
        k = np.minimum(np.maximum(k, 1), np.minimum(num_masked, length - num_masked + 1))
        return np.where(num_masked == 0, 0, np.minimum(k, len(self.sentinels)))

    def _fit(self, length: int, end: int, budget_in: int, with_target: bool, rng) -> int | None:
        """How many body tokens to mask: the drawn rate, raised until the input fits ``budget_in``.

        ``None`` where only a fully masked body (one sentinel + end, which says nothing) would fit.
        """
        if budget_in == 0:
            return None
        if with_target and length:
            low, high = self.cfg.mask_rate
            start = min(max(int(np.ceil(rng.uniform(low, high) * length)), 1), length)
        else:
            start = 0  # no target: mask only what the input budget forces out
        masked = np.arange(start, length + 1)
        fits = length - masked + self._num_spans(length, masked) + end <= budget_in
        if not fits.any() or (masked[fits.argmax()] == length and length):
            return None
        return int(masked[fits.argmax()])

    def _window(self, targets: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
        """The target, or a ``budget``-long piece of it starting at a random sentinel (as 4M does)."""
        if len(targets) <= budget:
            return targets
        if budget == 0:
            return targets[:0]
        starts = np.flatnonzero(np.isin(targets, self.sentinels))
        full = starts[starts <= len(targets) - budget]
        later = starts[starts > len(targets) - budget][:1]  # the first start whose tail is shorter than the budget
        options = np.concatenate([full, later]) if len(full) or len(later) else np.array([0])
        start = int(options[rng.integers(len(options))])
        return targets[start: start + budget]

    def collate(self, samples: list[dict[str, np.ndarray]], continuous: dict[str, torch.Tensor] | None = None) -> Batch:
        """Masked samples -> a Batch padded to this masker's budgets."""
        return collate(samples, continuous, self.cfg.input_budget, self.cfg.target_budget)


# ----------------------------------------------------------------------------- collation
def collate(samples: list[dict[str, np.ndarray]], continuous: dict[str, torch.Tensor] | None = None,
            input_budget: int | None = None, target_budget: int | None = None) -> Batch:
    """Pad masked samples to ``(B, input_budget)`` / ``(B, target_budget)`` (default: the longest).

    Padding: ids, mod and pos 0, ``dec_target`` -100, ``dec_group`` -1, ``*_valid`` False.
    """
    b = len(samples)
    ne = max((len(s["enc_ids"]) for s in samples), default=0) if input_budget is None else input_budget
    nd = max((len(s["dec_target"]) for s in samples), default=0) if target_budget is None else target_budget
    fill = {"dec_target": IGNORE_INDEX, "dec_group": PAD_GROUP}
    out = {k: np.full((b, ne if k in _ENC_KEYS else nd), fill.get(k, 0), dtype=np.int64)
           for k in (*_ENC_KEYS, *_DEC_KEYS)}
    enc_valid, dec_valid = np.zeros((b, ne), dtype=bool), np.zeros((b, nd), dtype=bool)
    for row, s in enumerate(samples):
        le, ld = len(s["enc_ids"]), len(s["dec_target"])
        if le > ne or ld > nd:
            raise ValueError(f"sample {row} has {le} encoder / {ld} decoder tokens, over the budgets {ne} / {nd}")
        for k in _ENC_KEYS:
            out[k][row, :le] = s[k]
        for k in _DEC_KEYS:
            out[k][row, :ld] = s[k]
        enc_valid[row, :le], dec_valid[row, :ld] = True, True
    tensors = {k: torch.from_numpy(v) for k, v in out.items()}
    return Batch(**tensors, enc_valid=torch.from_numpy(enc_valid), dec_valid=torch.from_numpy(dec_valid),
                 continuous=dict(continuous or {}))
