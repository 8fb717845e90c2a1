"""Named FourM sizes and the one factory, ``create_model(name, **overrides)`` (timm style).

tiny ... xl are the 4M-21 sizes (arXiv 2406.09406; head width 64); nano and micro are for this
project's CPU runs and tests. Trunk parameters (encoder + decoder blocks) of the reference sizes:
base 198M, large 705M, xl 2.8B; embeddings and heads come on top and depend on the modalities.
"""

from __future__ import annotations

from dataclasses import replace

from fourm.config import check_renamed
from fourm.modalities import MODALITIES, ModalityScale, parse_modalities
from fourm.model.fourm import FourM, FourMConfig

SIZES: dict[str, dict] = {
    "nano": dict(dim=64, encoder_depth=2, decoder_depth=2, heads=2),
    "micro": dict(dim=256, encoder_depth=4, decoder_depth=4, heads=4),
    "tiny": dict(dim=384, encoder_depth=6, decoder_depth=6, heads=6),
    "small": dict(dim=512, encoder_depth=8, decoder_depth=8, heads=8),
    "base": dict(dim=768, encoder_depth=12, decoder_depth=12, heads=12),
    "large": dict(dim=1024, encoder_depth=24, decoder_depth=24, heads=16),
    "xl": dict(dim=2048, encoder_depth=24, decoder_depth=24, heads=32),
}


def list_sizes() -> list[str]:
    return list(SIZES)


def model_config(name: str, modalities: str | list[str] | None = None, scale: ModalityScale | None = None,
                 **overrides) -> FourMConfig:
    """The config of size ``name`` over ``modalities`` (default: every registry modality) at
    ``scale`` (default: full scale); ``overrides`` set any other :class:`FourMConfig` field."""
    if name not in SIZES:
        raise ValueError(f"unknown FourM size {name!r}; known: {', '.join(SIZES)}")
    check_renamed(FourMConfig, overrides)  # old names in a caller's overrides (a YAML's model.overrides)
    names = parse_modalities(modalities if modalities is not None else list(MODALITIES), MODALITIES)
    scale = scale if scale is not None else ModalityScale()
    # a scale may describe more modalities than this model has: keep what concerns the model
    scale = replace(scale, patch_sizes={n: p for n, p in scale.patch_sizes.items() if n in names},
                    vocab_sizes={n: v for n, v in scale.vocab_sizes.items() if n in names})
    return FourMConfig(modalities=names, scale=scale, **{**SIZES[name], **overrides})


def create_model(name: str, modalities: str | list[str] | None = None, scale: ModalityScale | None = None,
                 **overrides) -> FourM:
    """A freshly initialised FourM of size ``name``; e.g. ``create_model("nano", "tok_rgb,caption",
    ModalityScale(64, 8), use_tied_heads=True)``."""
    return FourM(model_config(name, modalities, scale, **overrides))
