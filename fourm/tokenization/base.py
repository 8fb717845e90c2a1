"""The one interface every modality tokenizer has, and the folder of tokenizers a model uses.

``encode`` takes values exactly as the corpus stores them (uint8 RGB, depth in metres, class ids,
a caption string, a list of boxes...) and ``decode`` gives them back in the same units: the
normalisation a network needs lives inside the tokenizer, never in the user's code.

A tokenizers folder holds one sub-folder per model modality (``<dir>/tok_depth/``,
``<dir>/caption/``...), each loadable with :func:`load_tokenizer`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from fourm.kinds import token_count_key
from fourm.modalities import Modality, get_modality
from fourm.pretrained import load_pretrained


@runtime_checkable
class ModalityTokenizer(Protocol):
    """Also ``num_tokens`` (image and global tokenizers: every sample has that many tokens) or
    ``max_tokens`` (sequences: at most that many), as :func:`token_count` reads it."""

    modality: str  # the model modality key (tok_rgb, caption, ...)
    vocab_size: int

    def encode(self, values: list[Any]) -> Any:
        """A batch of corpus values -> ids: a LongTensor (B, N), or a list of id lists for sequences."""

    def decode(self, ids: Any) -> list[Any]:
        """Ids -> a batch of values in corpus units."""

    def save_pretrained(self, path: str | os.PathLike) -> Path: ...


class FactsFromConfig:
    """``modality``, ``vocab_size`` and ``num_tokens`` read from ``self.config``: for the tokenizers whose
    config derives them (the vector, point-cloud and series VQ-VAEs)."""

    @property
    def modality(self) -> str:
        return self.config.modality

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens


def vector_quantizer(c):
    """VQP's ``VectorQuantize`` from a config's ``codebook_size``, ``codebook_dim``, ``use_cosine_sim``,
    ``decay``, ``threshold_ema_dead_code``, ``use_kmeans_init`` (its ``kmeans_init``) and
    ``commitment_weight``: the settings the vector, point and series VQ-VAEs share."""
    from vector_quantize_pytorch import VectorQuantize

    return VectorQuantize(dim=c.codebook_dim, codebook_size=c.codebook_size, use_cosine_sim=c.use_cosine_sim,
                          decay=c.decay, kmeans_init=c.use_kmeans_init,
                          threshold_ema_dead_code=c.threshold_ema_dead_code, commitment_weight=c.commitment_weight)


class TokenizerMismatchError(ValueError):
    """A tokenizer that does not fit the modality (vocabulary or token count) it is used for."""


def check_tokenizer(tokenizer: ModalityTokenizer, expected: Modality, sequence_limit: bool = True) -> None:
    """Refuse a tokenizer whose vocabulary or token count disagrees with the resolved modality.

    ``sequence_limit=False`` lets a sequence tokenizer allow longer sequences than the modality's
    maximum, for callers that check each sequence's length as it comes (generation does).
    """
    if tokenizer.modality != expected.key:
        raise TokenizerMismatchError(f"tokenizer is for {tokenizer.modality!r}, not {expected.key!r}")
    if expected.vocab_size is not None and tokenizer.vocab_size != expected.vocab_size:
        raise TokenizerMismatchError(f"{expected.key}: tokenizer vocabulary {tokenizer.vocab_size} != "
                                     f"{expected.vocab_size} expected by the config")
    count = token_count(tokenizer)
    if expected.is_image or expected.max_tokens is None:
        want = expected.tokens
        if count != want:
            raise TokenizerMismatchError(f"{expected.key}: tokenizer makes {count} tokens "
                                         f"per sample, the config expects {want}")
    elif sequence_limit and count > expected.tokens:
        raise TokenizerMismatchError(f"{expected.key}: tokenizer allows {count} tokens, "
                                     f"more than the modality's maximum {expected.tokens}")


def token_count(tokenizer: ModalityTokenizer) -> int:
    """The tokens a tokenizer makes per sample: its ``num_tokens``, or for a sequence its ``max_tokens``."""
    return getattr(tokenizer, token_count_key(get_modality(tokenizer.modality)))


def load_tokenizer(path: str | os.PathLike, device: str = "cpu") -> ModalityTokenizer:
    return load_pretrained(path, device)


def load_tokenizers(folder: str | os.PathLike, modalities: list[str] | None = None,
                    device: str = "cpu") -> dict[str, ModalityTokenizer]:
    """The tokenizers of ``folder`` by modality (all, or ``modalities``, which must all be there)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizers folder {folder} does not exist")
    present = sorted(p.name for p in folder.iterdir() if (p / "config.json").is_file())
    names = present if modalities is None else modalities
    for name in names:
        get_modality(name)  # unknown names: the registry's one-line error
        if name not in present:
            raise FileNotFoundError(f"{folder} has no tokenizer for {name}; it has: {', '.join(present) or 'none'}")
    return {name: load_tokenizer(folder / name, device) for name in names}
