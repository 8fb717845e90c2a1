"""Output heads: a target modality's decoder states -> logits over its vocabulary.

A plain linear head learns each of an image tokenizer's 1024 codes on its own: that a caption's "purple"
raises the logits of the purple codes must be learnt once per purple code, from the few targets each
code gets. :class:`CodebookHead` adds the similarity of a learnt projection of the state to every code's
vector in the tokenizer's own (frozen) codebook, the vectors its decoder turns into pixels. Codes that
decode alike lie close there, so what one code learns moves its neighbours too, and "purple here" is one
direction in a 32-d space rather than a row per code. The linear head stays beside it for what the
codebook's geometry does not say.

Every head is affine in the decoder's output: guided generation combines the decoder states of its
condition sets before the head (``fourm.generation.schedule.Guidance``), which equals combining logits
only for an affine head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CodebookHead(nn.Module):
    """``logits = W h + b + (P h) . c_k`` for each code ``k``, ``c_k`` the tokenizer's code vector.

    The codebook is a buffer (saved with the model, never trained); :meth:`load_codebook` fills it from
    the tokenizer when a model is built for training. Until then it is zero and the head is linear.
    """

    def __init__(self, dim: int, vocab_size: int, code_dim: int, bias: bool = False):
        super().__init__()
        self.linear = nn.Linear(dim, vocab_size, bias=bias)
        self.project = nn.Linear(dim, code_dim, bias=False)
        self.register_buffer("codebook", torch.zeros(vocab_size, code_dim))

    @torch.no_grad()
    def load_codebook(self, vectors: Tensor) -> None:
        """Set the code vectors ``(vocab_size, code_dim)``, each scaled to unit length: the head learns
        how sharp the similarity is through the projection's norm, the same for every tokenizer."""
        vectors = torch.as_tensor(vectors, dtype=torch.float32)
        if tuple(vectors.shape) != tuple(self.codebook.shape):
            raise ValueError(f"codebook of shape {tuple(vectors.shape)} for a head over "
                             f"{self.codebook.shape[0]} codes of width {self.codebook.shape[1]}")
        self.codebook.copy_(F.normalize(vectors, dim=-1).to(self.codebook.device))

    def forward(self, h: Tensor) -> Tensor:
        return self.linear(h) + F.linear(self.project(h), self.codebook.to(h.dtype))
