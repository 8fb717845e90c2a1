"""A new modality on a trained FourM: its weights grown around the checkpoint's, the trunk frozen first.

Continued training (``fourm train model.init=DIR``) on a corpus with a modality the checkpoint does not
know builds a FourM of the checkpoint's trunk with that modality added (:func:`add_modalities`): every
known weight is copied (the modality embeddings row by row, by name), the new modality's token table
or input projection, its output head and its modality-embedding row are fresh. For the first
``model.frozen_steps`` steps only those new weights train (:class:`StagedUnfreezing`), so the new
embedding learns to speak to the trained trunk before the trunk moves; then everything trains. This is
the reference's ``frozen_model_epochs`` (4M's fine-tuning of new modalities), counted in steps.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from fourm.model.fourm import FourM, FourMConfig

_PER_MODALITY = ("embed.tables.", "embed.projections.", "heads.")  # then the modality's name


def grown_config(old: FourMConfig, corpus: FourMConfig, order: list[str]) -> FourMConfig:
    """``old``'s trunk with the modalities of ``order`` (model order) that it lacks, sized as in ``corpus``
    (the config the token corpus asks for); old modalities keep their own vocabularies and token counts."""
    new = [n for n in order if n not in old.modalities]
    names = [*order, *(n for n in old.modalities if n not in order)]
    take = {n: old for n in old.modalities} | {n: corpus for n in new}
    scale = replace(old.scale,
                    patch_sizes={n: take[n].scale.patch_sizes[n] for n in names if n in take[n].scale.patch_sizes},
                    vocab_sizes={n: take[n].scale.vocab_sizes[n] for n in names if n in take[n].scale.vocab_sizes})
    if corpus.scale.image_size != old.scale.image_size:
        raise ValueError(f"the corpus' images are {corpus.scale.image_size} px, the checkpoint's "
                         f"{old.scale.image_size} px: a new modality must come at the model's scale")
    return replace(old, modalities=names, scale=scale,
                   max_tokens={n: take[n].max_tokens[n] for n in names if n in take[n].max_tokens},
                   input_dims={n: take[n].input_dims[n] for n in names if n in take[n].input_dims},
                   loss_weights={**old.loss_weights, **{n: w for n, w in corpus.loss_weights.items() if n in new}})


def add_modalities(model: FourM, config: FourMConfig) -> FourM:
    """A FourM of ``config`` (``model``'s modalities and more) holding every weight ``model`` has."""
    missing = set(model.config.modalities) - set(config.modalities)
    if missing:
        raise ValueError(f"the grown model would drop {', '.join(sorted(missing))}")
    grown = FourM(config)
    old, state = model.state_dict(), grown.state_dict()
    for key, value in old.items():
        if key == "embed.modality":  # one row per modality: moved to the row of its name
            rows = [config.modalities.index(n) for n in model.config.modalities]
            state[key][rows] = value
        elif key not in state or state[key].shape != value.shape:
            raise ValueError(f"weight {key} of the checkpoint does not fit the grown model "
                             f"({tuple(value.shape)} vs {tuple(state[key].shape) if key in state else 'absent'})")
        else:
            state[key] = value
    grown.load_state_dict(state)
    return grown


class StagedUnfreezing:
    """During steps ``[0, frozen_steps)`` only the weights of ``new`` modalities train; then all.

    Whole tensors of the trunk are frozen by ``requires_grad`` (no gradient: the optimizer leaves them,
    weight decay included). The modality embeddings are one tensor for all modalities: the old rows'
    gradient is masked, and after each frozen step they are written back, undoing the weight decay
    that AdamW applies to a whole tensor. The old weights are then bit-identical at step frozen_steps.
    """

    def __init__(self, model: FourM, new: list[str], frozen_steps: int):
        self.new, self.frozen_steps = list(new), frozen_steps
        self.old_rows = torch.tensor([i for i, n in enumerate(model.names) if n not in self.new])
        self._saved: torch.Tensor | None = None
        self._hook = None
        self._frozen = False

    def is_new(self, name: str) -> bool:
        return any(name.startswith(f"{prefix}{m}.") for prefix in _PER_MODALITY for m in self.new)

    def update(self, model: nn.Module, step: int) -> None:
        """Freeze or unfreeze for optimizer step ``step`` (0-based), before its forward."""
        frozen = step < self.frozen_steps
        if frozen == self._frozen and (self._saved is not None or not frozen):
            return
        self._frozen = frozen
        for name, p in model.named_parameters():
            if name != "embed.modality" and not self.is_new(name):
                p.requires_grad_(not frozen)
        table = model.embed.modality
        if frozen:
            self._saved = table.detach()[self.old_rows].clone()
            keep = torch.ones(len(table), 1, device=table.device)
            keep[self.old_rows] = 0.0
            self._hook = table.register_hook(lambda g: g * keep.to(g.dtype))
        elif self._hook is not None:
            self._hook.remove()
            self._hook, self._saved = None, None

    def after_step(self, model: nn.Module, step: int) -> None:
        """After optimizer step ``step`` (1-based): restore the old modality rows if it was a frozen step."""
        if self._saved is not None and step <= self.frozen_steps:
            with torch.no_grad():
                model.embed.modality[self.old_rows] = self._saved.to(model.embed.modality.dtype)
