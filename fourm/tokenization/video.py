"""Video tokenizer: each frame through the RGB tokenizer, frame after frame.

4M-21 has no video; the cheapest honest start is the image tokenizer the model already reads, applied
per frame, with time given by the positions of the ``video`` kind (:class:`fourm.kinds.VideoKind`), not
by the tokens. 3D tubelet patches (ViViT, arXiv 2103.15691) would share codes across frames and cut the
token count; measured against this, they are the next step. The frames' tokenizer is held inside (its
config and weights are this tokenizer's), so a folder is self-contained.

Shapes: ``B`` videos, ``F`` frames, ``N`` tokens per frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from einops import rearrange
from torch import nn

from fourm.modalities import VIDEO_FRAMES
from fourm.pretrained import PretrainedMixin, register_pretrained
from fourm.tokenization.vqvae import ImageVQConfig, ImageVQVAE


@dataclass
class VideoConfig:
    """Args: modality, source (``tok_video``, ``video``); num_frames: F; image: the frames' tokenizer."""

    modality: str = "tok_video"
    source: str = "video"
    num_frames: int = VIDEO_FRAMES
    image: ImageVQConfig = field(default_factory=ImageVQConfig)

    def __post_init__(self):
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, not {self.num_frames}")


@register_pretrained("vqvae_video")
class VideoTokenizer(nn.Module, PretrainedMixin):
    """``encode(videos) -> LongTensor (B, F * N)``; ``decode(ids) -> list`` of ``uint8 (F, H, W, 3)``."""

    config_class = VideoConfig

    def __init__(self, config: VideoConfig):
        super().__init__()
        self.config = config
        self.frames = ImageVQVAE(config.image)

    @classmethod
    def wrap(cls, image: ImageVQVAE, num_frames: int = VIDEO_FRAMES) -> VideoTokenizer:
        """A video tokenizer whose frames go through ``image`` (a trained RGB tokenizer), weights and all."""
        model = cls(VideoConfig(num_frames=num_frames, image=image.config))
        model.frames.load_state_dict(image.state_dict())
        return model.eval()

    @property
    def modality(self) -> str:
        return self.config.modality

    @property
    def vocab_size(self) -> int:
        return self.frames.vocab_size

    @property
    def num_tokens(self) -> int:
        return self.config.num_frames * self.frames.num_tokens

    def encode(self, values) -> torch.Tensor:
        """Videos (a list of ``(F, H, W, 3)`` uint8 arrays, or one ``(B, F, H, W, 3)``) -> ids (B, F * N)."""
        f = self.config.num_frames
        videos = [np.asarray(v) for v in values]
        bad = sorted({v.shape for v in videos if v.ndim != 4 or v.shape[0] != f or v.shape[-1] != 3})
        if bad:
            raise ValueError(f"{self.modality}: expected videos ({f}, H, W, 3), got shapes {bad}")
        if not videos:
            return torch.zeros(0, self.num_tokens, dtype=torch.long)
        ids = self.frames.encode(rearrange(np.stack(videos), "b f h w c -> (b f) h w c"))
        return rearrange(ids, "(b f) n -> b (f n)", f=f)

    def decode(self, ids) -> list[np.ndarray]:
        ids = torch.as_tensor(ids).long()
        if ids.ndim != 2 or ids.shape[1] != self.num_tokens:
            raise ValueError(f"{self.modality}: expected ids (B, {self.num_tokens}), got {tuple(ids.shape)}")
        frames = self.frames.decode(rearrange(ids, "b (f n) -> (b f) n", f=self.config.num_frames))
        return list(rearrange(frames, "(b f) h w c -> b f h w c", f=self.config.num_frames))
