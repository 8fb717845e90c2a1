"""What the model-based tokenizer families (``vqvae_image``, ``vqvae_mlp``) share: the check of their
config and the measure of their codebook."""

from __future__ import annotations

import dataclasses

import torch

from fourm.modalities import MODALITIES


def check_config(cfg, family: str, check_tokenizer: bool = False) -> None:
    """The ``__post_init__`` of a family's ``Config``: it names ``family``; its model config follows
    ``cfg.modality`` (one place names the modality; a key outside the registry, such as the SAM mask or
    pose tokenizer, keeps the model's own source), a registry modality that, with ``check_tokenizer``,
    this family tokenizes; ``batch_size`` and ``eval_samples`` are at least 1."""
    if cfg.family != family:
        raise ValueError(f"family must be {family} for this trainer, not {cfg.family!r}")
    known = MODALITIES.get(cfg.modality)
    if check_tokenizer and known is not None and known.tokenizer != family:
        raise ValueError(f"{cfg.modality} is tokenized by {known.tokenizer}, not by {family}")
    source = known.source if known is not None else cfg.model.source
    cfg.model = dataclasses.replace(cfg.model, modality=cfg.modality, source=source)
    if cfg.batch_size < 1 or cfg.eval_samples < 1:
        raise ValueError("batch_size and eval_samples must be >= 1")


def code_stats(ids: torch.Tensor, vocab_size: int) -> dict[str, float]:
    """``usage``, the share of the vocabulary ``ids`` use, and ``perplexity``, the exponentiated entropy
    of their histogram (``vocab_size`` at best): a collapsing codebook shows there first."""
    counts = torch.bincount(ids.reshape(-1).cpu(), minlength=vocab_size).double()
    p = counts[counts > 0] / counts.sum()
    return {"usage": float((counts > 0).sum()) / vocab_size, "perplexity": float(torch.exp(-(p * p.log()).sum()))}
