"""The named-size registry and create_model."""

import pytest
import torch

from fourm.modalities import MODALITIES, ModalityScale
from fourm.model import FourM, FourMConfig, create_model, list_sizes, model_config

# Counted on the meta device (no memory, no init), over every registry modality at full scale
# (224 px, vocabularies 4-16k, 30k text). Trunk = encoder + decoder blocks, the figure the paper quotes:
#   tiny   24.8M trunk,  242M total     small  58.8M,  349M     base  198.2M,  633M
#   large 705.6M,       1285M           xl   2819.6M, 3979M
# Most of the difference is the six 30k-word text modalities' tables and heads (2 x 30k x dim each);
# use_tied_heads=True halves that.
REFERENCE_TRUNK = {"base": 198e6, "large": 705e6, "xl": 2.8e9}


@pytest.mark.parametrize("name", list_sizes())
def test_every_size_builds(name):
    with torch.device("meta"):
        model = create_model(name)
    assert model.names == list(MODALITIES)
    trunk = model.num_params(trunk_only=True)
    if name in REFERENCE_TRUNK:
        assert abs(trunk / REFERENCE_TRUNK[name] - 1) < 0.05, trunk
    assert model.num_params() > trunk


def test_unknown_size_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown FourM size 'huge'; known: nano, micro, tiny, small, base, large, xl"):
        create_model("huge")


def test_overrides_and_scale():
    scale = ModalityScale(64, 8, patch_sizes={"tok_dinov2": 16}, vocab_sizes={"tok_rgb": 512, "tok_dinov2": 256})
    cfg = model_config("micro", "rgb,tok_rgb,caption", scale, use_tied_heads=True, heads=8)
    assert (cfg.dim, cfg.heads, cfg.use_tied_heads) == (256, 8, True)
    assert cfg.scale.patch_sizes == {} and cfg.scale.vocab_sizes == {"tok_rgb": 512, "caption": 30_000}  # only its own
    assert cfg.max_tokens == {"rgb": 64, "tok_rgb": 64, "caption": 256}
    model = FourM(cfg)
    assert len(model.heads) == 0  # tied: the token tables are the heads
    assert model.embed.tables["tok_rgb"].weight.shape == (512, 256)
    with pytest.raises(ValueError, match="max_tokens\\['tok_rgb'\\] = 10"):
        model_config("nano", "tok_rgb", scale, max_tokens={"tok_rgb": 10})
    with pytest.raises(ValueError, match="does not have: tok_depth"):
        FourMConfig(modalities=["tok_rgb"], scale=ModalityScale(64, 8, vocab_sizes={"tok_depth": 10}))
    # the flat fields of old configs: a caller's override is told the new name
    with pytest.raises(ValueError, match="'vocab_sizes' was renamed: use 'scale.vocab_sizes'"):
        model_config("nano", "tok_rgb", scale, vocab_sizes={"tok_depth": 10})
