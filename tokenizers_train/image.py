"""Training of the image VQ-VAE tokenizers (family ``vqvae_image``): one per image-like modality.

The corpus series is held in memory (:mod:`tokenizers_train.data`); the last ``eval_samples``
values are held out and scored after every evaluation with the codec's own metrics (PSNR,
abs-rel, mean angle, mIoU, F1...) through the public ``encode`` / ``decode`` path, plus the share
of the vocabulary the held-out set uses and the perplexity of its id distribution (a collapsing
codebook shows there first).

    fourm train-tokenizer --config configs/tokenizers/rgb.yaml --corpus CORPUS --out TOKENIZERS

writes the run (checkpoints, metrics, curves) to ``TOKENIZERS/runs/<modality>`` and the tokenizer
to ``TOKENIZERS/<modality>`` (``TOKENIZERS/parts/<key>`` for a part of a serializer that is no model
modality: ``sam_instance_mask``, the mask VQ-VAE of the ``sam_instance`` serializer, which trains on
every instance of the ``sam_instance`` id maps cropped to its box as the serializer crops it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from fourm.tokenization.coders import instance_masks, resize_mask
from fourm.tokenization.pixels import PixelCodec, codec_class, get_codec
from fourm.tokenization.vqvae import ImageVQConfig, ImageVQVAE
from fourm.train.loop import TrainConfig, train
from tokenizers_train.data import index_batches, load_series, tokenizer_dir
from tokenizers_train.family import check_config, code_stats


@dataclass
class Config:
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"hflip": "use_hflip"}

    family: str = "vqvae_image"
    corpus: str | None = None
    modality: str = "tok_rgb"  # model modality; its corpus source comes from the registry
    model: ImageVQConfig = field(default_factory=ImageVQConfig)
    batch_size: int = 64
    eval_samples: int = 256  # held out from the end of the corpus
    limit: int | None = None  # use only the first ``limit`` samples of the corpus
    use_hflip: bool = True  # random left-right mirroring (the codec knows how: normals negate x)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        check_config(self, "vqvae_image")


class ImageTokenizerTask:
    """The :class:`fourm.train.loop.Task` of an image tokenizer."""

    def __init__(self, cfg: Config, train_values: np.ndarray, eval_values: np.ndarray,
                 class_names: list[str] | None = None):
        self.cfg, self.model_cfg = cfg, cfg.model
        self.train_values, self.eval_values = train_values, eval_values
        self.class_names = class_names
        name = cfg.model.codec or cfg.model.source
        if cfg.use_hflip and not codec_class(name).supports_hflip:
            raise ValueError(f"use_hflip is not valid for {cfg.model.source}: set use_hflip: false")
        self.codec: PixelCodec = get_codec(name, cfg.model.num_classes, cfg.model.channels)

    def build_model(self) -> ImageVQVAE:
        return ImageVQVAE(self.model_cfg, class_names=self.class_names)

    def train_batches(self, start_step: int, rank: int, world_size: int) -> Iterator[torch.Tensor]:
        micro = start_step * self.cfg.train.grad_accum
        for step, idx in enumerate(index_batches(len(self.train_values), self.cfg.batch_size, self.cfg.train.seed,
                                                 micro, rank, world_size), start=micro):
            x = self.codec.to_input(self.train_values[idx.numpy()])
            if self.cfg.use_hflip:  # flips drawn from the step, so a resumed run sees the same batches
                g = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + step * 97 + rank)
                flip = torch.rand(len(x), generator=g) < 0.5
                x[flip] = self.codec.hflip(x[flip])
            yield x

    def loss(self, model, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch.to(next(model.parameters()).device)
        x_hat, ids, aux = model(x)
        rec, logs = self.codec.loss(x_hat.float(), x)
        return rec + aux, {**logs, "aux": aux.detach().item()}

    def evaluate(self, model: ImageVQVAE) -> dict[str, float]:
        # in fp32, as users run the tokenizer: the figures describe what they get
        with torch.autocast(model.device.type, enabled=False):
            ids = model.encode(self.eval_values)
            pred = model.decode(ids)
        return {**self.codec.metrics(pred, self.eval_values), **code_stats(ids, model.vocab_size)}


def instance_crops(id_maps: list, side: int) -> list[np.ndarray]:
    """Every instance of every ``sam_instance`` id map, cropped to its box and resized to ``side x side``
    exactly as the serializer hands masks to its coder."""
    return [resize_mask(mask, side, side) for ids in id_maps for _, mask in instance_masks(ids)]


# corpus series a tokenizer sees through a transform rather than as stored: series -> (values, side) -> values
SERIES_VIEWS = {"sam_instance": instance_crops}


def prepare(cfg: Config) -> tuple[ImageTokenizerTask, dict]:
    """Load the corpus series and fill in what the data decides (class count, feature width)."""
    if cfg.corpus is None:
        raise ValueError("no corpus: pass --corpus or set corpus in the config")
    source = cfg.model.source
    train_values, eval_values, manifest = load_series(cfg.corpus, source, cfg.eval_samples, cfg.limit)
    if source in SERIES_VIEWS:  # held out by corpus sample, so no scene is in both parts
        train_values, eval_values = (SERIES_VIEWS[source](v, cfg.model.image_size) for v in (train_values, eval_values))
        if not train_values or not eval_values:
            raise ValueError(f"{cfg.corpus}/{source}: no instances to train on (or none held out)")
    class_names = (manifest.get("classes") or {}).get(source)
    changes = {}
    if codec_class(cfg.model.codec or source).name == "semseg" and cfg.model.num_classes is None:
        if not class_names:
            raise ValueError(f"{cfg.corpus} names no {source} classes: set model.num_classes")
        changes["num_classes"] = len(class_names)
    if codec_class(cfg.model.codec or source).channels_from_data and cfg.model.channels is None:
        changes["channels"] = int(np.asarray(train_values[0]).shape[-1])
    cfg.model = dataclasses.replace(cfg.model, **changes)
    side = cfg.model.image_size
    shape = np.asarray(train_values[0]).shape
    if shape[:2] != (side, side):
        raise ValueError(f"{cfg.corpus}/{source} holds {shape[0]}x{shape[1]} values; the tokenizer expects "
                         f"{side}x{side} (model.image_size)")
    task = ImageTokenizerTask(cfg, np.stack(train_values), np.stack(eval_values), class_names)
    return task, manifest


def run(cfg: Config, out: Path, progress: bool = True) -> ImageVQVAE:
    """Train ``cfg`` into ``out/runs/<modality>`` and save the tokenizer to ``out/<modality>`` (or
    ``out/parts/<modality>``, see :func:`~tokenizers_train.data.tokenizer_dir`)."""
    task, _ = prepare(cfg)
    run_dir = Path(out) / "runs" / cfg.modality
    model = train(task, cfg.train, run_dir, progress=progress, record=cfg)
    model.save_pretrained(tokenizer_dir(out, cfg.modality))
    return model
