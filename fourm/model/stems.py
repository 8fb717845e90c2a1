"""Pixel stems: an image (B, 3, H, W) in, one embedding per patch (B, (H/p) (W/p), D) out.

``stem(image)`` embeds every patch; ``stem.embed(image, samples, patches)`` only the given patches
(patch ``patches[i]`` of sample ``samples[i]``), as the model's encoder needs them, each stem in
its cheapest way and seeing nothing of the patches that are not given.

``linear`` is ViT's and 4M's patch embedding: each patch flattened and projected, blind to its
neighbours. ``conv`` is the convolutional stem of Xiao et al. 2021 ("Early convolutions help
transformers see better", arXiv 2106.14881): stride-2 convolutions halve the image until one
position is one patch, then a 1x1 convolution gives the model width. A shape's outline is then read
by overlapping windows that straddle patch borders, and the paper found such stems train faster
and more stably at equal FLOPs; its cost here is a few percent of the trunk's. ``pool`` is the
classic small CNN (LeCun et al. 1998, VGG): per halving a 3x3 convolution, ReLU and a 2x2 max pool.
Max pooling keeps the strongest edge response wherever it falls in the window, which is what an
outline needs; on the built-in scenes it is the stem that lets a transformer tell which shapes an
image holds (``benchmarks/shape_probe.py`` has the figures), at 5x the linear stem's cost.
``hybrid`` adds to the linear embedding a pretrained CNN's feature at each patch, frozen
(:class:`HybridStem`, the CNN a :class:`~fourm.model.expert.PatchExpert`): conv and pool learn their
windows with the transformer, from its objectives and at its learning rate; the expert has learnt what
a patch shows before FourM's first step.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn


class LinearStem(nn.Linear):
    """Flatten each ``patch`` x ``patch`` patch and project it (an ``nn.Linear``: older weights load)."""

    def __init__(self, patch: int, dim: int):
        super().__init__(3 * patch * patch, dim)
        self.patch = patch

    def _patches(self, image: Tensor) -> Tensor:
        return rearrange(image, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=self.patch, p2=self.patch)

    def forward(self, image: Tensor) -> Tensor:
        return super().forward(self._patches(image))

    def embed(self, image: Tensor, samples: Tensor, patches: Tensor) -> Tensor:
        # a patch reads only its own pixels: project the given ones, not the whole grid
        return super().forward(self._patches(image)[samples, patches])


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of each position of a (B, C, H, W) map: a patch's embedding must
    not depend on the statistics of the whole image (GroupNorm's), only on its own neighbourhood."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvStem(nn.Module):
    """log2(patch) stride-2 convolutions (channel LayerNorm, GELU), widths doubling up to dim / 2, then
    a 1x1 to the width. Its windows reach almost a patch into the neighbours, so :meth:`embed` blanks
    the pixels of the patches that are not given first: masking would leak them otherwise."""

    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.patch = patch
        steps = int(math.log2(patch))
        if 2**steps != patch or steps < 1:
            raise ValueError(f"the conv pixel stem needs a power-of-two patch size, not {patch}")
        widths = [max(8, dim // 2 ** (steps - i)) for i in range(steps)]  # dim 128, patch 8: 16, 32, 64
        layers, channels = [], 3
        for width in widths:
            # 4x4 windows at stride 2 (padding 1) are centred on the pixel pair they halve: a patch
            # then sees 7 px into both neighbours (3x3 windows see 7 px left and none right)
            layers += [nn.Conv2d(channels, width, 4, stride=2, padding=1, bias=False), ChannelNorm(width),
                       nn.GELU()]
            channels = width
        layers.append(nn.Conv2d(channels, dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, image: Tensor) -> Tensor:
        return rearrange(self.net(image), "b d h w -> b (h w) d")

    def embed(self, image: Tensor, samples: Tensor, patches: Tensor) -> Tensor:
        return self(blank_hidden(image, samples, patches, self.patch))[samples, patches]


class PoolStem(nn.Module):
    """log2(patch) times: 3x3 convolution, ReLU, 2x2 max pool (widths 16, 32, 64, ...), then a 1x1 to
    the width. As :class:`ConvStem`, it sees a few pixels into its neighbours, so :meth:`embed` blanks
    the patches that are not given."""

    def __init__(self, patch: int, dim: int, width: int = 16):
        super().__init__()
        self.patch = patch
        steps = int(math.log2(patch))
        if 2**steps != patch or steps < 1:
            raise ValueError(f"the pool pixel stem needs a power-of-two patch size, not {patch}")
        layers, channels = [], 3
        for i in range(steps):
            layers += [nn.Conv2d(channels, width * 2**i, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            channels = width * 2**i
        layers.append(nn.Conv2d(channels, dim, 1))
        self.net = nn.Sequential(*layers)

    forward = ConvStem.forward
    embed = ConvStem.embed


def blank_hidden(image: Tensor, samples: Tensor, patches: Tensor, patch: int) -> Tensor:
    """``image`` with the pixels of every patch that is not given set to 0 (mid-grey): a stem whose
    windows reach into the neighbours must not see what the masking hid."""
    b, _, h, w = image.shape
    given = image.new_zeros(b, (h // patch) * (w // patch))
    given[samples, patches] = 1.0
    grid = rearrange(given, "b (h w) -> b 1 h w", h=h // patch)
    return image * grid.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)


class HybridStem(nn.Module):
    """ViT-hybrid (Dosovitskiy et al. 2021, sec. 3.1): the linear patch embedding plus a projection of a
    CNN's feature at each patch. The CNN is a :class:`~fourm.model.expert.PatchExpert`'s trunk, pretrained
    on what each patch shows and frozen (:meth:`load_expert`): it gives the encoder the shapes that a
    transformer of the demo's size does not learn from pixels in its budget, the linear part keeps the
    colours and textures that a class-trained CNN discards. ``expert`` is the expert's config (fields of
    :class:`~fourm.model.expert.PatchExpertConfig`), as ``FourMConfig.pixel_expert`` records it."""

    def __init__(self, patch: int, dim: int, expert: dict | None = None):
        from fourm.model.expert import PatchExpertConfig, conv_trunk  # torch-heavy: only when built

        super().__init__()
        cfg = PatchExpertConfig(**(expert or {}))
        if cfg.patch_size != patch:
            raise ValueError(f"the patch expert reads {cfg.patch_size} px patches, the model's rgb {patch} px")
        self.patch = patch
        self.pixels = LinearStem(patch, dim)
        self.trunk = conv_trunk(cfg).requires_grad_(False).eval()
        self.project = nn.Linear(cfg.features, dim)

    def train(self, mode: bool = True):
        super().train(mode)
        self.trunk.eval()  # frozen: BatchNorm keeps the expert's statistics
        return self

    def load_expert(self, expert) -> None:
        """Copy a pretrained :class:`~fourm.model.expert.PatchExpert`'s trunk in (strict: same config)."""
        self.trunk.load_state_dict(expert.trunk.state_dict())

    def _features(self, image: Tensor) -> Tensor:
        # channels-last: oneDNN's convolutions run 3x faster on it (bf16, a 2-core Xeon)
        with torch.no_grad():
            features = self.trunk(image.contiguous(memory_format=torch.channels_last))
        return rearrange(features, "b d h w -> b (h w) d")

    def forward(self, image: Tensor) -> Tensor:
        return self.pixels(image) + self.project(self._features(image))

    def embed(self, image: Tensor, samples: Tensor, patches: Tensor) -> Tensor:
        # the CNN runs on the images that give at least one patch, not on the whole batch
        rows, where = torch.unique(samples, return_inverse=True)
        features = self._features(blank_hidden(image[rows], where, patches, self.patch))[where, patches]
        return self.pixels.embed(image, samples, patches) + self.project(features)


PIXEL_STEMS = {"linear": LinearStem, "conv": ConvStem, "pool": PoolStem, "hybrid": HybridStem}
