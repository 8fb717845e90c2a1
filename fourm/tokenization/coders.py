"""Trained mask and pose coders: small VQ-VAEs as the code tokens of ``sam_instance`` and ``human_poses``.

4M-21 (arXiv 2406.09406) writes a SAM instance as its box plus the codes of a small mask VQ-VAE,
and a person as its box plus the codes of a pose VQ-VAE. Here those are an :class:`ImageVQVAE`
over the binary ``mask`` codec (instance masks cropped to their box and resized to ``mask_size``,
trained with ``configs/tokenizers/sam_instance_mask.yaml``) and the pose :class:`VectorVQVAE`
(``configs/tokenizers/pose.yaml``). Both are saved under ``<tokenizers>/parts/<part>``; these
adapters give them the :class:`~fourm.tokenization.serializers.MaskCoder` /
:class:`~fourm.tokenization.serializers.PoseCoder` interface, and a sequence tokenizer that uses
one keeps a copy in its own folder (so a tokenizers folder stays loadable modality by modality).

Torch is imported only when a model is loaded: ``import fourm.tokenization.text`` stays cheap.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from einops import rearrange

from fourm.pretrained import load_pretrained, read_config
from fourm.tokenization.serializers import MASK_CODERS, POSE_CODERS


class TrainedCoder:
    """Shared part of the adapters: the wrapped model, loading and saving."""

    name: str
    part: str  # the folder under <tokenizers>/parts/ it is trained into
    config_file: str  # the training config, under configs/tokenizers/
    pretrained_names: tuple[str, ...]  # classes of config.json that may be wrapped

    def __init__(self, model):
        self.model = model.eval()
        self.vocab_size = int(model.vocab_size)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> TrainedCoder:
        saved = read_config(path)
        if saved["class"] not in cls.pretrained_names:
            raise ValueError(f"{path} holds a {saved['class']}, not a {cls.name} {cls.part} tokenizer")
        return cls(load_pretrained(path))

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        return self.model.save_pretrained(path)


class VQVAEMaskCoder(TrainedCoder):
    """A mask VQ-VAE (:class:`~fourm.tokenization.vqvae.ImageVQVAE`, ``mask`` codec) as a ``MaskCoder``:
    (B, S, S) bool masks <-> (B, grid**2) ids."""

    name, part, config_file, pretrained_names = "vqvae", "sam_instance_mask", "sam_instance_mask.yaml", ("vqvae_image",)

    def __init__(self, model):
        super().__init__(model)
        codec = model.config.codec or model.config.source
        if codec != "mask":
            raise ValueError(f"a mask coder needs an image VQ-VAE with the 'mask' codec, not {codec!r}")
        self.mask_size = model.config.image_size
        self.tokens_per_mask = model.tokens_per_sample

    def encode(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, bool)
        if masks.ndim != 3 or masks.shape[1:] != (self.mask_size, self.mask_size):
            raise ValueError(f"expected masks (B, {self.mask_size}, {self.mask_size}), got {masks.shape}")
        return self.model.encode(masks).numpy()

    def decode(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.decode(np.asarray(ids, np.int64)), bool)


class VQVAEPoseCoder(TrainedCoder):
    """The pose MLP VQ-VAE (:class:`~fourm.tokenization.mlp_vqvae.VectorVQVAE`) as a ``PoseCoder``:
    (B, 33, 3) box-relative keypoints <-> (B, num_tokens) ids; decoded visibility lies in [0, 1]."""

    name, part, config_file, pretrained_names = "vqvae", "pose_vqvae", "pose.yaml", ("vqvae_mlp",)

    def __init__(self, model):
        super().__init__(model)
        from fourm.tokenization.mlp_vqvae import NUM_KEYPOINTS

        if not model.config.is_pose:
            raise ValueError(f"a pose coder needs the pose VQ-VAE, not one for {model.config.source!r}")
        self.num_keypoints = NUM_KEYPOINTS
        self.tokens_per_pose = model.tokens_per_sample

    def encode(self, keypoints: np.ndarray) -> np.ndarray:
        import torch  # the coders wrap torch models; the text tokenizer importing this module does not need it

        keypoints = np.asarray(keypoints, np.float32)
        if keypoints.ndim != 3 or keypoints.shape[1:] != (self.num_keypoints, 3):
            raise ValueError(f"expected keypoints (B, {self.num_keypoints}, 3), got {keypoints.shape}")
        return self.model.encode(torch.from_numpy(rearrange(keypoints, "b k c -> b (k c)"))).cpu().numpy()

    def decode(self, ids: np.ndarray) -> np.ndarray:
        out = rearrange(self.model.decode_vectors(np.asarray(ids, np.int64)).cpu().numpy().astype(np.float64),
                        "b (k c) -> b k c", c=3)
        out[..., 2] = out[..., 2].clip(0.0, 1.0)  # visibility is a probability
        return out


MASK_CODERS[VQVAEMaskCoder.name] = VQVAEMaskCoder
POSE_CODERS[VQVAEPoseCoder.name] = VQVAEPoseCoder
