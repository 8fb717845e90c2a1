"""FourM pre-training (and fine-tuning) as a task of the shared loop.

``fourm train --config configs/fourm/demo.yaml [key=value ...]`` or, on many GPUs or machines,
``accelerate launch -m fourm.train --config ...``. The model's modalities, vocabularies and token
counts come from the token corpus' manifest (what its tokenizers made), so a model can never be
built for ids its data does not hold.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from fourm.data import loader
from fourm.data.loader import modalities_from_manifest, read_token_manifest, unigram_baseline
from fourm.data.masking import Masker, MaskingConfig, TextSpecials, specials_from_tokenizer
from fourm.data.stream import LOADERS, open_token_data
from fourm.modalities import Kind, ModalityScale
from fourm.model import sizes
from fourm.model.expert import PatchExpert
from fourm.model.fourm import FourM
from fourm.model.stems import HybridStem
from fourm.tokenization.base import load_tokenizer
from fourm.train.loop import TrainConfig, train
from fourm.transfer.new_modality import StagedUnfreezing, add_modalities, grown_config


@dataclass
class DataConfig:
    # token corpora, mixed by weights: folders, addresses or pipe: commands (fourm.data.corpus)
    corpora: list[str] = field(default_factory=lambda: ["runs/tokens"])
    weights: list[float] | None = None
    # memory | stream | auto (stream remote corpora and those past fourm.data.stream.STREAM_ABOVE samples)
    loader: str = "auto"
    window_shards: int = 8  # a stream's shuffle window: shards decoded and shuffled together
    heldout: int = 64  # last samples of the mixture kept for evaluation
    batch_size: int = 8
    eval_batch_size: int = 32
    num_workers: int = 0  # masking runs in these DataLoader workers
    tokenizers: str | None = None  # a sequence tokenizer folder for the special ids; None: the fixed layout

    def __post_init__(self):
        if self.loader not in LOADERS:
            raise ValueError(f"data.loader must be {', '.join(LOADERS)}, not {self.loader!r}")
        if self.window_shards < 1:
            raise ValueError(f"data.window_shards must be at least 1, not {self.window_shards}")


@dataclass
class ModelConfig:
    size: str = "micro"  # a name of fourm.model.sizes
    modalities: list[str] | None = None  # None: every modality the (first) token corpus holds
    overrides: dict[str, Any] = field(default_factory=dict)  # any FourMConfig field (dim, use_tied_heads, scale...)
    init: str | None = None  # start from this pretrained FourM (fine-tuning) instead of from scratch
    # with init: modalities of the corpus that the checkpoint lacks are added (fourm.transfer.new_modality);
    # for the first frozen_steps steps only their new weights train, then the whole model
    frozen_steps: int = 0
    # a pretrained PatchExpert (tokenizers_train family patch_expert): FourM's rgb pixels then go through the
    # hybrid stem, the expert's frozen CNN beside the linear patch embedding (fourm.model.stems.HybridStem)
    pixel_expert: str | None = None
    # target modality -> its image tokenizer's folder: the modality's output head also scores each code by its
    # vector in that tokenizer's codebook (fourm.model.heads.CodebookHead)
    head_codebooks: dict[str, str] = field(default_factory=dict)


@dataclass
class FourMTrainConfig:
    out: str = "runs/fourm"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class FourMTask:
    """Token corpora -> masked batches -> FourM; evaluation against the unigram baseline."""

    def __init__(self, cfg: FourMTrainConfig):
        self.cfg = cfg
        if not cfg.data.corpora:
            raise ValueError("data.corpora is empty: name at least one token corpus")
        self.manifest = [read_token_manifest(c) for c in cfg.data.corpora][0]
        self.modalities = modalities_from_manifest(self.manifest, cfg.model.modalities)
        dataset = open_token_data(cfg.data.corpora, self.modalities, cfg.data.weights, cfg.data.loader,
                                  cfg.data.window_shards)
        self.train_set, self.heldout = dataset.split(cfg.data.heldout)
        specials = specials_from_tokenizer(cfg.data.tokenizers) if cfg.data.tokenizers else TextSpecials()
        self.masker = Masker(self.modalities, cfg.masking, specials)
        self.baseline = unigram_baseline(self.train_set, self.heldout)
        self._eval = None
        self.expert = self._pixel_expert()
        self.codebooks = self._codebooks()

    def _pixel_expert(self):
        m = self.cfg.model
        if m.pixel_expert is None:
            if m.overrides.get("pixel_stem") == "hybrid" and m.init is None:
                raise ValueError("pixel_stem hybrid reads a pretrained patch expert: set model.pixel_expert=PATH "
                                 "(trained by tokenizers_train, family patch_expert)")
            return None
        if m.init is not None:
            raise ValueError("model.pixel_expert builds a new model's stem; model.init already has its own")
        if not any(self.modalities[n].kind == Kind.PIXELS for n in self.modalities):
            raise ValueError(f"model.pixel_expert reads rgb pixels, which none of {list(self.modalities)} are")
        return PatchExpert.from_pretrained(m.pixel_expert)

    def _codebooks(self) -> dict[str, torch.Tensor]:
        """Each ``model.head_codebooks`` modality's code vectors, read from its tokenizer."""
        m = self.cfg.model
        if not m.head_codebooks:
            return {}
        if m.init is not None:
            raise ValueError("model.head_codebooks builds a new model's heads; model.init already has its own")
        out = {}
        for name, path in m.head_codebooks.items():
            if name not in self.modalities:
                raise ValueError(f"model.head_codebooks: {name!r} is not among this run's modalities "
                                 f"{list(self.modalities)}")
            tokenizer = load_tokenizer(path)
            if getattr(tokenizer, "modality", None) != name or not hasattr(tokenizer, "code_vectors"):
                raise ValueError(f"model.head_codebooks: {path} holds a {type(tokenizer).__name__} for "
                                 f"{getattr(tokenizer, 'modality', '?')!r}, not an image tokenizer for {name!r}")
            vectors = tokenizer.code_vectors()
            if len(vectors) != self.modalities[name].vocab_size:
                raise ValueError(f"model.head_codebooks: {path} has {len(vectors)} codes, the corpus' {name} "
                                 f"{self.modalities[name].vocab_size}: not the tokenizer that made it")
            out[name] = vectors
        return out

    def model_config(self):
        # the corpus' scale (its patches per modality), this run's modalities' vocabularies and lengths
        scale = loader.manifest_scale(self.manifest)
        if scale is None and any(m.is_image for m in self.modalities.values()):
            raise ValueError("the token corpus manifest has no image_size: re-run `fourm tokenize`")
        scale = scale or ModalityScale()
        patches = {n: m.patch_size for n, m in self.modalities.items() if m.patch_size not in (None, scale.patch_size)}
        scale = ModalityScale(scale.image_size, scale.patch_size, patches, vocab_sizes={
            n: m.vocab_size for n, m in self.modalities.items() if m.vocab_size is not None})
        overrides = dict(self.cfg.model.overrides)
        if self.expert is not None:  # its architecture is recorded in the model's config; weights: build_model
            overrides.update(pixel_stem="hybrid", pixel_expert=dataclasses.asdict(self.expert.config))
        if self.codebooks:  # likewise: the widths here, the vectors in build_model
            overrides["head_codebooks"] = {n: int(v.shape[1]) for n, v in self.codebooks.items()}
        # model.overrides.scale.<field> changes that field of the corpus' scale; per-modality tables are
        # merged, so scale.vocab_sizes.tok_rgb=2048 leaves the other vocabularies as the corpus has them
        changes = overrides.pop("scale", None) or {}
        scale = replace(scale, **{k: {**getattr(scale, k), **v} if isinstance(v, dict) else v
                                  for k, v in changes.items()})
        max_tokens = {n: m.tokens for n, m in self.modalities.items()}
        return sizes.model_config(self.cfg.model.size, list(self.modalities), scale, max_tokens=max_tokens, **overrides)

    def build_model(self):
        self.staging, self._micro = None, 0
        if self.cfg.model.init:
            model = FourM.from_pretrained(self.cfg.model.init)
            new = [n for n in self.modalities if n not in model.config.modalities]
            if new:  # the checkpoint's weights, and fresh ones for what it does not know
                config = grown_config(model.config, self.model_config(), list(self.modalities))
                model = add_modalities(model, config)
                if self.cfg.model.frozen_steps > 0:
                    self.staging = StagedUnfreezing(model, new, self.cfg.model.frozen_steps)
            return model.train()
        model = FourM(self.model_config())
        if self.expert is not None:
            for stem in model.embed.projections.values():
                if isinstance(stem, HybridStem):
                    stem.load_expert(self.expert)
        for name, vectors in self.codebooks.items():
            model.heads[name].load_codebook(vectors)
        return model

    def train_batches(self, start_step: int, rank: int, world_size: int):
        d = self.cfg.data
        self._micro = start_step * self.cfg.train.grad_accum
        # the loop counts optimizer steps; the stream counts micro-batches
        return loader.train_batches(self.train_set, self.masker, start_step * self.cfg.train.grad_accum, rank,
                             world_size, d.batch_size, self.cfg.train.seed, d.num_workers)

    def loss(self, model, batch):
        if getattr(self, "staging", None) is not None:  # freeze or unfreeze before this step's forward
            self.staging.update(getattr(model, "module", model), self._micro // self.cfg.train.grad_accum)
            self._micro += 1
        device = next(model.parameters()).device
        out = model(batch.to(device))
        return out.loss, {f"loss/{m}": v for m, v in out.modality_losses.items()}  # detached tensors

    def after_step(self, model, step: int) -> None:
        if getattr(self, "staging", None) is not None:
            self.staging.after_step(model, step)

    def evaluate(self, model) -> dict[str, float]:
        """Held-out cross-entropy per target modality, and its ratio to the unigram baseline."""
        if self._eval is None:  # masked once: every evaluation sees the same targets
            self._eval = loader.eval_batches(self.heldout, self.masker, self.cfg.data.eval_batch_size,
                                             self.cfg.train.seed)
        device = next(model.parameters()).device
        names = list(model.config.modalities)
        total, count = defaultdict(float), defaultdict(int)
        for batch in self._eval:
            out = model(batch.to(device))
            tokens = torch.bincount(batch.dec_mod[batch.dec_valid], minlength=len(names))
            for m, loss in out.modality_losses.items():
                n = int(tokens[names.index(m)])
                total[m] += float(loss) * n
                count[m] += n
        scores = {}
        for m in total:
            scores[f"loss/{m}"] = total[m] / count[m]
            if m in self.baseline:
                scores[f"vs_unigram/{m}"] = scores[f"loss/{m}"] / self.baseline[m]
        scores["loss"] = sum(total.values()) / max(1, sum(count.values()))
        return scores


def run_training(cfg: FourMTrainConfig, progress: bool = True):
    """Train FourM as ``cfg`` says into ``cfg.out`` (resuming from its last checkpoint)."""
    task = FourMTask(cfg)
    if cfg.model.init is None:
        task.model_config()  # a bad model setting is named before the run's folder is made
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    return train(task, cfg.train, cfg.out, progress=progress, record=cfg)
