"""The packed batch FourM reads: fixed-size token lists, not per-modality padded grids.

Masking (fourm.data.masking) turns each sample into a list of encoder tokens (inputs) and a list
of decoder tokens (targets), every token tagged with its modality and position; collation pads the
lists to the batch's budgets. Only the chosen tokens reach the trunk, so no compute is spent on
tokens that are neither input nor target.

Shapes (B = batch, Ne = encoder budget, Nd = decoder budget, indices ``m`` into ``modalities``):

=================  =============  ============================================================
field              shape, dtype   meaning
=================  =============  ============================================================
enc_ids            (B, Ne) int64  token id; for continuous modalities the index of the patch
                                  (rgb) or vector (t5_caption) in ``continuous[name]``
enc_mod            (B, Ne) int64  modality index
enc_pos            (B, Ne) int64  position in the modality (patch index, or sequence position)
enc_valid          (B, Ne) bool   False on padding
dec_ids            (B, Nd) int64  decoder input: for sequences the previous token (teacher
                                  forcing); ignored for image and global targets (mask token)
dec_target         (B, Nd) int64  the id to predict, -100 on padding (ignored by the loss)
dec_mod, dec_pos   (B, Nd) int64  as for the encoder
dec_group          (B, Nd) int64  attention group, one per target modality of the sample: a
                                  decoder token sees only tokens of its own group, and in a
                                  sequence modality only those at earlier or equal positions
dec_valid          (B, Nd) bool   False on padding
continuous         dict           raw inputs by modality: rgb (B, 3, H, W) float in [-1, 1],
                                  t5_caption (B, L, C) float
=================  =============  ============================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch


@dataclass
class Batch:
    enc_ids: torch.Tensor
    enc_mod: torch.Tensor
    enc_pos: torch.Tensor
    enc_valid: torch.Tensor
    dec_ids: torch.Tensor
    dec_target: torch.Tensor
    dec_mod: torch.Tensor
    dec_pos: torch.Tensor
    dec_group: torch.Tensor
    dec_valid: torch.Tensor
    continuous: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device) -> Batch:
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self) if f.name != "continuous"}
        return Batch(**moved, continuous={k: v.to(device) for k, v in self.continuous.items()})

    def check(self) -> None:
        """Shape agreement at the model's entry: one clear error instead of a broadcast failure."""
        b, ne = self.enc_ids.shape
        for name in ("enc_mod", "enc_pos", "enc_valid"):
            if getattr(self, name).shape != (b, ne):
                raise ValueError(f"batch.{name} has shape {tuple(getattr(self, name).shape)}, expected {(b, ne)}")
        nd = self.dec_ids.shape[1]
        for name in ("dec_target", "dec_mod", "dec_pos", "dec_group", "dec_valid"):
            if getattr(self, name).shape != (b, nd):
                raise ValueError(f"batch.{name} has shape {tuple(getattr(self, name).shape)}, expected {(b, nd)}")
