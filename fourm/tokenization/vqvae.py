"""The image tokenizer: a ViT VQ-VAE over one image-like modality (4M-21, arXiv 2406.09406, Sec. 3).

Pixels (or a feature map) are cut into patches, a ViT encoder turns them into one low-dimensional
latent per patch, a quantizer snaps each latent to a discrete id, and a ViT decoder rebuilds the
patches from the quantized latents. The quantizer is either the reference's EMA vector quantizer
with l2-normalised 32-d codes and dead-code replacement (``vq``), or FSQ (``fsq``, Mentzer et al.
2023, https://arxiv.org/abs/2309.15505), which needs no codebook tricks and cannot collapse; both
come from ``vector-quantize-pytorch``.

Values go in and come out in corpus units (uint8 RGB, depth in metres...): the per-modality
normalisation, loss and metrics live in the codec (:mod:`fourm.tokenization.pixels`).

Letters: B batch, C channels, H W pixels, p patch side, h w patch grid, N = h * w tokens,
D latent (code) width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from fourm.modalities import MODALITIES, SCALE_PRESETS
from fourm.model.blocks import MLPS, EncoderBlock
from fourm.model.positions import sincos_2d
from fourm.pretrained import PretrainedMixin, inference, register_pretrained
from fourm.tokenization.pixels import PixelCodec, get_codec


@dataclass
class ImageVQConfig:
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"kmeans_init": "use_kmeans_init"}  # config.json of older versions

    modality: str = "tok_rgb"  # model modality key
    source: str = "rgb"  # corpus modality the values come from
    codec: str | None = None  # pixel codec (default: the source's; "features" for feature maps)
    image_size: int = SCALE_PRESETS["cpu"]["image_size"]  # side of the (square) image or feature map
    patch_size: int = 8
    # side of the pixel window each decoder token paints: patch_size tiles the image; a larger
    # window overlaps the neighbours' and the windows are summed (overlap-add), which hides the
    # seams a per-patch linear head leaves between patches
    decoder_window: int | None = None
    num_classes: int | None = None  # semseg
    channels: int | None = None  # width C of feature maps and of multiband (hyperspectral) images
    dim: int = 256
    encoder_depth: int = 4
    decoder_depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    # the blocks' MLP, a key of fourm.model.blocks.MLPS: gelu (ViT's; the checkpoints before this setting) or
    # swiglu (the model's). rgb.yaml sizes, 300 steps, one seed: swiglu +0.13 dB PSNR, ~4% slower per step
    mlp: str = "gelu"
    quantizer: str = "vq"  # vq | fsq
    codebook_size: int = 1024  # vq
    codebook_dim: int = 32  # vq: width of the l2-normalised codes
    ema_decay: float = 0.99  # vq
    # vq: a code whose EMA count of hits per step falls below this is re-seeded from the batch. Keep it
    # well under the mean hits per code per step (batch * tokens / codebook_size, 1 at 16 x 64 / 1024):
    # at or above it most codes are re-seeded every step (VQP's example value 2 cost 0.4 dB here)
    dead_code_threshold: float = 0.5
    use_kmeans_init: bool = False  # vq: codebook initialised by k-means on the first batch
    commitment_weight: float = 1.0  # vq
    use_rotation_trick: bool = True  # vq: gradients through the quantizer (arXiv 2410.06424), else STE
    fsq_levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])  # fsq: 1000 codes

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        window = self.decoder_window or self.patch_size
        if window < self.patch_size or (window - self.patch_size) % 2:
            raise ValueError(f"decoder_window {window} must be >= patch_size {self.patch_size} "
                             "and differ from it by an even count")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.mlp not in MLPS:
            raise ValueError(f"mlp must be one of {', '.join(MLPS)}, not {self.mlp!r}")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {', '.join(QUANTIZERS)}, not {self.quantizer!r}")
        known = MODALITIES.get(self.modality)
        if known is not None and known.source != self.source:
            raise ValueError(f"modality {self.modality} reads corpus {known.source!r}, not {self.source!r}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


# ----------------------------------------------------------------------------- transformer
class ViT(nn.Module):
    """Tokens (B, N, d_in) -> (B, N, d_out) through ``depth`` blocks of width ``dim`` with 2D positions.

    Two choices make these small models learn several times faster on a CPU budget (measured on
    scenes, PSNR after 150 steps: +1 dB from the first, +0.6 dB more from the second):
    the projected input is layer-normed before the positions are added, because a unit-norm
    32-d code (or a flat image patch) projects to a vector several times shorter than the sincos
    position and the decoder would first learn to ignore it; and the residual branches start at
    zero, so at initialisation the path from input to output is a clean linear map.

    The blocks are the model's pre-norm :class:`~fourm.model.blocks.EncoderBlock` (with biases, no
    mask: every patch is valid); with ``mlp="gelu"`` their weights have the names and shapes the
    tokenizer's own blocks had, so checkpoints saved before the switch still load.
    """

    def __init__(self, d_in: int, d_out: int, dim: int, depth: int, heads: int, mlp_ratio: float, side: int,
                 mlp: str = "gelu"):
        super().__init__()
        self.proj_in = nn.Linear(d_in, dim)
        self.norm_in = nn.LayerNorm(dim)
        self.register_buffer("pos", sincos_2d(side, dim), persistent=False)  # a function of the config
        self.blocks = nn.ModuleList([EncoderBlock(dim, heads, mlp_ratio, use_bias=True, mlp=mlp, zero_init=True)
                                     for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.proj_out = nn.Linear(dim, d_out)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm_in(self.proj_in(x)) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.proj_out(self.norm(x))


# ----------------------------------------------------------------------------- quantizers
def _full_precision(x: Tensor):
    # codebook distances and EMA statistics in bf16 pick wrong codes and drift: keep them in fp32
    return torch.autocast(x.device.type, enabled=False)


class VQ(nn.Module):
    """EMA vector quantizer with cosine-similarity (l2-normalised) codes, as in the reference."""

    def __init__(self, cfg: ImageVQConfig):
        super().__init__()
        from vector_quantize_pytorch import VectorQuantize

        self.dim, self.codebook_size = cfg.codebook_dim, cfg.codebook_size
        self.vq = VectorQuantize(
            dim=cfg.codebook_dim, codebook_size=cfg.codebook_size, decay=cfg.ema_decay, use_cosine_sim=True,
            threshold_ema_dead_code=cfg.dead_code_threshold, kmeans_init=cfg.use_kmeans_init,
            commitment_weight=cfg.commitment_weight, rotation_trick=cfg.use_rotation_trick,
            straight_through=False)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, D) -> quantized (B, N, D), ids (B, N), auxiliary loss (scalar)."""
        with _full_precision(z):
            z_q, ids, aux = self.vq(z.float())
        return z_q, ids.long(), aux.sum()

    def embed(self, ids: Tensor) -> Tensor:
        return self.vq.get_output_from_indices(ids)


