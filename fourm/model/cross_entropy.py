"""Summed cross-entropy of a modality's logits against its target ids, in fp32 whatever the logits' dtype.

Eager, :func:`cross_entropy_sum` is torch's ``F.cross_entropy``. Compiled (:meth:`FourM.compile`), the
loss is :class:`CrossEntropySum`, whose backward is written out as one pass, ``(softmax - one-hot) * g``:
differentiated by inductor, torch's log-softmax + NLL backward also summed the one-hot over the whole
vocabulary with the rows as the vectorised axis, striding by the vocabulary's width through memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100  # a target id to skip (dec_target of padding)


def cross_entropy_sum(logits: Tensor, target: Tensor) -> Tensor:
    """Summed cross-entropy of (n, V) logits of any dtype against (n,) ids (``IGNORE`` skipped), in fp32."""
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE, reduction="sum")


class CrossEntropySum(torch.autograd.Function):
    """:func:`cross_entropy_sum` for compiling: the forward keeps each row's log-sum-exp, the backward
    is one elementwise pass over the logits (a few more passes than torch's eager, so only compiled).

    At the reference's tiny shapes (the 16k and 30k vocabularies, 300-700 rows each, bf16, compiled, one
    thread of a Xeon with AMX), forward + backward of four such heads' losses: 121 -> 98 ms.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor) -> Tensor:
        wide = logits.float()
        lse = torch.logsumexp(wide, -1)
        picked = wide.gather(1, target.clamp(min=0)[:, None]).squeeze(1)
        ctx.save_for_backward(logits, target, lse)
        return torch.where(target != IGNORE, lse - picked, 0.0).sum()

    @staticmethod
    def backward(ctx, grad: Tensor):
        logits, target, lse = ctx.saved_tensors
        scale = torch.where(target != IGNORE, grad, 0.0)[:, None]
        one_hot = torch.arange(logits.shape[1], device=logits.device)[None, :] == target[:, None]
        return ((torch.exp(logits.float() - lse[:, None]) - one_hot.float()) * scale).to(logits.dtype), None


def fused_cross_entropy_sum(logits: Tensor, target: Tensor) -> Tensor:
    """:class:`CrossEntropySum`, as a function ``torch.compile`` takes."""
    return CrossEntropySum.apply(logits, target)
