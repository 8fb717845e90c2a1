"""Pixel stems: one embedding per patch, in the patch order of the model's positions; the linear stem
sees one patch, the convolutional one also its neighbours."""

import pytest
import torch

from fourm.model import FourMConfig
from fourm.model.stems import PIXEL_STEMS, ConvStem, PoolStem


@pytest.mark.parametrize("name", list(PIXEL_STEMS))
def test_one_embedding_per_patch_row_major(name):
    stem = PIXEL_STEMS[name](8, 32).eval()
    image = torch.rand(2, 3, 32, 64)
    out = stem(image)
    assert out.shape == (2, 4 * 8, 32)
    changed = image.clone()
    changed[:, :, 8:16, 40:48] += 1.0  # patch (row 1, column 5): index 1 * 8 + 5
    moved = (stem(changed) - out).abs().sum(-1)[0] > 1e-6
    assert moved[13]
    samples, patches = torch.tensor([0, 1, 1]), torch.tensor([13, 0, 31])
    picked = stem.embed(image, samples, patches)
    assert picked.shape == (3, 32)
    if name == "linear":
        assert moved.sum() == 1  # a patch alone
        torch.testing.assert_close(picked, out[samples, patches])  # the given patches, projected alone
    else:  # neighbours, not the far corner (nor, through the smaller windows of conv and pool, the other one)
        assert moved[[12, 14]].all() and not moved[0] and (name == "hybrid" or not moved[31])


@pytest.mark.parametrize("stem", [ConvStem, PoolStem])
def test_halving_stems_need_a_power_of_two_patch(stem):
    with pytest.raises(ValueError, match="power-of-two patch size, not 14"):
        stem(14, 32)


def test_unknown_stem_is_named():
    with pytest.raises(ValueError, match="pixel_stem must be one of linear, conv, pool, hybrid, not 'vit'"):
        FourMConfig(modalities=["rgb", "tok_rgb"], pixel_stem="vit")


@pytest.mark.parametrize("stem", ["conv", "pool", "hybrid"])
def test_patches_that_are_not_inputs_never_reach_the_model(stem):
    """With a stem that sees its neighbours, pixels of an rgb patch the masking hid must not leak into its visible
    neighbours' embeddings."""
    from fourm.modalities import ModalityScale
    from fourm.model.embeddings import ModalityEmbeddings

    specs = {"rgb": ModalityScale(32, 8).resolve("rgb")}
    embed = ModalityEmbeddings(specs, 32, 32, pixel_stem=stem).eval()
    ids = torch.tensor([[0, 1, 5]])  # three of the 16 patches are inputs
    tags = dict(mod=torch.zeros_like(ids), pos=ids, valid=torch.ones_like(ids, dtype=torch.bool))
    image = torch.rand(1, 3, 32, 32)
    hidden = image.clone()
    hidden[:, :, 0:8, 16:24] = 0.0  # patch 2, right of the given patch 1, is not an input
    a = embed.encoder_content(ids, continuous={"rgb": image}, **tags)
    b = embed.encoder_content(ids, continuous={"rgb": hidden}, **tags)
    assert torch.equal(a, b)
    image[:, :, 0:8, 8:16] = 0.0  # but a given patch's own pixels do count
    assert not torch.equal(embed.encoder_content(ids, continuous={"rgb": image}, **tags), a)
