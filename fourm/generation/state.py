"""What a batch of samples holds while it is being generated, and the model batches built from it.

:class:`GenerationState` keeps every modality of B samples in the form the model reads (the form
training's masking produces, ``fourm.data.masking``):

* image and global tokens: ``ids`` (B, N) with ``known`` (B, N) bool -- known tokens are inputs,
  the others are still to generate (a partial input is a grid with some tokens known);
* sequences: per sample the encoder form, a list of ids ending with ``[EOS]``, where a sentinel
  ``[S_j]`` stands for a masked span still to generate; ``None`` where the sample lacks it;
* raw inputs (``rgb`` pixels (B, 3, H, W) in [-1, 1], ``t5_caption`` vectors (B, L, C)) with a
  per-sample presence flag.

Guidance needs the same samples seen under several sets of conditions: :meth:`encoder_batch` packs
one row per (variant, sample), variant-major, so the conditional and unconditional passes of every
sample run in one batched forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from fourm.data.masking import TextSpecials, collate
from fourm.kinds import handler
from fourm.modalities import Modality
from fourm.model.batch import Batch

# a guidance variant: the modalities kept as conditions (None: all); the target is always kept
Variant = tuple[str, ...] | None


@dataclass
class GenerationState:
    """Tokens of ``batch_size`` samples by model modality (see the module notes).

    Args:
        specs: the model's resolved modalities, in model order (``FourM.specs``).
        batch_size: B.
        specials: ids of ``[SOS]``, ``[EOS]`` and the sentinels.
    """

    specs: dict[str, Modality]
    batch_size: int
    specials: TextSpecials = field(default_factory=TextSpecials)
    grids: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)  # name -> ids (B, N), known (B, N)
    seqs: dict[str, list[list[int] | None]] = field(default_factory=dict)
    continuous: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)  # name -> values, present (B,)

    def __post_init__(self):
        self.names = list(self.specs)

    # ------------------------------------------------------------------------------ filling
    def set_grid(self, name: str, ids: Tensor, known: Tensor | None = None) -> None:
        """Image / global tokens (B, N); ``known`` (default: ids >= 0) marks the given ones."""
        spec = self._spec(name, "grid")
        ids = torch.as_tensor(ids).long()
        if ids.shape != (self.batch_size, spec.tokens):
            raise ValueError(f"{name}: expected token ids ({self.batch_size}, {spec.tokens}), got {tuple(ids.shape)}")
        known = ids >= 0 if known is None else torch.as_tensor(known).bool()
        bad = known & (ids >= spec.vocab_size)
        if bad.any():
            raise ValueError(f"{name}: token id {int(ids[bad].max())} is outside the vocabulary [0, {spec.vocab_size})")
        self.grids[name] = (ids.clamp(min=0).masked_fill(~known, 0), known)

    def set_sequence(self, name: str, seqs: list[list[int] | None]) -> None:
        """Per sample the encoder form (ids ending with [EOS], sentinels for spans to generate) or None."""
        spec = self._spec(name, "sequence")
        if len(seqs) != self.batch_size:
            raise ValueError(f"{name}: {len(seqs)} sequences for {self.batch_size} samples")
        out = []
        for s in seqs:
            if s is None:
                out.append(None)
                continue
            s = [int(i) for i in s]
            if not s or s[-1] != self.specials.eos:
                s = [*s, self.specials.eos]
            if len(s) > spec.tokens:
                raise ValueError(f"{name}: {len(s)} tokens, more than the model's maximum {spec.tokens}")
            if max(s) >= spec.vocab_size or min(s) < 0:
                raise ValueError(f"{name}: token ids must lie in [0, {spec.vocab_size})")
            out.append(s)
        self.seqs[name] = out

    def set_continuous(self, name: str, values: Tensor, present: Tensor | None = None) -> None:
        self._spec(name, "continuous")
        values = torch.as_tensor(values).float()
        if values.shape[0] != self.batch_size:
            raise ValueError(f"{name}: {values.shape[0]} values for {self.batch_size} samples")
        present = torch.ones(self.batch_size, dtype=torch.bool) if present is None else torch.as_tensor(present)
        self.continuous[name] = (values, present.bool())

    def _spec(self, name: str, slot: str) -> Modality:
        """The model's modality ``name``, which must be held in ``slot`` (its kind's ``state_slot``)."""
        if name not in self.specs:
            raise ValueError(f"modality {name!r} is not one of the model's: {', '.join(self.names)}")
        spec = self.specs[name]
        if handler(spec).state_slot != slot:
            raise ValueError(f"{name} is a {spec.kind_name} modality")
        return spec

    # ------------------------------------------------------------------------------ queries
    def has(self, name: str) -> bool:
        return name in self.grids or name in self.seqs or name in self.continuous

    def fully_known(self, name: str) -> bool:
        """Every sample holds all of ``name`` (nothing left to generate)."""
        if name in self.grids:
            return bool(self.grids[name][1].all())
        if name in self.seqs:
            masked = set(self.specials.sentinels)
            return all(s is not None and not masked.intersection(s) for s in self.seqs[name])
        if name in self.continuous:
            return bool(self.continuous[name][1].all())
        return False

    def tokens(self, name: str) -> Tensor | list[list[int] | None]:
        return self.grids[name][0] if name in self.grids else self.seqs[name]

    # ------------------------------------------------------------------------------ model batches
    def _sample_tokens(self, b: int, keep: Variant, target: str | None,
                       target_tokens: Tensor | None) -> dict[str, list[np.ndarray]]:
        """Encoder ids, mod, pos of sample ``b`` under one variant, in model modality order."""
        parts = {"enc_ids": [], "enc_mod": [], "enc_pos": []}
        for m, name in enumerate(self.names):
            if keep is not None and name not in keep and name != target:
                continue
            if name in self.grids:
                ids, known = self.grids[name]
                chosen = target_tokens if name == target and target_tokens is not None else known
                pos = chosen[b].nonzero().squeeze(1).numpy()
                values = ids[b].numpy()[pos]
            elif name in self.seqs and self.seqs[name][b] is not None:
                values = np.asarray(self.seqs[name][b], dtype=np.int64)
                if target == name and np.isin(values, self.specials.sentinels).all(where=values != self.specials.eos):
                    continue  # wholly masked: a sequence target with nothing given has no encoder tokens
                pos = np.arange(len(values))
            elif name in self.continuous and bool(self.continuous[name][1][b]):
                length = handler(self.specs[name]).continuous_length(self.specs[name], self.continuous[name][0])
                pos = values = np.arange(length)  # continuous: the id is the patch / vector index
            else:
                continue
            parts["enc_ids"].append(values)
            parts["enc_mod"].append(np.full(len(pos), m))
            parts["enc_pos"].append(pos)
        return parts

    def encoder_batch(self, variants: list[Variant] = (None,), target: str | None = None,
                      target_tokens: Tensor | None = None) -> Batch:
        """One row per (variant, sample), variant-major: (V * B, Ne); no decoder tokens yet. ``target_tokens``
        (B, N) bool: which of grid ``target``'s known tokens to include (default: all of them)."""
        empty = np.zeros(0, dtype=np.int64)
        samples = []
        for keep in variants:
            for b in range(self.batch_size):
                parts = self._sample_tokens(b, keep, target, target_tokens)
                sample = {k: np.concatenate(v).astype(np.int64) if v else empty for k, v in parts.items()}
                sample.update(dec_ids=empty, dec_target=empty, dec_mod=empty, dec_pos=empty, dec_group=empty)
                samples.append(sample)
        continuous = {name: values.repeat(len(variants), *([1] * (values.dim() - 1)))
                      for name, (values, _) in self.continuous.items()}
        return collate(samples, continuous)


def with_queries(enc: Batch, mod: int, pos: Tensor, valid: Tensor, ids: Tensor | None = None) -> Batch:
    """``enc`` plus decoder queries of one target modality: ``pos`` / ``valid`` (B, Nq) repeated over
    the variant rows of ``enc`` (one attention group: a single target modality)."""
    repeat = enc.enc_ids.shape[0] // pos.shape[0]
    pos, valid = pos.repeat(repeat, 1), valid.repeat(repeat, 1)
    ids = torch.zeros_like(pos) if ids is None else ids.repeat(repeat, 1)
    return Batch(enc.enc_ids, enc.enc_mod, enc.enc_pos, enc.enc_valid, dec_ids=ids,
                 dec_target=torch.full_like(pos, -100), dec_mod=torch.full_like(pos, mod), dec_pos=pos,
                 dec_group=torch.zeros_like(pos), dec_valid=valid, continuous=enc.continuous)
