"""Task heads on FourM's encoder: pooled classification, multi-label, regression, and dense maps.

A pooled head reads the mean of the encoder's output tokens (``FourM.encode_features``), or with
``pool: grid`` the output tokens of every patch of one grid input side by side; a dense
head reads the output token of each patch of one grid modality (``rgb``) and predicts that patch's
``p x p`` pixels: a linear map to ``C * p * p`` values rearranged into the image (the pixel-shuffle
upsampling of Shi et al. 2016, arXiv 1609.05158), which at these patch sizes costs one matmul and
keeps each pixel's prediction a function of its own patch's token, as a linear probe should be.
``hidden > 0`` puts one GELU layer first (an MLP probe).

Shapes: B samples, D model width, P patches (h * w), C outputs, H, W pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from fourm.eval.metrics import depth_errors, mean_iou
from fourm.pretrained import PretrainedMixin, register_pretrained
from fourm.transfer.labels import TASKS


@dataclass
class HeadConfig:
    task: str = "classification"  # one of fourm.transfer.labels.TASKS
    num_outputs: int = 1  # classes (labels for multilabel; 1 for regression)
    dim: int = 128  # the encoder's width
    hidden: int = 0  # 0: a linear probe; > 0: one hidden GELU layer of this width
    # pooled tasks: mean (the mean of every input token) | grid (the grid modality's patch tokens, side by
    # side: a linear map that can tell where something is, which a mean cannot)
    pool: str = "mean"
    modality: str | None = None  # dense heads and pool grid: the grid input whose tokens are read (rgb)
    grid: int = 0  # patches per side of that input
    patch: int = 0  # dense heads: pixels per patch side

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"head.task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if self.num_outputs < 1 or self.hidden < 0:
            raise ValueError(f"head.num_outputs must be >= 1 and head.hidden >= 0, not {self.num_outputs}, "
                             f"{self.hidden}")
        if self.pool not in ("mean", "grid"):
            raise ValueError(f"head.pool must be mean or grid, not {self.pool!r}")
        if self.reads_grid and (self.modality is None or self.grid < 1 or (self.dense and self.patch < 1)):
            raise ValueError("a dense or grid-pooled head needs the grid modality it reads, its grid and patch size")

    @property
    def dense(self) -> bool:
        return self.task.startswith("dense")

    @property
    def reads_grid(self) -> bool:
        """The head reads the grid modality's patch tokens (B, P, D), not a mean (B, D)."""
        return self.dense or self.pool == "grid"


@register_pretrained("fourm_head")
class TaskHead(nn.Module, PretrainedMixin):
    """Features -> predictions. Pooled: (B, D) -> (B, C) (regression: (B,)); dense: (B, P, D) -> (B, C, H, W)
    (dense regression: (B, H, W))."""

    config_class = HeadConfig

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        out = config.num_outputs * (config.patch ** 2 if config.dense else 1)
        flat = config.pool == "grid" and not config.dense
        features = config.dim * (config.grid ** 2 if flat else 1)
        self.norm = nn.LayerNorm(config.dim)  # probes train faster on standardised features
        self.hidden = nn.Sequential(nn.Linear(features, config.hidden), nn.GELU()) if config.hidden else nn.Identity()
        self.out = nn.Linear(config.hidden or features, out)

    def forward(self, x: Tensor) -> Tensor:
        c = self.config
        x = self.norm(x)
        if c.pool == "grid" and not c.dense:
            x = rearrange(x, "b p d -> b (p d)")
        y = self.out(self.hidden(x))
        if c.dense:
            y = rearrange(y, "b (h w) (c p1 p2) -> b c (h p1) (w p2)", h=c.grid, p1=c.patch, p2=c.patch)
        return y.squeeze(1) if c.task in ("regression", "dense_regression") else y

    # ------------------------------------------------------------------------------ loss, metrics
    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        task = self.config.task
        if task in ("classification", "dense_classification"):
            return F.cross_entropy(pred.float(), target)
        if task == "multilabel":
            return F.binary_cross_entropy_with_logits(pred.float(), target)
        if task == "regression":
            return F.mse_loss(pred.float(), target)
        known = target > 0  # dense regression (depth): 0 marks unknown pixels (the sky)
        return F.l1_loss(pred.float()[known], target[known]) if known.any() else pred.sum() * 0.0


def metrics(task: str, pred: Tensor, target: Tensor, num_outputs: int) -> dict[str, float]:
    """Held-out measures of every prediction at once (``pred`` as :class:`TaskHead` gives it)."""
    pred, target = pred.float().cpu(), target.cpu()
    if task == "classification":
        return {"loss": float(F.cross_entropy(pred, target)),
                "accuracy": float((pred.argmax(1) == target).float().mean())}
    if task == "multilabel":
        return {"bce": float(F.binary_cross_entropy_with_logits(pred, target)),
                "mAP": mean_average_precision(pred, target),
                "accuracy": float(((pred > 0).float() == target).float().mean())}
    if task == "regression":
        known = target != 0
        return {"mse": float(F.mse_loss(pred, target)), "mae": float((pred - target).abs().mean()),
                "abs_rel": float(((pred - target).abs()[known] / target[known].abs()).mean()) if known.any() else 0.0}
    if task == "dense_classification":
        labels = pred.argmax(1).numpy()
        return {"loss": float(F.cross_entropy(pred, target)), "mIoU": mean_iou(list(labels), list(target.numpy()),
                                                                                num_outputs),
                "pixel_accuracy": float((pred.argmax(1) == target).float().mean())}
    return depth_errors(list(pred.numpy()), list(target.numpy()))


def mean_average_precision(scores: Tensor, target: Tensor) -> float:
    """Mean over labels with at least one positive of the average precision (area under the
    precision-recall steps, as scikit-learn's ``average_precision_score``)."""
    aps = []
    for s, t in zip(scores.T.numpy(), target.T.numpy(), strict=True):
        if t.sum() == 0:
            continue
        order = np.argsort(-s, kind="stable")
        hits = t[order]
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(float((precision * hits).sum() / hits.sum()))
    return float(np.mean(aps)) if aps else 0.0
