"""Fine-tuning FourM's encoder with a task head, as a task of the one training loop.

``fourm finetune --config configs/finetune/count.yaml [key=value ...]``. Three regimes:

* ``frozen``: the encoder is fixed and only the head trains (a linear probe, or an MLP probe with
  ``head.hidden``); the encoder's weights stay bit-identical;
* ``full``: the encoder (embeddings, blocks, norm) trains with the head; the decoder, which no task
  head reads, stays as it was;
* ``lora``: low-rank adapters (Hu et al. 2021, arXiv 2106.09685) on the encoder's attention and MLP
  linears, through ``peft``; the trunk is fixed. The adapter is saved on its own (peft's format,
  ``adapter/``) and merged into the weights as a plain FourM checkpoint (``merged/``).

``init: random`` trains the same head on a FourM of the same architecture with fresh weights: the
baseline that tells what pre-training adds. A run folder holds what the loop writes (``model/``: the
FourM with its head, loadable with :meth:`FinetunedFourM.from_pretrained`), plus ``head/`` (the head
alone), ``adapter/`` and ``merged/`` (LoRA), ``fourm/`` (full fine-tuning: the encoder's new weights in
a plain FourM checkpoint) and ``scores.json`` (held-out measures).
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fourm.generation.pipeline import Pipeline
from fourm.io import write_json
from fourm.kinds import handler
from fourm.model.batch import Batch
from fourm.model.fourm import FourM, FourMConfig
from fourm.pretrained import PretrainedMixin, register_pretrained
from fourm.train.loop import TrainConfig, train
from fourm.transfer.features import EncoderInputs
from fourm.transfer.heads import HeadConfig, TaskHead, metrics
from fourm.transfer.labels import LABELS, encode_labels, labels_for

REGIMES = ("frozen", "full", "lora")
INITS = ("pretrained", "random")
_ENCODER_SIDE = ("embed.", "encoder.", "encoder_norm.")  # what the encoder reads; the decoder is not


@dataclass
class LoraSettings:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # linears of each encoder block (fourm.model.blocks.EncoderBlock): attention in/out, SwiGLU in/out
    target_modules: list[str] = field(default_factory=lambda: ["attn.qkv", "attn.proj", "mlp.w12", "mlp.w3"])


@dataclass
class HeadSettings:
    hidden: int = 0  # 0: linear probe; > 0: an MLP head with one hidden layer of this width
    pool: str = "mean"  # pooled tasks: mean of every input token | grid: the image input's patch tokens side by side


@dataclass
class FinetuneConfig:
    out: str = "runs/finetune"
    model: str = "runs/demo/fourm/model"  # a FourM folder
    init: str = "pretrained"  # pretrained | random (the same architecture, fresh weights: the baseline)
    tokenizers: str | None = None  # needed where an input is a raw series the model reads as tokens
    corpus: str = "runs/demo/corpus"
    inputs: list[str] = field(default_factory=lambda: ["rgb"])
    labels: str = "count"  # a corpus label (fourm.transfer.labels.LABELS) or a CSV / JSON file of key -> label
    task: str | None = None  # default: the corpus label's own task; needed with a file
    classes: list[str] | None = None  # class names (default: the corpus label's, or those found in the data)
    limit: int | None = None  # read the first N corpus samples
    heldout: int = 64  # the last N samples read: the evaluation set
    samples: int | None = None  # labelled training samples (default: every sample before the held-out ones)
    regime: str = "frozen"  # frozen | full | lora
    head: HeadSettings = field(default_factory=HeadSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    batch_size: int = 32
    eval_batch_size: int = 64
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300, lr=1e-3, warmup_steps=20,
                                                                   eval_every=0, save_every=0, log_every=25))

    def __post_init__(self):
        if self.regime not in REGIMES:
            raise ValueError(f"regime must be one of {', '.join(REGIMES)}, not {self.regime!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, not {self.init!r}")
        if self.heldout < 1 or self.batch_size < 1 or (self.samples is not None and self.samples < 1):
            raise ValueError("heldout, batch_size and samples must be at least 1")


@dataclass
class FinetunedConfig:
    fourm: FourMConfig = field(default_factory=FourMConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    inputs: list[str] = field(default_factory=lambda: ["rgb"])  # model modalities the encoder reads
    regime: str = "frozen"
    lora: LoraSettings | None = None


def lora_targets(fourm: FourM, names: list[str]) -> str:
    """peft's ``target_modules`` as one regex over the encoder blocks' linears named ``names``; a name
    that is no linear of every encoder block is a one-line error listing those there are."""
    linears = sorted({n.split(".", 2)[2] for n, m in fourm.named_modules()
                      if isinstance(m, nn.Linear) and re.match(r"encoder\.\d+\.", n)})
    bad = [n for n in names if n not in linears]
    if bad or not names:
        raise ValueError(f"lora.target_modules: {', '.join(bad) or 'none given'} is no linear layer of the encoder "
                         f"blocks; they have: {', '.join(linears)}")
    return rf"encoder\.\d+\.({'|'.join(re.escape(n) for n in names)})"


def wrap_lora(fourm: FourM, settings: LoraSettings):
    """``fourm`` with LoRA adapters injected by peft (a ``PeftModel``; the FourM inside is changed in place)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=lora_targets(fourm, settings.target_modules))
    return get_peft_model(fourm, config)