class FSQQuantizer(nn.Module):
    """Finite scalar quantization: each of ``len(levels)`` latent channels rounded to a few levels."""

    def __init__(self, cfg: ImageVQConfig):
        super().__init__()
        from vector_quantize_pytorch import FSQ

        self.dim, self.codebook_size = len(cfg.fsq_levels), math.prod(cfg.fsq_levels)
        self.fsq = FSQ(levels=list(cfg.fsq_levels))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with _full_precision(z):
            z_q, ids = self.fsq(z.float())
        return z_q, ids.long(), z.new_zeros((), dtype=torch.float32)

    def embed(self, ids: Tensor) -> Tensor:
        return self.fsq.indices_to_codes(ids)


QUANTIZERS: dict[str, type[nn.Module]] = {"vq": VQ, "fsq": FSQQuantizer}


# ----------------------------------------------------------------------------- the tokenizer
@register_pretrained("vqvae_image")
class ImageVQVAE(nn.Module, PretrainedMixin):
    """ViT VQ-VAE tokenizer of one image-like modality; a :class:`ModalityTokenizer`.

    Args:
        config: the architecture and the modality it serves.
        class_names: optional names of the semseg classes (stored with the weights).

    ``x`` below is the codec's network tensor (B, C_in, H, W); ``values`` are corpus values.
    """

    config_class = ImageVQConfig

    def __init__(self, config: ImageVQConfig, class_names: list[str] | None = None):
        super().__init__()
        self.config = config
        self.class_names = class_names
        self.codec: PixelCodec = get_codec(config.codec or config.source, config.num_classes, config.channels)
        p, side = config.patch_size, config.grid
        self.quantizer = QUANTIZERS[config.quantizer](config)
        self.encoder = ViT(self.codec.in_channels * p * p, self.quantizer.dim, config.dim, config.encoder_depth,
                           config.heads, config.mlp_ratio, side, config.mlp)
        self.window = config.decoder_window or p
        self.decoder = ViT(self.quantizer.dim, self.codec.out_channels * self.window**2, config.dim,
                           config.decoder_depth, config.heads, config.mlp_ratio, side, config.mlp)

    def extra_state(self) -> dict:
        return {"class_names": self.class_names} if self.class_names else {}

    # ------------------------------------------------------------------ ModalityTokenizer facts
    @property
    def modality(self) -> str:
        return self.config.modality

    @property
    def vocab_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def num_tokens(self) -> int:
        return self.config.grid**2

    @property
    def latent_dim(self) -> int:
        """D: channels of the quantized latents ``z_q``."""
        return self.quantizer.dim

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ tensors
    def to_input(self, values) -> Tensor:
        """Corpus values -> network input (B, C_in, H, W) on the model's device."""
        return self._check_input(self.codec.to_input(values)).to(self.device)

    def from_output(self, x: Tensor) -> np.ndarray:
        """Decoder output (B, C_out, H, W) -> corpus values (B, ...)."""
        return self.codec.from_output(x)

    def _check_input(self, x: Tensor) -> Tensor:
        want = (self.codec.in_channels, self.config.image_size, self.config.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"{self.modality}: expected input (B, {want[0]}, {want[1]}, {want[2]}) "
                             f"(images of {want[1]}x{want[2]} px), got {tuple(x.shape)}")
        return x

    def quantize(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, C_in, H, W) -> z_q (B, D, h, w), ids (B, N), auxiliary (commitment) loss."""
        p = self.config.patch_size
        patches = rearrange(self._check_input(x), "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)
        z_q, ids, aux = self.quantizer(self.encoder(patches))
        return rearrange(z_q, "b (h w) d -> b d h w", h=self.config.grid), ids, aux

    def embed_ids(self, ids: Tensor) -> Tensor:
        """ids (B, N) -> z_q (B, D, h, w): the latents the decoder reads."""
        ids = torch.as_tensor(ids, device=self.device).long()
        if ids.ndim != 2 or ids.shape[1] != self.num_tokens:
            raise ValueError(f"{self.modality}: expected ids (B, {self.num_tokens}), got {tuple(ids.shape)}")
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"{self.modality}: ids must lie in [0, {self.vocab_size}), "
                             f"got [{int(ids.min())}, {int(ids.max())}]")
        with _full_precision(ids):
            z_q = self.quantizer.embed(ids)
        return rearrange(z_q, "b (h w) d -> b d h w", h=self.config.grid)

    def code_vectors(self) -> Tensor:
        """(vocab_size, latent_dim): every code's vector, as the decoder reads it (FourM's codebook heads)."""
        ids = torch.arange(self.vocab_size, device=self.device)[None]
        with torch.no_grad(), _full_precision(ids):
            return self.quantizer.embed(ids)[0].float()

    def decode_latents(self, z_q: Tensor) -> Tensor:
        """z_q (B, D, h, w) -> decoder output (B, C_out, H, W)."""
        g, p = self.config.grid, self.config.patch_size
        if z_q.ndim != 4 or tuple(z_q.shape[1:]) != (self.latent_dim, g, g):
            raise ValueError(f"{self.modality}: expected latents (B, {self.latent_dim}, {g}, {g}), "
                             f"got {tuple(z_q.shape)}")
        out = self.decoder(rearrange(z_q, "b d h w -> b (h w) d"))
        if self.window == p:
            return rearrange(out, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=g, p1=p, p2=p)
        k, side = self.window, self.config.image_size
        cols = rearrange(out, "b n (k1 k2 c) -> b (c k1 k2) n", k1=k, k2=k)  # F.fold's layout
        return F.fold(cols, (side, side), kernel_size=k, stride=p, padding=(k - p) // 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, C_in, H, W) -> reconstruction (B, C_out, H, W), ids (B, N), auxiliary loss."""
        z_q, ids, aux = self.quantize(x)
        return self.decode_latents(z_q), ids, aux

    # ------------------------------------------------------------------ corpus values
    def encode(self, values, batch_size: int = 256) -> Tensor:
        """Corpus values (list of arrays, or one (B, ...) array) -> ids, LongTensor (B, N)."""
        with inference(self):
            x = self.codec.to_input(values)
            return torch.cat([self.quantize(self._check_input(x[i:i + batch_size]).to(self.device))[1]
                              for i in range(0, len(x), batch_size)]).cpu()

    def decode(self, ids, batch_size: int = 256) -> np.ndarray:
        """ids (B, N) -> corpus values, stacked (B, ...) in corpus units and dtype."""
        ids = torch.as_tensor(ids).long()
        with inference(self):
            return np.concatenate([self.from_output(self.decode_latents(self.embed_ids(ids[i:i + batch_size])))
                                   for i in range(0, len(ids), batch_size)])
