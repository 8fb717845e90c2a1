"""Time-series tokenizer: a 1D patch VQ-VAE over a multichannel signal (IMU, or any ``(T, C)`` series).

The signal is cut into patches of ``patch_size`` samples (a strided convolution: the 1D form of a ViT
patch embedding), a few residual convolutions over the patches give each one its neighbours' context,
and each patch becomes ``codes_per_patch`` codes of one shared codebook (a token axis, as the MLP
VQ-VAE does for globals). A mirrored decoder rebuilds the patches. Tokens come in time order (patch,
then code), so a model reads them like a short sentence; a VQ over patches of a signal is the
tokenizer of e.g. TOTEM (Talukder et al. 2024, arXiv 2402.16412).

Input normalisation lives here, so ``encode`` takes values as the corpus stores them (``float32
(T, C)``): each channel is standardised with the training set's mean and deviation
(:meth:`SeriesVQVAE.fit_normalization`, buffers in the weights), and ``decode`` gives the units back.

Shapes: ``B`` batch, ``T`` samples, ``C`` channels, ``P`` patch size, ``L`` patches (T / P), ``n``
codes per patch, ``d`` code width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from fourm.pretrained import PretrainedMixin, register_pretrained
from fourm.tokenization.base import FactsFromConfig, vector_quantizer


@dataclass
class SeriesVQVAEConfig:
    """A ``(T, C)`` signal -> ``(T / patch_size) * codes_per_patch`` ids in ``[0, codebook_size)``.

    Args:
        modality, source: the model modality and corpus series (``tok_imu``, ``imu``).
        num_samples, channels: T and C of every signal.
        patch_size: P, samples per patch (T must be a multiple).
        codes_per_patch: n, tokens per patch.
        dim, depth: width and residual blocks per side.
        codebook_size, codebook_dim, use_cosine_sim, decay, threshold_ema_dead_code, use_kmeans_init,
            commitment_weight: VQP's ``VectorQuantize`` settings.
    """

    modality: str = "tok_imu"
    source: str = "imu"
    num_samples: int = 64
    channels: int = 6
    patch_size: int = 8
    codes_per_patch: int = 2
    dim: int = 128
    depth: int = 2
    codebook_size: int = 512
    codebook_dim: int = 16
    use_cosine_sim: bool = True
    decay: float = 0.99
    threshold_ema_dead_code: float = 2.0
    use_kmeans_init: bool = True
    commitment_weight: float = 0.25

    def __post_init__(self):
        sizes = (self.num_samples, self.channels, self.patch_size, self.codes_per_patch, self.dim,
                 self.codebook_size, self.codebook_dim)
        if min(sizes) < 1 or self.depth < 0:
            raise ValueError("num_samples, channels, patch_size, codes_per_patch, dim, codebook_size and "
                             "codebook_dim must be >= 1, depth >= 0")
        if self.num_samples % self.patch_size:
            raise ValueError(f"num_samples {self.num_samples} is not a multiple of patch_size {self.patch_size}")

    @property
    def num_patches(self) -> int:
        return self.num_samples // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.num_patches * self.codes_per_patch

    @property
    def vocab_size(self) -> int:
        return self.codebook_size


class SeriesVQOutput(NamedTuple):
    recon: torch.Tensor  # (B, T, C) in signal units
    ids: torch.Tensor  # (B, L * n) long
    loss: torch.Tensor
    recon_loss: torch.Tensor  # MSE of the standardised signal
    aux_loss: torch.Tensor  # commitment


class ChannelNorm(nn.LayerNorm):
    """LayerNorm of each patch's channels ``(B, dim, L)``. Not GroupNorm: its statistics span the whole
    signal, so a change at the end of it would move the tokens of the start."""

    def forward(self, x):
        return rearrange(super().forward(rearrange(x, "b d l -> b l d")), "b l d -> b d l")


class ResidualConv(nn.Module):
    """``x + conv(gelu(conv(norm(x))))`` over patches ``(B, dim, L)``: each block widens a token's view by
    one patch each side, so tokens stay local (a patch and its neighbours)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = ChannelNorm(dim)
        self.conv1 = nn.Conv1d(dim, dim, 3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.gelu(self.conv1(self.norm(x))))