def load_adapter(model: str | Path | FourM, adapter: str | Path):
    """A FourM (folder or module) with a saved LoRA adapter loaded on top (unmerged, as peft loads it)."""
    from peft import PeftModel

    base = FourM.from_pretrained(model) if not isinstance(model, nn.Module) else model
    return PeftModel.from_pretrained(base, str(adapter))


@register_pretrained("fourm_finetuned")
class FinetunedFourM(nn.Module, PretrainedMixin):
    """A FourM's encoder and a :class:`TaskHead`: ``forward(batch)`` -> the head's predictions.

    Args:
        config: the FourM's config, the head's, the inputs and the regime (with LoRA settings).
        fourm: the FourM to start from (default: fresh weights of ``config.fourm``).
    """

    config_class = FinetunedConfig

    def __init__(self, config: FinetunedConfig, fourm: FourM | None = None):
        super().__init__()
        self.config = config
        if config.regime not in REGIMES:
            raise ValueError(f"regime must be one of {', '.join(REGIMES)}, not {config.regime!r}")
        fourm = FourM(config.fourm) if fourm is None else fourm
        for name in config.inputs:
            fourm.modality_index(name)  # a head over a modality the model lacks: one line
        if config.head.reads_grid and config.head.modality not in config.inputs:
            raise ValueError(f"the head reads {config.head.modality}, which is not an input")
        self.head = TaskHead(config.head)
        for name, p in fourm.named_parameters():
            p.requires_grad_(config.regime == "full" and name.startswith(_ENCODER_SIDE))
        if config.regime == "lora":
            fourm = wrap_lora(fourm, config.lora or LoraSettings())  # peft leaves only the adapters trainable
        self.fourm = fourm

    @property
    def trunk(self) -> FourM:
        """The FourM (with the adapters in it, under LoRA)."""
        return self.fourm.get_base_model() if self.config.regime == "lora" else self.fourm

    def forward(self, batch: Batch) -> Tensor:
        trunk, head = self.trunk, self.config.head
        if not head.reads_grid:
            return self.head(trunk.encode_features(batch, "mean", self.config.inputs).values)
        out = trunk.encode_features(batch, "none", self.config.inputs)
        # the output token of each patch of the head's modality, in grid order (B, P, D)
        mine = out.valid & (out.mod == trunk.modality_index(head.modality))
        rows, cols = mine.nonzero(as_tuple=True)
        grid = out.values.new_zeros(out.values.shape[0], head.grid ** 2, out.values.shape[-1])
        grid[rows, out.pos[rows, cols]] = out.values[rows, cols]
        return self.head(grid)

    def merged(self) -> FourM:
        """A plain FourM: under LoRA a copy with the adapters merged into the weights (peft's
        ``merge_and_unload``), else the FourM itself."""
        if self.config.regime != "lora":
            return self.fourm
        return copy.deepcopy(self.fourm).merge_and_unload()


# ----------------------------------------------------------------------------- the task
def _resize_maps(maps: Tensor, size: int) -> Tensor:
    """(N, H, W) label maps -> (N, size, size), nearest (class ids and depths must not blend)."""
    if maps.shape[-1] == size and maps.shape[-2] == size:
        return maps
    return F.interpolate(maps[:, None].float(), size=(size, size), mode="nearest")[:, 0].to(maps.dtype)


