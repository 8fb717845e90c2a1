"""The patch expert and the hybrid pixel stem: the expert learns what each patch shows, the stem reads
it frozen beside the linear patch embedding, and a FourM built on it saves, loads and trains."""

import numpy as np
import pytest
import torch

from fourm.modalities import ModalityScale
from fourm.model import FourMConfig
from fourm.model.expert import PatchExpert, PatchExpertConfig, patch_histograms
from fourm.model.fourm import FourM
from fourm.model.stems import HybridStem
from fourm.train.loop import TrainConfig, build_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(patch_size=4, width=4, features=8, num_classes=3)


def bars(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """16 px images of 4x4 patches, each blank (class 0), a horizontal bar (1) or a vertical bar (2), all
    in one colour: what tells the classes apart is the layout of a patch's pixels, not their colour."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, 3, (n, 4, 4), generator=g)
    image = torch.full((n, 3, 16, 16), -1.0)
    labels = torch.zeros(n, 16, 16, dtype=torch.long)
    for b, r, c in zip(*torch.nonzero(classes, as_tuple=True), strict=True):
        k = int(classes[b, r, c])
        line = (slice(4 * r + 1, 4 * r + 2), slice(4 * c, 4 * c + 4)) if k == 1 else \
               (slice(4 * r, 4 * r + 4), slice(4 * c + 1, 4 * c + 2))
        image[b, :, line[0], line[1]] = 1.0
        labels[b, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = k
    return image, labels


def test_patch_histograms_are_each_patch_share_of_pixels():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, :2, :4] = 2  # a quarter of patch 0 (4x4 patches)
    labels[0, 4:, 4:] = 1  # all of patch 3
    h = patch_histograms(labels, 4, 3)
    assert h.shape == (1, 4, 3)
    torch.testing.assert_close(h[0], torch.tensor([[0.5, 0.0, 0.5], [1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]]))


def test_the_expert_learns_patch_classes_from_layout():
    torch.manual_seed(0)
    expert = PatchExpert(PatchExpertConfig(**TINY))
    images, labels = bars(256, 0)
    targets = patch_histograms(labels, 4, 3)
    opt = torch.optim.AdamW(expert.parameters(), lr=1e-2)
    for step in range(150):
        i = torch.randint(0, len(images), (32,), generator=torch.Generator().manual_seed(step))
        loss = expert.loss(images[i], targets[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    test, test_labels = bars(64, 1)
    expert.eval()
    with torch.no_grad():
        right = (expert(test).argmax(-1) == patch_histograms(test_labels, 4, 3).argmax(-1)).float().mean()
    assert right > 0.95
    assert expert.features(test).shape == (64, 16, 8)


def test_the_hybrid_stem_keeps_its_expert_frozen():
    expert = PatchExpert(PatchExpertConfig(**TINY))
    with torch.no_grad():
        for p in expert.trunk.parameters():
            p.normal_()
    stem = HybridStem(4, 16, expert=TINY)
    stem.load_expert(expert)
    for a, b in zip(stem.trunk.state_dict().values(), expert.trunk.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    stem.train()
    assert not stem.trunk.training and stem.pixels.training  # BatchNorm keeps the expert's statistics
    assert all(not p.requires_grad for p in stem.trunk.parameters())
    image = torch.randn(2, 3, 16, 16)
    stem(image).sum().backward()
    assert all(p.grad is None for p in stem.trunk.parameters()) and stem.project.weight.grad is not None
    # the embedding of given patches is the whole-image one where every patch is given
    everything = torch.arange(16).repeat(2), torch.arange(2).repeat_interleave(16)
    torch.testing.assert_close(stem.embed(image, everything[1], everything[0]), stem(image).flatten(0, 1))
    with pytest.raises(ValueError, match="reads 8 px patches, the model's rgb 4 px"):
        HybridStem(4, 16, expert={**TINY, "patch_size": 8})


def test_a_hybrid_fourm_saves_loads_and_leaves_the_expert_out_of_the_optimizer(tmp_path):
    config = FourMConfig(modalities=["rgb", "tok_depth"], dim=32, heads=2, encoder_depth=1, decoder_depth=1,
                         scale=ModalityScale(16, 4, vocab_sizes={"tok_depth": 8}), pixel_stem="hybrid",
                         pixel_expert=TINY)
    model = FourM(config)
    stem = model.embed.projections["rgb"]
    trunk = {id(p) for p in stem.trunk.parameters()}
    optimised = {id(p) for group in build_optimizer(model, TrainConfig()).param_groups for p in group["params"]}
    assert trunk and not trunk & optimised and id(stem.project.weight) in optimised
    model.save_pretrained(tmp_path / "m")
    loaded = FourM.from_pretrained(tmp_path / "m")
    assert loaded.config.pixel_expert == TINY
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # the expert's weights and BatchNorm statistics included


@pytest.mark.parametrize(("settings", "message"), [
    (dict(pixel_stem="linear", pixel_expert={"width": 8}), "pixel_expert is read by pixel_stem hybrid only"),
    (dict(pixel_stem="hybrid", pixel_expert={"depth": 3}), r"pixel_expert: unknown fields \['depth'\]"),
])
def test_bad_expert_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        FourMConfig(modalities=["rgb", "tok_depth"], **settings)


def test_the_expert_is_a_pretrained_folder(tmp_path):
    expert = PatchExpert(PatchExpertConfig(**TINY), class_names=["blank", "row", "column"])
    expert.save_pretrained(tmp_path / "e")
    loaded = PatchExpert.from_pretrained(tmp_path / "e")
    assert loaded.class_names == ["blank", "row", "column"] and loaded.config == expert.config
    image = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32))
    torch.testing.assert_close(loaded(image), expert.eval()(image))


def test_a_folder_of_another_model_is_named(tmp_path):
    FourM(FourMConfig(modalities=["rgb", "tok_depth"], dim=32, heads=2, encoder_depth=1, decoder_depth=1,
                      scale=ModalityScale(16, 4, vocab_sizes={"tok_depth": 8}))).save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="holds a fourm, not a patch_expert"):
        PatchExpert.from_pretrained(tmp_path / "m")
