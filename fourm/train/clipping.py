"""Gradient clipping by global norm, folded into the optimizer's own pass where it can take it.

``torch.nn.utils.clip_grad_norm_`` reads every gradient twice: once for the norm, once to scale it
(always, by ``min(1, max_norm / norm)``, even when nothing is clipped). A fused Adam / AdamW reads each
gradient anyway and can divide it on the fly: ``grad_scale``, the hook ``torch.amp.GradScaler`` uses to
unscale fp16 gradients inside the kernel. So here the norm is taken, and the divisor
``max(1, norm / max_norm)`` is handed to the optimizer's next step instead of a second pass over the
gradients (on a 2-core CPU, 60 M parameters: the scaling pass was ~4% of a bf16 train step). The update
is the same, to rounding. Optimizers without the hook (not fused, or sharded DTensor gradients) get the
scaling pass as before.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def clip_gradients(params: Iterable[nn.Parameter], optimizer: torch.optim.Optimizer, max_norm: float) -> Tensor:
    """Clip the gradients of ``params`` to a global L2 norm of at most ``max_norm``, for the next
    ``optimizer.step()``; return the norm before clipping (as ``clip_grad_norm_`` does)."""
    params = [p for p in params if p.grad is not None]
    grads = [p.grad for p in params]
    norm = torch.nn.utils.get_total_norm(grads, foreach=True)
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it in an AcceleratedOptimizer
    if takes_grad_scale(inner, grads):
        # the kernel divides each gradient by it: clip_grad_norm_'s factor max_norm / (norm + 1e-6), inverted;
        # in fp32, which the kernel requires (bf16 gradients give a bf16 norm)
        inner.grad_scale = ((norm.float() + 1e-6) / max_norm).clamp(min=1.0)
    else:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)
    return norm


def takes_grad_scale(optimizer: torch.optim.Optimizer, grads: list[Tensor]) -> bool:
    """Whether ``optimizer.step()`` divides these gradients by ``optimizer.grad_scale``: torch's fused
    Adam and AdamW on plain tensors (a DTensor's norm is a DTensor, which the kernel does not take)."""
    fused = isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) and all(
        g.get("fused") for g in optimizer.param_groups)
    return fused and all(type(g) is Tensor for g in grads)