@register_pretrained("vqvae_series")
class SeriesVQVAE(FactsFromConfig, nn.Module, PretrainedMixin):
    """Time-series tokenizer (a :class:`~fourm.tokenization.base.ModalityTokenizer`).

    ``encode(values) -> LongTensor (B, L * n)``; ``decode(ids) -> list`` of ``float32 (T, C)``. The
    tensor path: ``forward(x (B, T, C)) -> SeriesVQOutput``.
    """

    config_class = SeriesVQVAEConfig

    def __init__(self, config: SeriesVQVAEConfig):
        super().__init__()
        self.config = c = config
        latent = c.codes_per_patch * c.codebook_dim
        self.encoder = nn.Sequential(nn.Conv1d(c.channels, c.dim, c.patch_size, stride=c.patch_size),
                                     *[ResidualConv(c.dim) for _ in range(c.depth)],
                                     ChannelNorm(c.dim), nn.Conv1d(c.dim, latent, 1))
        self.decoder = nn.Sequential(nn.Conv1d(latent, c.dim, 1), *[ResidualConv(c.dim) for _ in range(c.depth)],
                                     ChannelNorm(c.dim),
                                     nn.ConvTranspose1d(c.dim, c.channels, c.patch_size, stride=c.patch_size))
        self.quantizer = vector_quantizer(c)
        self.register_buffer("shift", torch.zeros(c.channels))  # per-channel standardisation: fit_normalization
        self.register_buffer("scale", torch.ones(c.channels))

    # ------------------------------------------------------------------ values <-> tensors
    def to_tensor(self, values: Any) -> torch.Tensor:
        """Corpus values (a list of ``(T, C)`` arrays or one ``(B, T, C)`` array) -> float32 ``(B, T, C)``."""
        c = self.config
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().numpy()
        arrays = [np.asarray(v, dtype=np.float32) for v in values]
        bad = sorted({a.shape for a in arrays if a.shape != (c.num_samples, c.channels)})
        if bad:
            raise ValueError(f"{c.modality}: expected signals ({c.num_samples}, {c.channels}) (samples, channels), "
                             f"got shapes {bad}")
        x = np.stack(arrays) if arrays else np.zeros((0, c.num_samples, c.channels), np.float32)
        if not np.isfinite(x).all():
            raise ValueError(f"{c.modality}: input holds NaN or infinite values")
        return torch.from_numpy(x)

    @torch.no_grad()
    def fit_normalization(self, x: torch.Tensor) -> None:
        """Per-channel mean and deviation of training signals ``(B, T, C)``; call before training. A constant
        channel (an IMU that never turns about one axis) is floored at a share of the mean deviation."""
        flat = x.reshape(-1, x.shape[-1]).float()
        std = flat.std(0, unbiased=False)
        self.shift.copy_(flat.mean(0))
        self.scale.copy_(std.clamp_min(0.05 * float(std.mean()) + 1e-8))

    # ------------------------------------------------------------------ tensor path
    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Signals ``(B, T, C)`` -> latents ``(B, L * n, d)`` in token order (patch, then code)."""
        z = self.encoder(rearrange((x.float() - self.shift) / self.scale, "b t c -> b c t"))
        return rearrange(z, "b (n d) l -> b (l n) d", n=self.config.codes_per_patch)

    def quantize(self, latents: torch.Tensor, update: bool = True):
        with torch.autocast(latents.device.type, enabled=False):  # code distances in fp32
            quantized, ids, aux = self.quantizer(latents.float(), freeze_codebook=not update)
        return quantized, ids.long(), aux

    def decode_latents(self, quantized: torch.Tensor) -> torch.Tensor:
        """Quantized latents ``(B, L * n, d)`` -> signals ``(B, T, C)`` in signal units."""
        z = rearrange(quantized.to(self.shift.dtype), "b (l n) d -> b (n d) l", n=self.config.codes_per_patch)
        return rearrange(self.decoder(z), "b c t -> b t c") * self.scale + self.shift

    def forward(self, x: torch.Tensor) -> SeriesVQOutput:
        self._check_signal(x)
        quantized, ids, aux = self.quantize(self.encode_latents(x))
        recon = self.decode_latents(quantized)
        recon_loss = F.mse_loss((recon - self.shift) / self.scale, (x.float() - self.shift) / self.scale)
        return SeriesVQOutput(recon, ids, recon_loss + aux, recon_loss, aux)

    # ------------------------------------------------------------------ tokenizer interface
    @torch.no_grad()
    def encode(self, values: Any) -> torch.Tensor:
        """Corpus values -> ids, LongTensor (B, L * n)."""
        x = values if isinstance(values, torch.Tensor) and values.dtype.is_floating_point else self.to_tensor(values)
        self._check_signal(x)
        if len(x) == 0:
            return torch.zeros(0, self.num_tokens, dtype=torch.long)
        _, ids, _ = self.quantize(self.encode_latents(x.to(self.shift.device)), update=False)
        return ids

    @torch.no_grad()
    def decode_signals(self, ids) -> torch.Tensor:
        """Ids ``(B, L * n)`` -> signals float32 ``(B, T, C)``."""
        ids = torch.as_tensor(ids, device=self.shift.device).long()
        c = self.config
        if ids.ndim != 2 or ids.shape[1] != c.num_tokens:
            raise ValueError(f"{c.modality}: expected ids (B, {c.num_tokens}), got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= c.vocab_size):
            raise ValueError(f"{c.modality}: ids must lie in [0, {c.vocab_size}), "
                             f"got [{int(ids.min())}, {int(ids.max())}]")
        return self.decode_latents(self.quantizer.get_output_from_indices(ids).float())

    @torch.no_grad()
    def decode(self, ids) -> list[np.ndarray]:
        return list(self.decode_signals(ids).cpu().numpy().astype(np.float32))

    def _check_signal(self, x: torch.Tensor) -> None:
        c = self.config
        if x.ndim != 3 or tuple(x.shape[1:]) != (c.num_samples, c.channels):
            raise ValueError(f"{c.modality}: expected signals (B, {c.num_samples}, {c.channels}), got {tuple(x.shape)}")
