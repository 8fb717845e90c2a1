"""Training of a diffusion decoder (family ``diffusion``) on top of a trained image VQ-VAE.

The base tokenizer (``base``: a folder written by the ``vqvae_image`` family) is loaded, frozen and
copied into the new tokenizer, so the ids do not change: only the decoder does. Data and
augmentation are the image family's (:func:`tokenizers_train.image.prepare`): the corpus series in
memory, the last ``eval_samples`` held out, seeded left-right flips. Each batch is encoded on the fly
by the frozen VQ-VAE (in fp32, exactly as ``encode`` does, so the denoiser learns the codes it will
be given), and the UNet is trained with the diffusion MSE, optionally on random patch-aligned crops
(the UNet is fully convolutional; the conditioning is computed on the whole image first). With
``diffusion.use_residual`` and no ``residual_scale``, the scale is measured first: 1 / RMS of the
plain decoder's residual on up to 256 training samples (written to the run's config.yaml).

Held-out metrics, all on the SAME ids (the base's encoding of the held-out set): the codec's metrics
(PSNR, abs-rel, mean angle, F1...) of the diffusion decode (``diffusion_*``, ``eval_steps`` DDIM
steps, fixed seed) and of the plain ViT decoder (``plain_*``).

    fourm train-tokenizer --config configs/tokenizers/rgb_diffusion.yaml --corpus CORPUS --out TOKENIZERS \\
        base=TOKENIZERS/tok_rgb

writes the run to ``TOKENIZERS/runs/<modality>_diffusion`` and the tokenizer to
``TOKENIZERS/diffusion/<modality>``: a folder named like the modality, so it can replace the plain
one in a tokenizers folder, and one level down, so ``load_tokenizers(TOKENIZERS)`` still finds only
the plain ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from fourm.tokenization.diffusion import DiffusionConfig, DiffusionDecoderTokenizer, diffusion_loss
from fourm.tokenization.vqvae import ImageVQVAE
from fourm.train.loop import TrainConfig, train
from tokenizers_train import image


@dataclass
class Config:
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"hflip": "use_hflip"}

    family: str = "diffusion"
    corpus: str | None = None
    base: str = ""  # folder of the trained ImageVQVAE whose codes are decoded
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    batch_size: int = 32
    crop: int | None = 32  # train on random crops of this side (a multiple of the patch size); None: whole
    eval_samples: int = 64  # held out from the end of the corpus
    eval_steps: int = 10  # DDIM steps of the held-out decode
    limit: int | None = None
    use_hflip: bool = True
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.family != "diffusion":
            raise ValueError(f"family must be diffusion for this trainer, not {self.family!r}")
        if self.batch_size < 1 or self.eval_samples < 1 or self.eval_steps < 1:
            raise ValueError("batch_size, eval_samples and eval_steps must be >= 1")


def residual_scale(base: ImageVQVAE, diffusion: DiffusionConfig, x: torch.Tensor) -> float:
    """1 / RMS of the plain decoder's residual on codec inputs ``x``: a residual of about unit variance."""
    probe = DiffusionDecoderTokenizer.from_vq(base, dataclasses.replace(diffusion, residual_scale=1.0))
    with torch.no_grad():
        residual = probe.diffusion_target(x, probe.plain_decode(probe.latents(x)))
    return float(f"{1 / residual.square().mean().sqrt().clamp(min=1e-3).item():.3g}")


