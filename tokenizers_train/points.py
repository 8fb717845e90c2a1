"""Training of the point-cloud family (:mod:`fourm.tokenization.point_vqvae`, ``vqvae_point``).

``run`` reads the ``point_cloud`` series into memory (1024 x 7 floats a cloud: 28 kB, 28 MB per
thousand), trains through the shared loop into ``out/runs/<modality>`` and saves the tokenizer to
``out/<modality>``.

Held-out metrics of the round trip ``decode(encode(cloud))`` (:func:`evaluate_clouds`), in the
corpus' units: ``chamfer``, the symmetric Chamfer distance (mean distance to the nearest point of the
other cloud, both ways averaged; metres for the scenes); ``class_acc``, the share of labelled points
whose nearest rebuilt point has their class; ``colour_mae``, the mean absolute RGB error (0-255) at
that point; ``usage`` and ``perplexity`` of the shape codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from fourm.data.points import NO_CLASS, chamfer
from fourm.tokenization.point_vqvae import PointVQVAE, PointVQVAEConfig
from fourm.train.loop import TrainConfig, train
from tokenizers_train.data import TensorTask, load_series, tokenizer_dir
from tokenizers_train.family import check_config, code_stats


@dataclass
class Config:
    family: str = "vqvae_point"
    corpus: str | None = None
    modality: str = "tok_point_cloud"
    model: PointVQVAEConfig = field(default_factory=PointVQVAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    batch_size: int = 32
    eval_samples: int = 128  # the last clouds of the corpus
    limit: int | None = None  # read at most this many corpus samples

    def __post_init__(self):
        check_config(self, "vqvae_point", check_tokenizer=True)


@torch.no_grad()
def evaluate_clouds(model: PointVQVAE, x: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
    """Round-trip metrics of ``model`` on clouds ``x (B, N, 7)``; see the module docstring."""
    scores: dict[str, list] = {"chamfer": [], "hits": [], "labelled": [], "colour": []}
    ids = []
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size].to(model.centre.device)
        tokens = model.encode(batch)
        recon = torch.from_numpy(np.stack(model.decode(tokens))).to(batch.device)
        distance, _, nearest = chamfer(recon[..., :3], batch[..., :3])  # nearest rebuilt point of each true one
        matched = torch.take_along_dim(recon, nearest[..., None], dim=1)
        labelled = batch[..., 6] != NO_CLASS
        scores["chamfer"].append(distance)
        scores["hits"].append(((matched[..., 6] == batch[..., 6]) & labelled).sum())
        scores["labelled"].append(labelled.sum())
        scores["colour"].append((matched[..., 3:6] - batch[..., 3:6]).abs().mean((1, 2)))
        ids.append(model.split_ids(tokens)[1])
    labelled = int(sum(scores["labelled"]))
    return {"chamfer": float(torch.cat(scores["chamfer"]).mean()),
            "class_acc": float(sum(scores["hits"])) / labelled if labelled else float("nan"),
            "colour_mae": float(torch.cat(scores["colour"]).mean()),
            **code_stats(torch.cat(ids), model.config.codebook_size)}


class PointTask(TensorTask):
    """A :class:`fourm.train.loop.Task`: random batches of in-memory clouds, Chamfer + colour + class loss."""

    model_class = PointVQVAE
    score = staticmethod(evaluate_clouds)
    logged: ClassVar[dict[str, str]] = {"chamfer": "chamfer", "commit": "aux_loss"}


def load_clouds(cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) clouds ``(B, num_points, 7)`` of the corpus series ``cfg.model.source``."""
    if cfg.corpus is None:
        raise ValueError("no corpus given: set corpus (the CLI's --corpus) to a folder written by `fourm pseudolabel` "
                         "with series=[point_cloud] (scenes) or from the points:PATH source")
    train_values, eval_values, _ = load_series(cfg.corpus, cfg.model.source, cfg.eval_samples, cfg.limit)
    to_tensor = PointVQVAE(cfg.model).to_tensor  # resampling needs no weights: a throwaway model is cheap
    return to_tensor(train_values), to_tensor(eval_values)


def run(cfg: Config, out: Path, progress: bool = True) -> PointVQVAE:
    """Train ``cfg.model`` on ``cfg.corpus``; the run goes to ``out/runs/<modality>``, the tokenizer to
    :func:`tokenizer_dir`. Returns the trained tokenizer (eval mode)."""
    train_x, eval_x = load_clouds(cfg)
    run_dir = Path(out) / "runs" / cfg.model.modality
    run_dir.mkdir(parents=True, exist_ok=True)
    model = train(PointTask(cfg, train_x, eval_x), cfg.train, run_dir, progress=progress, record=cfg).eval()
    model.save_pretrained(tokenizer_dir(out, cfg.model.modality))
    return model
