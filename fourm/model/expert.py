"""A patch expert: a small CNN that tells what each image patch shows, pretrained apart and read by
FourM's ``hybrid`` pixel stem (:class:`fourm.model.stems.HybridStem`).

Why a CNN beside the transformer: at the demo's budget FourM's encoder learns an object's colour and
size from pixels but not its shape. Trained on RGB -> each 8 px patch's class alone (the built-in
scenes, 600 steps), FourM named the class of 38% of the object patches; this CNN, 75% in as many steps
(0.90 at 1200), and its features in FourM's stem put shape into every object row (README, "What the demo
shows"). A CNN's weights are shared across places and its 3x3 windows see an outline at pixel scale,
where a linear patch embedding must learn each outline at each offset inside its patch.

The expert is trained on RGB -> each patch's class histogram (the share of its pixels in each class of
a segmentation: ``tokenizers_train.expert``), a dense target that carries what a patch holds, not where
a boundary falls in it. 4M-21 reads its experts' outputs as targets (CLIP, DINOv2 feature maps); this one
is read as an input feature, as the ResNet of ViT-hybrid (Dosovitskiy et al. 2021, sec. 3.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from fourm.pretrained import PretrainedMixin, register_pretrained


@dataclass
class PatchExpertConfig:
    patch_size: int = 8  # one feature vector per patch_size x patch_size patch
    width: int = 16  # channels of the first stage, doubled at each halving (16, 32, 64 for 8 px patches)
    features: int = 128  # channels of the patch features the hybrid stem reads
    num_classes: int = 6  # classes of the segmentation it is trained on

    def __post_init__(self):
        steps = int(math.log2(self.patch_size)) if self.patch_size > 0 else 0
        if steps < 1 or 2**steps != self.patch_size:
            raise ValueError(f"a patch expert needs a power-of-two patch_size >= 2, not {self.patch_size}")
        if self.width < 1 or self.features < 1 or self.num_classes < 2:
            raise ValueError("width and features must be >= 1 and num_classes >= 2")


def conv_trunk(cfg: PatchExpertConfig) -> nn.Sequential:
    """Per halving two 3x3 convolutions (BatchNorm, ReLU) and a 2x2 max pool (VGG's stage), then a 3x3
    convolution to ``features``: (B, 3, H, W) -> (B, features, H / patch, W / patch). Its receptive field
    (40 px for 8 px patches) spans an object of the built-in scenes and its neighbours."""
    layers, channels = [], 3
    for i in range(int(math.log2(cfg.patch_size))):
        width = cfg.width * 2**i
        for _ in range(2):
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        layers.append(nn.MaxPool2d(2))
    layers += [nn.Conv2d(channels, cfg.features, 3, padding=1, bias=False), nn.BatchNorm2d(cfg.features), nn.ReLU()]
    return nn.Sequential(*layers)


def patch_histograms(labels: Tensor, patch: int, num_classes: int) -> Tensor:
    """Class ids (B, H, W) -> each patch's share of pixels per class (B, (H/p)(W/p), num_classes)."""
    onehot = F.one_hot(labels.long(), num_classes).float()
    return rearrange(onehot, "b (h p) (w q) c -> b (h w) (p q) c", p=patch, q=patch).mean(2)


@register_pretrained("patch_expert")
class PatchExpert(nn.Module, PretrainedMixin):
    """``features(image)`` -> (B, patches, features); ``forward(image)`` -> class logits per patch.
    ``image`` is RGB scaled as every pixel path scales it (:func:`fourm.kinds.rgb_to_model`)."""

    config_class = PatchExpertConfig

    def __init__(self, config: PatchExpertConfig, class_names: list[str] | None = None):
        super().__init__()
        self.config, self.class_names = config, class_names
        self.trunk = conv_trunk(config)
        self.head = nn.Conv2d(config.features, config.num_classes, 1)

    def extra_state(self) -> dict:
        return {"class_names": self.class_names} if self.class_names else {}

    def _trunk(self, image: Tensor) -> Tensor:
        # channels-last: oneDNN's convolutions run 3x faster on it (a batch of 16, bf16, a 2-core Xeon)
        return self.trunk(image.contiguous(memory_format=torch.channels_last))

    def features(self, image: Tensor) -> Tensor:
        return rearrange(self._trunk(image), "b d h w -> b (h w) d")

    def forward(self, image: Tensor) -> Tensor:
        return rearrange(self.head(self._trunk(image)), "b c h w -> b (h w) c")

    def loss(self, image: Tensor, histograms: Tensor) -> Tensor:
        """Cross-entropy of the predicted class distribution of each patch against its histogram."""
        return -(histograms * self(image).float().log_softmax(-1)).sum(-1).mean()
