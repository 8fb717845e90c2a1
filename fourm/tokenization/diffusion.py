"""Diffusion decoder for an image tokenizer (4M-21, arXiv 2406.09406, Sec. 3 and App.: RGB, depth,
normals and edges are decoded by a diffusion model conditioned on the VQ-VAE's codes).

The discrete ids and the encoder stay those of a trained :class:`~fourm.tokenization.vqvae.ImageVQVAE`
(frozen, stored in the same folder under ``vq.``); only the way back to pixels changes. A small
``diffusers.UNet2DModel`` denoises in the codec's network space, reading the quantized latents ``z_q``
upsampled to its resolution (nearest, or a learned per-patch transposed convolution) and
concatenated to the noisy channels. By default it also reads the plain ViT decoder's output and
diffuses only the residual ``(image - plain decode) * residual_scale`` ("predict and refine", Whang et
al. 2022, "Deblurring via Stochastic Refinement"): an untrained or undertrained denoiser then gives back
the plain decode instead of noise, and the UNet spends its capacity on what the mean reconstruction
blurs away. The UNet runs on pixel-unshuffled images (``pixel_shuffle``), s^2 times cheaper per level.

Schedule: cosine betas rescaled to zero terminal SNR and "trailing" DDIM timesteps (Lin et al. 2023,
https://arxiv.org/abs/2305.08891), so the first DDIM step starts from pure noise and already predicts
the clean target from the codes (epsilon prediction is undefined there, so only x0 = ``sample`` and
``v_prediction`` are offered). The default is x0-prediction: at the CPU demo scale (600 steps), a
v-prediction decoder left visible grain in its samples (gradient energy 3.7x the truth's at 10 DDIM
steps, 21.0 dB PSNR) where the x0 one gives clean images (1.5x, 22.3 dB), since its output *is* the
image and an undertrained UNet errs towards blur rather than leftover noise. Decoding uses
deterministic DDIM (eta = 0): the only randomness is the initial noise, drawn at once for the whole
batch from a generator seeded with ``config.diffusion.seed`` unless one is given, so a decode is
reproducible and independent of ``batch_size`` (and, with a CPU generator, of the device).

Diffusion space: the codec's network input ``x`` with {0, 1} flag channels (edges, depth validity)
mapped to {-1, 1}, so everything lives in [-1, 1] and the sample is a valid codec *output* (a flag
channel > 0 reads as "on", like a logit).

Letters: B batch, C image channels, H W pixels, D latent (code) width, h w patch grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fourm.pretrained import PretrainedMixin, inference, register_pretrained
from fourm.tokenization.vqvae import ImageVQConfig, ImageVQVAE

# Channels of each codec's network input that hold {0, 1} flags (and logits in its output). Codecs not
# listed (semseg: one-hot with a cross-entropy decoder in the reference; feature maps: unbounded) have
# no diffusion decoder.
FLAG_CHANNELS: dict[str, tuple[int, ...]] = {"rgb": (), "normal": (), "depth": (1,), "canny_edge": (0,),
                                             "mask": (0,)}
UPSAMPLERS = ("nearest", "learned")
PREDICTIONS = ("v_prediction", "epsilon", "sample")


@dataclass
class DiffusionConfig:
    """The denoiser and its noise schedule (the image side comes from the VQ config)."""

    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])  # one UNet level each
    layers_per_block: int = 1
    use_attention: bool = False  # self-attention in the mid block, i.e. at the lowest resolution only
    attention_head_dim: int = 32
    pixel_shuffle: int = 2  # the UNet runs on (C * s^2, H / s, W / s): s^2 times fewer FLOPs per level
    norm_num_groups: int = 8
    upsample: str = "nearest"  # z_q to pixels: nearest | learned (a per-patch transposed convolution)
    use_plain_decode: bool = True  # also condition on the frozen ViT decoder's reconstruction
    use_residual: bool = True  # diffuse (image - plain decode) * residual_scale, not the image (needs the above)
    residual_scale: float | None = None  # ~1 / RMS of the residual, to match the unit noise; None: the trainer
                                         # measures it (1.0 for an untrained model)
    prediction_type: str = "sample"  # sample (x0) | v_prediction
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    steps: int = 10  # DDIM steps of ``decode`` unless told otherwise (the reference: 25-50)
    seed: int = 0  # of the initial noise of ``decode`` unless a generator is given

    def __post_init__(self):
        if self.upsample not in UPSAMPLERS:
            raise ValueError(f"upsample must be one of {', '.join(UPSAMPLERS)}, not {self.upsample!r}")
        if self.prediction_type not in PREDICTIONS:
            raise ValueError(f"prediction_type must be one of {', '.join(PREDICTIONS)}, not {self.prediction_type!r}")
        if self.prediction_type == "epsilon":
            raise ValueError("epsilon prediction is undefined at the zero-SNR last timestep this schedule uses: "
                             "use sample or v_prediction")
        if not self.block_out_channels or any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"block_out_channels {self.block_out_channels} must be non-empty multiples of "
                             f"norm_num_groups {self.norm_num_groups}")
        if self.use_residual and not self.use_plain_decode:
            raise ValueError("use_residual needs use_plain_decode (the residual is taken from the plain decode)")
        if self.residual_scale is not None and self.residual_scale <= 0:
            raise ValueError(f"residual_scale must be > 0, got {self.residual_scale}")
        if self.pixel_shuffle < 1:
            raise ValueError(f"pixel_shuffle must be >= 1, got {self.pixel_shuffle}")
        if self.steps < 1 or self.steps > self.num_train_timesteps:
            raise ValueError(f"steps must lie in [1, {self.num_train_timesteps}], got {self.steps}")


@dataclass
class DiffusionDecoderConfig:
    vq: ImageVQConfig = field(default_factory=ImageVQConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    def __post_init__(self):
        codec = self.vq.codec or self.vq.source
        if codec not in FLAG_CHANNELS and codec != "sam_edge":
            raise ValueError(f"no diffusion decoder for the {codec!r} codec; supported: "
                             f"{', '.join(sorted(FLAG_CHANNELS))}, sam_edge")
        side, s = self.vq.image_size, self.diffusion.pixel_shuffle
        levels = len(self.diffusion.block_out_channels)
        if self.vq.patch_size % s:
            raise ValueError(f"patch_size {self.vq.patch_size} is not a multiple of pixel_shuffle {s}")
        if side % s or (side // s) % 2 ** (levels - 1):
            raise ValueError(f"image_size {side} / pixel_shuffle {s} cannot be halved {levels - 1} times")


@register_pretrained("vqvae_diffusion")
class DiffusionDecoderTokenizer(nn.Module, PretrainedMixin):
    """An image tokenizer whose ids are a frozen :class:`ImageVQVAE`'s and whose decoder is a diffusion model.

    Args:
        config: the VQ-VAE's config and the denoiser's.
        class_names: passed to the VQ-VAE (stored with the weights).

    ``encode`` is the VQ-VAE's; ``decode(ids, steps, generator)`` samples with DDIM. ``self.vq.decode``
    is the plain decoder of the same codes.
    """

    config_class = DiffusionDecoderConfig

    def __init__(self, config: DiffusionDecoderConfig, class_names: list[str] | None = None):
        super().__init__()
        from diffusers import DDPMScheduler, UNet2DModel

        self.config = config
        self.vq = ImageVQVAE(config.vq, class_names=class_names)
        self.vq.requires_grad_(False)
        self.vq.eval()
        dc, channels = config.diffusion, self.vq.codec.in_channels
        self.flags = list(FLAG_CHANNELS.get(self.vq.codec.name, ()))
        d, s, p = self.vq.latent_dim, dc.pixel_shuffle, config.vq.patch_size
        self.upsampler = nn.ConvTranspose2d(d, d, p // s, stride=p // s) if dc.upsample == "learned" else None
        levels = len(dc.block_out_channels)
        pixels = channels * s * s  # image channels the UNet sees
        cond = d + (pixels if dc.use_plain_decode else 0)
        self.unet = UNet2DModel(
            sample_size=config.vq.image_size // s, in_channels=pixels + cond, out_channels=pixels,
            block_out_channels=tuple(dc.block_out_channels), layers_per_block=dc.layers_per_block,
            down_block_types=("DownBlock2D",) * levels, up_block_types=("UpBlock2D",) * levels,
            add_attention=dc.use_attention, attention_head_dim=dc.attention_head_dim,
            norm_num_groups=dc.norm_num_groups)
        # a function of the config, so not saved: rebuilt identically by from_pretrained
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=dc.num_train_timesteps, beta_schedule=dc.beta_schedule,
            prediction_type=dc.prediction_type, rescale_betas_zero_snr=True, timestep_spacing="trailing",
            clip_sample=True, clip_sample_range=2 * self.residual_scale if dc.use_residual else 1.0)

    @classmethod
    def from_vq(cls, vq: ImageVQVAE, diffusion: DiffusionConfig | None = None) -> DiffusionDecoderTokenizer:
        """A fresh (untrained) diffusion decoder around a trained VQ-VAE, whose weights are copied."""
        model = cls(DiffusionDecoderConfig(vq=vq.config, diffusion=diffusion or DiffusionConfig()),
                    class_names=vq.class_names)
        model.vq.load_state_dict(vq.state_dict())
        return model.to(vq.device)

    def extra_state(self) -> dict:
        return self.vq.extra_state()

    def train(self, mode: bool = True):
        super().train(mode)
        self.vq.eval()  # frozen: no EMA codebook updates, no dead-code replacement
        return self

    # ------------------------------------------------------------------ ModalityTokenizer facts
    @property
    def modality(self) -> str:
        return self.vq.modality

    @property
    def vocab_size(self) -> int:
        return self.vq.vocab_size

    @property
    def num_tokens(self) -> int:
        return self.vq.num_tokens

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def codec(self):
        return self.vq.codec

    # ------------------------------------------------------------------ tensors
    def to_target(self, x: Tensor) -> Tensor:
        """Codec network input (B, C, H, W) -> diffusion space: flags {0, 1} -> {-1, 1}."""
        if not self.flags:
            return x
        x = x.clone()
        x[:, self.flags] = 2 * x[:, self.flags] - 1
        return x

    @property
    def residual_scale(self) -> float:
        return self.config.diffusion.residual_scale or 1.0

    def diffusion_target(self, x: Tensor, plain: Tensor | None) -> Tensor:
        """Codec input x (B, C, H, W) -> what is diffused: the image, or its scaled residual over ``plain``."""
        target = self.to_target(x)
        return (target - plain) * self.residual_scale if self.config.diffusion.use_residual else target

    @torch.no_grad()
    def plain_decode(self, z_q: Tensor) -> Tensor:
        """The frozen ViT decoder's reconstruction (B, C, H, W) in diffusion space (flag logits -> tanh)."""
        with torch.autocast(z_q.device.type, enabled=False):
            out = self.vq.decode_latents(z_q.float())
        clamped = out.clamp(-1, 1)
        if self.flags:
            clamped[:, self.flags] = torch.tanh(out[:, self.flags] / 2)  # 2 * sigmoid - 1: expected flag
        return clamped

    @torch.no_grad()
    def latents(self, x: Tensor) -> Tensor:
        """Codec input (B, C, H, W) -> z_q (B, D, h, w) exactly as ``decode`` rebuilds them from the ids."""
        with torch.autocast(x.device.type, enabled=False):
            return self.vq.embed_ids(self.vq.quantize(x.float())[1])

    def forward(self, noisy: Tensor, timesteps: Tensor, z_q: Tensor, plain: Tensor | None = None) -> Tensor:
        """Denoiser: noisy (B, C, H, W), timesteps (B,), z_q (B, D, h, w) -> prediction (B, C, H, W).

        ``plain`` is the plain decode of ``z_q`` (computed here if needed and not given).
        """
        s = self.config.diffusion.pixel_shuffle
        noisy_s = F.pixel_unshuffle(noisy, s)
        size = noisy_s.shape[-2:]
        cond = self.upsampler(z_q) if self.upsampler is not None else F.interpolate(z_q, size=size, mode="nearest")
        parts = [noisy_s, cond.to(noisy.dtype)]
        if self.config.diffusion.use_plain_decode:
            plain = plain if plain is not None else self.plain_decode(z_q)
            parts.append(F.pixel_unshuffle(plain, s).to(noisy.dtype))
        return F.pixel_shuffle(self.unet(torch.cat(parts, dim=1), timesteps).sample, s)

    def inference_scheduler(self, steps: int | None = None):
        """A fresh DDIM scheduler with ``steps`` timesteps set (schedulers are stateful: one per decode)."""
        from diffusers import DDIMScheduler

        steps = steps or self.config.diffusion.steps
        if not 1 <= steps <= self.config.diffusion.num_train_timesteps:
            raise ValueError(f"steps must lie in [1, {self.config.diffusion.num_train_timesteps}], got {steps}")
        scheduler = DDIMScheduler.from_config(self.noise_scheduler.config, set_alpha_to_one=True)
        scheduler.set_timesteps(steps)
        return scheduler

    @torch.no_grad()
    def sample(self, z_q: Tensor, noise: Tensor, steps: int | None = None) -> Tensor:
        """z_q (B, D, h, w), initial noise (B, C, H, W) -> sample in diffusion space (B, C, H, W) (DDIM, eta 0)."""
        scheduler = self.inference_scheduler(steps)
        plain = self.plain_decode(z_q) if self.config.diffusion.use_plain_decode else None
        x = noise
        for t in scheduler.timesteps:
            out = self(x, t.expand(len(x)).to(x.device), z_q, plain)
            x = scheduler.step(out.float(), t, x).prev_sample
        if self.config.diffusion.use_residual:
            x = (plain + x / self.residual_scale).clamp(-1, 1)
        return x

    # ------------------------------------------------------------------ corpus values
    def encode(self, values, batch_size: int = 256) -> Tensor:
        """Corpus values -> ids, LongTensor (B, N): the VQ-VAE's own."""
        return self.vq.encode(values, batch_size)

    def decode(self, ids, steps: int | None = None, generator: torch.Generator | None = None,
               batch_size: int = 64) -> np.ndarray:
        """ids (B, N) -> corpus values (B, ...) in corpus units and dtype, by ``steps`` DDIM steps.

        Without a ``generator`` the noise comes from one seeded with ``config.diffusion.seed``, so the
        same ids always decode to the same values.
        """
        ids = torch.as_tensor(ids).long()
        if generator is None:
            generator = torch.Generator().manual_seed(self.config.diffusion.seed)
        side = self.config.vq.image_size
        # all the noise at once: a sample's decode does not depend on batch_size
        noise = torch.randn((len(ids), self.codec.in_channels, side, side), generator=generator,
                            device=generator.device)
        with inference(self):
            return np.concatenate([
                self.vq.from_output(self.sample(self.vq.embed_ids(ids[i:i + batch_size]),
                                                noise[i:i + batch_size].to(self.device), steps))
                for i in range(0, len(ids), batch_size)])


def diffusion_loss(model: nn.Module, x: Tensor, z_q: Tensor, plain: Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
    """MSE of the denoiser's prediction at uniformly drawn timesteps; calls ``model(...)`` (DDP-safe).

    x (B, C, H, W) is the codec's network input of the images whose codes are z_q (B, D, h, w);
    ``plain`` their plain decode (computed by the model if not given). ``generator`` (CPU) draws the
    noise and timesteps.
    """
    core = getattr(model, "module", model)  # DDP wraps the module; its attributes live inside
    scheduler = core.noise_scheduler
    if plain is None and core.config.diffusion.use_plain_decode:
        plain = core.plain_decode(z_q)
    target = core.diffusion_target(x, plain)
    noise = torch.randn(target.shape, generator=generator).to(x.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x),), generator=generator).to(x.device)
    noisy = scheduler.add_noise(target, noise, t)
    pred = model(noisy, t, z_q, plain).float()
    if scheduler.config.prediction_type == "v_prediction":
        want = scheduler.get_velocity(target, noise, t)
    else:
        want = {"epsilon": noise, "sample": target}[scheduler.config.prediction_type]
    loss = F.mse_loss(pred, want)
    return loss, {"mse": loss.item()}