class DiffusionDecoderTask:
    """The :class:`fourm.train.loop.Task` of a diffusion decoder over a frozen VQ-VAE."""

    def __init__(self, cfg: Config, base: ImageVQVAE, data: image.ImageTokenizerTask):
        self.cfg, self.base, self.data = cfg, base, data
        side, p = base.config.image_size, base.config.patch_size
        if cfg.crop is not None and (cfg.crop % p or not 0 < cfg.crop <= side):
            raise ValueError(f"crop {cfg.crop} must be a multiple of the patch size {p} in (0, {side}]")
        halvings = cfg.diffusion.pixel_shuffle * 2 ** (len(cfg.diffusion.block_out_channels) - 1)
        if cfg.crop is not None and cfg.crop % halvings:
            raise ValueError(f"crop {cfg.crop} must be a multiple of {halvings} (pixel_shuffle x 2^(UNet levels - 1))")
        if cfg.diffusion.use_residual and cfg.diffusion.residual_scale is None:
            scale = residual_scale(base, cfg.diffusion, data.codec.to_input(data.train_values[:256]))
            cfg.diffusion = dataclasses.replace(cfg.diffusion, residual_scale=scale)
        # fixed once: the base is frozen, so its ids and plain decode of the held-out set never change
        self.eval_ids = base.encode(data.eval_values)
        self.plain_metrics = {f"plain_{k}": v for k, v in
                              data.codec.metrics(base.decode(self.eval_ids), data.eval_values).items()}

    def build_model(self) -> DiffusionDecoderTokenizer:
        return DiffusionDecoderTokenizer.from_vq(self.base, self.cfg.diffusion)

    def train_batches(self, start_step: int, rank: int, world_size: int) -> Iterator[tuple[torch.Tensor, int]]:
        micro = start_step * self.cfg.train.grad_accum
        for step, x in enumerate(self.data.train_batches(start_step, rank, world_size), start=micro):
            yield x, self.cfg.train.seed * 1_000_003 + step * 97 + rank  # seed of this batch's noise and crop

    def loss(self, model, batch: tuple[torch.Tensor, int]) -> tuple[torch.Tensor, dict[str, float]]:
        x, seed = batch
        core = getattr(model, "module", model)
        x = x.to(core.device)
        z_q = core.latents(x)
        plain = core.plain_decode(z_q) if core.config.diffusion.use_plain_decode else None
        g = torch.Generator().manual_seed(seed)
        if self.cfg.crop is not None and self.cfg.crop < x.shape[-1]:
            x, z_q, plain = self._crop(x, z_q, plain, g)
        return diffusion_loss(model, x, z_q, plain, generator=g)

    def _crop(self, x, z_q, plain, g: torch.Generator):
        """One random patch-aligned crop for the whole batch (so it stays one tensor)."""
        p, grid = self.base.config.patch_size, self.base.config.grid
        cells = self.cfg.crop // p
        i, j = torch.randint(0, grid - cells + 1, (2,), generator=g).tolist()
        pix = (slice(None), slice(None), slice(i * p, (i + cells) * p), slice(j * p, (j + cells) * p))
        lat = (slice(None), slice(None), slice(i, i + cells), slice(j, j + cells))
        return x[pix], z_q[lat], None if plain is None else plain[pix]

    def evaluate(self, model: DiffusionDecoderTokenizer) -> dict[str, float]:
        # in fp32, as users run the tokenizer
        with torch.autocast(model.device.type, enabled=False):
            pred = model.decode(self.eval_ids, steps=self.cfg.eval_steps)
        scores = {f"diffusion_{k}": v for k, v in self.data.codec.metrics(pred, self.data.eval_values).items()}
        return {**scores, **self.plain_metrics}


def prepare(cfg: Config) -> DiffusionDecoderTask:
    """Load the base tokenizer and the corpus series it reads."""
    if not cfg.base:
        raise ValueError("no base tokenizer: set base=<folder of a trained vqvae_image tokenizer>")
    base = ImageVQVAE.from_pretrained(cfg.base)
    base.requires_grad_(False)
    image_cfg = image.Config(corpus=cfg.corpus, modality=base.modality, model=base.config,
                             batch_size=cfg.batch_size, eval_samples=cfg.eval_samples, limit=cfg.limit,
                             use_hflip=cfg.use_hflip, train=cfg.train)
    data, _ = image.prepare(image_cfg)
    return DiffusionDecoderTask(cfg, base, data)


def run(cfg: Config, out: Path, progress: bool = True) -> DiffusionDecoderTokenizer:
    """Train into ``out/runs/<modality>_diffusion``; save the tokenizer to ``out/diffusion/<modality>``."""
    task = prepare(cfg)
    modality = task.base.modality
    run_dir = Path(out) / "runs" / f"{modality}_diffusion"
    model = train(task, cfg.train, run_dir, progress=progress, record=cfg)
    model.save_pretrained(Path(out) / "diffusion" / modality)
    return model
