"""What :class:`~fourm.model.fourm.FourM` keeps between generation steps: the decoder's state of an incremental
decode (:meth:`FourM.start_decoding`, :meth:`FourM.decode_step`) and the encoder's of inputs encoded a step at a
time (:meth:`FourM.start_encoding`, :meth:`FourM.encode_step`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fourm.model.attention import AttentionMask, KVCache


@dataclass
class DecodeCache:
    """State of an incremental decode: cross-attention keys/values of the memory (fixed) and every
    decoder layer's self-attention keys/values with the tags of the tokens decoded so far."""

    cross_kv: list[tuple[Tensor, Tensor]]  # per decoder layer, each (B, H, Ne, d)
    cross_mask: AttentionMask
    layers: list[KVCache]
    group: Tensor  # (B, T) tags of the cached tokens
    pos: Tensor
    valid: Tensor

    def __len__(self) -> int:
        return self.group.shape[1]


@dataclass
class EncodeCache:
    """Inputs encoded so far, to encode more of them a step at a time (:meth:`FourM.encode_step`): every
    encoder layer's self-attention keys/values and, for the decoder, every layer's cross-attention
    keys/values of the encoder's outputs, with which of the cached slots hold a token and which token (its
    modality and position)."""

    layers: list[KVCache]
    cross: list[KVCache]
    valid: Tensor  # (B, T)
    mod: Tensor  # (B, T): each slot's modality index
    pos: Tensor  # (B, T): and its position in that modality

    def __len__(self) -> int:
        return self.valid.shape[1]

    def place(self, mod: Tensor, pos: Tensor, valid: Tensor) -> tuple[Tensor, int]:
        """Slots for a step's tokens (B, n) and the cache's length after them: a valid token of a modality and
        position the cache holds goes to that token's slot (it is encoded again in place), every other valid one
        after the cached slots, padding to one spare slot at the end that is never valid. Marks the slots."""
        b, t = self.valid.shape
        same = (mod[:, :, None] == self.mod[:, None, :]) & (pos[:, :, None] == self.pos[:, None, :])
        same &= self.valid[:, None, :] & valid[:, :, None]
        held = same.any(-1)
        new = valid & ~held
        spare = t + (int(new.sum(1).max()) if new.numel() else 0)
        held_slot = (same * torch.arange(t, device=same.device)).sum(-1)  # a token is held in one slot at most
        slots = torch.where(held, held_slot, torch.where(new, t + new.long().cumsum(1) - 1, spare))
        length = spare + int(bool((~valid).any()))
        grow = length - t
        self.valid = F.pad(self.valid, (0, grow), value=False)
        self.mod, self.pos = F.pad(self.mod, (0, grow)), F.pad(self.pos, (0, grow))
        row = torch.arange(b, device=slots.device)[:, None].expand_as(slots)[valid]
        self.valid[row, slots[valid]] = True
        self.mod[row, slots[valid]], self.pos[row, slots[valid]] = mod[valid], pos[valid]
        return slots, length