class FinetuneTask:
    """Labelled corpus samples -> (encoder batch, labels) -> FinetunedFourM; held-out measures."""

    def __init__(self, cfg: FinetuneConfig, progress: bool = False):
        self.cfg = cfg
        if cfg.labels not in LABELS and Path(cfg.labels).suffix.lower() not in (".csv", ".json"):
            LABELS.check(cfg.labels)  # a typo fails before the corpus is read: the error lists the names
        self.pipeline = Pipeline.from_pretrained(cfg.model, cfg.tokenizers)
        series = [LABELS[cfg.labels].series] if cfg.labels in LABELS else []
        self.data, extras = EncoderInputs.from_corpus(self.pipeline, cfg.corpus, cfg.inputs, cfg.limit,
                                                      extra=series, progress=progress)
        values = labels_for(self.data.keys, cfg.labels, extras)
        task = cfg.task or (LABELS[cfg.labels].task if cfg.labels in LABELS else None)
        if task is None:
            raise ValueError(f"labels from a file ({cfg.labels}) need task: one of classification, multilabel, "
                             "regression")
        classes = cfg.classes or (LABELS[cfg.labels].classes if cfg.labels in LABELS else None)
        self.targets, self.classes = encode_labels(values, self.data.keys, task, classes)
        fourm = self.pipeline.model
        grid = {}
        if task.startswith("dense") or cfg.head.pool == "grid":
            grids = [n for n in self.data.modalities if handler(fourm.specs[n]).grid]
            if not grids:
                raise ValueError(f"a dense or grid-pooled head needs an image input; the inputs are "
                                 f"{', '.join(self.data.modalities)}")
            spec = fourm.specs[grids[0]]  # the first image input's patches carry the map
            grid = dict(modality=grids[0], grid=math.isqrt(spec.tokens), patch=spec.patch_size)
        if task.startswith("dense"):
            self.targets = _resize_maps(self.targets, fourm.config.scale.image_size)
        self.head = HeadConfig(task=task, num_outputs=len(self.classes) if self.classes else 1, dim=fourm.config.dim,
                               hidden=cfg.head.hidden, pool=cfg.head.pool, **grid)
        n = len(self.data)
        if not 0 < cfg.heldout < n:
            raise ValueError(f"cannot hold out {cfg.heldout} of the {n} samples read")
        self.train_index = np.arange(n - cfg.heldout)[: cfg.samples]
        self.eval_index = np.arange(n - cfg.heldout, n)

    def build_model(self) -> FinetunedFourM:
        fourm = copy.deepcopy(self.pipeline.model)
        if self.cfg.init == "random":  # the same architecture, fresh weights (seeded by train.seed)
            torch.manual_seed(self.cfg.train.seed)
            fourm = FourM(fourm.config)
        config = FinetunedConfig(fourm.config, self.head, list(self.data.modalities), self.cfg.regime,
                                 self.cfg.lora if self.cfg.regime == "lora" else None)
        return FinetunedFourM(config, fourm).train()

    def _item(self, index: np.ndarray) -> tuple[Batch, Tensor]:
        return self.data.batch(index), self.targets[torch.from_numpy(index)]

    def train_batches(self, start_step: int, rank: int, world_size: int):
        """Step ``s``: a slice of a seeded permutation of the training samples (the same on every resume)."""
        size, per_rank = len(self.train_index), self.cfg.batch_size
        batch = per_rank * world_size
        steps_per_epoch = max(1, size // batch)
        for step in range(start_step, 1 << 62):
            epoch, offset = divmod(step, steps_per_epoch)
            order = np.random.default_rng([self.cfg.train.seed, epoch]).permutation(size)
            order = np.resize(order, max(size, batch))  # fewer samples than a batch: some twice
            chosen = order[offset * batch + rank * per_rank: offset * batch + (rank + 1) * per_rank]
            yield self._item(self.train_index[chosen])

    def loss(self, model, item) -> tuple[Tensor, dict]:
        batch, target = item
        device = next(model.parameters()).device
        pred = model(batch.to(device))
        return getattr(model, "module", model).head.loss(pred, target.to(device)), {}

    @torch.no_grad()
    def predict(self, model: FinetunedFourM, index: np.ndarray) -> Tensor:
        device = next(model.parameters()).device
        chunks = [model(self.data.batch(index[s: s + self.cfg.eval_batch_size]).to(device)).float().cpu()
                  for s in range(0, len(index), self.cfg.eval_batch_size)]
        return torch.cat(chunks)

    def evaluate(self, model: FinetunedFourM) -> dict[str, float]:
        return metrics(self.head.task, self.predict(model, self.eval_index), self.targets[self.eval_index],
                       self.head.num_outputs)


def export(model: FinetunedFourM, out: str | Path) -> list[Path]:
    """The parts of a fine-tuned model beside the loop's ``model/``: ``head/``; under LoRA ``adapter/``
    (peft's format) and ``merged/`` (a plain FourM); under full fine-tuning ``fourm/`` (a plain FourM)."""
    out = Path(out)
    written = [model.head.save_pretrained(out / "head")]
    if model.config.regime == "lora":
        from fourm.io import atomic_dir

        with atomic_dir(out / "adapter") as tmp:
            model.fourm.save_pretrained(str(tmp))
        written += [out / "adapter", model.merged().save_pretrained(out / "merged")]
    elif model.config.regime == "full":
        written.append(model.fourm.save_pretrained(out / "fourm"))
    return written


def run_finetune(cfg: FinetuneConfig, progress: bool = True) -> tuple[FinetunedFourM, dict[str, float]]:
    """Fine-tune as ``cfg`` says into ``cfg.out``; -> (the model, its held-out measures)."""
    task = FinetuneTask(cfg, progress)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    model = train(task, cfg.train, cfg.out, progress=progress, record=cfg)
    model.eval()
    scores = task.evaluate(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    export(model, cfg.out)
    write_json(Path(cfg.out) / "scores.json", {**scores, "trainable_params": trainable, "train_samples":
                                                int(len(task.train_index)), "heldout": int(len(task.eval_index))})
    return model, scores
