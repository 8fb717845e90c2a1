"""Training of the patch expert (family ``patch_expert``): the small CNN that FourM's hybrid pixel stem
reads (:mod:`fourm.model.expert`), trained on RGB -> each patch's class histogram of a segmentation.

    fourm train-tokenizer --config configs/tokenizers/patch_expert.yaml --corpus CORPUS --out TOKENIZERS

reads the corpus' ``rgb`` and ``labels`` series (default ``semseg``) into memory, holds out the last
``eval_samples``, trains through the shared loop into ``TOKENIZERS/runs/patch_expert`` and saves the
expert to ``TOKENIZERS/parts/patch_expert`` (no model modality: FourM loads it with
``model.pixel_expert=PATH``). Held-out metrics: ``patch_accuracy`` (each patch's majority class
predicted) and ``class_accuracy``, its mean over classes, which counts the rare object classes as much
as the background and ground that fill most patches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fourm.data.corpus import CorpusReader
from fourm.kinds import rgb_to_model
from fourm.model.expert import PatchExpert, PatchExpertConfig, patch_histograms
from fourm.train.loop import TrainConfig, train
from tokenizers_train.data import index_batches, tokenizer_dir

NAME = "patch_expert"


@dataclass
class Config:
    family: str = NAME
    corpus: str | None = None
    labels: str = "semseg"  # the corpus' class-id series the patch classes come from
    model: PatchExpertConfig = field(default_factory=PatchExpertConfig)
    batch_size: int = 32
    eval_samples: int = 256  # held out from the end of the corpus
    limit: int | None = None  # use only the first ``limit`` samples of the corpus
    use_hflip: bool = True  # random left-right mirroring of image and labels together
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.family != NAME:
            raise ValueError(f"family must be {NAME} for this trainer, not {self.family!r}")
        if self.batch_size < 1 or self.eval_samples < 1:
            raise ValueError("batch_size and eval_samples must be >= 1")


def load_pairs(cfg: Config) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """(rgb (N, H, W, 3) uint8, class ids (N, H, W), class names) of the corpus, in corpus order."""
    reader = CorpusReader(cfg.corpus, ["rgb", cfg.labels])
    total = len(reader) if cfg.limit is None else min(cfg.limit, len(reader))
    images, labels = [], []
    for sample in tqdm(reader, total=total, desc=f"load rgb + {cfg.labels}", unit="sample", leave=False):
        images.append(np.asarray(sample["rgb"], dtype=np.uint8))
        labels.append(np.asarray(sample[cfg.labels]))
        if len(images) == total:
            break
    if cfg.eval_samples >= len(images):
        raise ValueError(f"{cfg.corpus} has {len(images)} samples: too few to hold out {cfg.eval_samples}")
    shapes = {(im.shape[:2], lab.shape[:2]) for im, lab in zip(images, labels, strict=True)}
    if len(shapes) != 1 or next(iter(shapes))[0] != next(iter(shapes))[1]:
        raise ValueError(f"{cfg.corpus}: rgb and {cfg.labels} must share one size, found {sorted(shapes)}")
    side = images[0].shape[0]
    if side % cfg.model.patch_size or images[0].shape[1] % cfg.model.patch_size:
        raise ValueError(f"{cfg.corpus}: {images[0].shape[:2]} images do not split into "
                         f"{cfg.model.patch_size} px patches (model.patch_size)")
    names = (reader.manifest.get("classes") or {}).get(cfg.labels)
    return np.stack(images), np.stack(labels), names


class PatchExpertTask:
    """The :class:`fourm.train.loop.Task` of the patch expert."""

    def __init__(self, cfg: Config, images: np.ndarray, labels: np.ndarray, class_names: list[str] | None):
        self.cfg, self.class_names = cfg, class_names
        n = len(images) - cfg.eval_samples
        self.images, self.labels = rgb_to_model(images[:n]), torch.from_numpy(labels[:n].astype(np.int64))
        self.eval_images = rgb_to_model(images[n:])
        self.eval_classes = patch_histograms(torch.from_numpy(labels[n:].astype(np.int64)), cfg.model.patch_size,
                                             cfg.model.num_classes).argmax(-1)

    def build_model(self) -> PatchExpert:
        return PatchExpert(self.cfg.model, class_names=self.class_names)

    def train_batches(self, start_step: int, rank: int, world_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        micro = start_step * self.cfg.train.grad_accum
        for step, idx in enumerate(index_batches(len(self.images), self.cfg.batch_size, self.cfg.train.seed,
                                                 micro, rank, world_size), start=micro):
            x, labels = self.images[idx], self.labels[idx]
            if self.cfg.use_hflip:  # drawn from the step: a resumed run sees the same batches
                g = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + step * 97 + rank)
                flip = torch.rand(len(x), generator=g) < 0.5
                x, labels = x.clone(), labels.clone()
                x[flip], labels[flip] = x[flip].flip(-1), labels[flip].flip(-1)
            yield x, patch_histograms(labels, self.cfg.model.patch_size, self.cfg.model.num_classes)

    def loss(self, model, batch) -> tuple[torch.Tensor, dict]:
        device = next(model.parameters()).device
        return model.loss(*(t.to(device) for t in batch)), {}

    @torch.no_grad()
    def evaluate(self, model: PatchExpert) -> dict[str, float]:
        was_training = model.training
        model.eval()
        with torch.autocast(self.eval_images.device.type, enabled=False):
            pred = torch.cat([model(x).argmax(-1) for x in self.eval_images.split(256)])
        model.train(was_training)
        truth = self.eval_classes
        per_class = [float((pred[truth == c] == c).float().mean()) for c in truth.unique().tolist()]
        return {"patch_accuracy": float((pred == truth).float().mean()), "class_accuracy": float(np.mean(per_class))}


def run(cfg: Config, out: Path, progress: bool = True) -> PatchExpert:
    """Train ``cfg`` into ``out/runs/patch_expert`` and save the expert to ``out/parts/patch_expert``."""
    if cfg.corpus is None:
        raise ValueError("no corpus: pass --corpus or set corpus in the config")
    images, labels, names = load_pairs(cfg)
    if names:  # the class count is the corpus'
        cfg.model = replace(cfg.model, num_classes=len(names))
    if int(labels.max()) >= cfg.model.num_classes:
        raise ValueError(f"{cfg.corpus}/{cfg.labels} holds class {int(labels.max())}, beyond "
                         f"model.num_classes={cfg.model.num_classes}")
    model = train(PatchExpertTask(cfg, images, labels, names), cfg.train, Path(out) / "runs" / NAME,
                  progress=progress, record=cfg)
    model.save_pretrained(tokenizer_dir(out, NAME))
    return model
