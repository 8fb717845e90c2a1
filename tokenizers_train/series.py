"""Training of the time-series family (:mod:`fourm.tokenization.series_vqvae`, ``vqvae_series``): IMU
signals, or any ``(T, C)`` series a corpus holds.

Held-out metrics of the round trip ``decode(encode(x))`` (:func:`evaluate_signals`): ``rmse`` per
channel in signal units (``rmse_acc`` / ``rmse_gyro``: the mean over an IMU's accelerometer and
gyroscope channels, m/s^2 and rad/s), ``nrmse``, the RMSE over each channel's deviation on the held-out
set, averaged (0 is exact, 1 is as good as the mean signal), and ``usage``/``perplexity`` of the codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from fourm.tokenization.series_vqvae import SeriesVQVAE, SeriesVQVAEConfig
from fourm.train.loop import TrainConfig, train
from tokenizers_train.data import TensorTask, load_series, tokenizer_dir
from tokenizers_train.family import check_config, code_stats


@dataclass
class Config:
    family: str = "vqvae_series"
    corpus: str | None = None
    modality: str = "tok_imu"
    model: SeriesVQVAEConfig = field(default_factory=SeriesVQVAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    batch_size: int = 64
    eval_samples: int = 128
    limit: int | None = None

    def __post_init__(self):
        check_config(self, "vqvae_series", check_tokenizer=True)


@torch.no_grad()
def evaluate_signals(model: SeriesVQVAE, x: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
    """Round-trip metrics of ``model`` on signals ``x (B, T, C)``; see the module docstring."""
    x = x.float()
    ids = torch.cat([model.encode(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    recon = torch.cat([model.decode_signals(ids[i:i + batch_size]) for i in range(0, len(x), batch_size)]).cpu()
    rmse = (recon - x).square().mean((0, 1)).sqrt()  # (C,)
    spread = x.reshape(-1, x.shape[-1]).std(0, unbiased=False).clamp_min(1e-8)
    scores = {"rmse": float(rmse.mean()), "nrmse": float((rmse / spread).mean())}
    if x.shape[-1] == 6:  # an IMU: the two sensors apart, each in its units
        scores.update(rmse_acc=float(rmse[:3].mean()), rmse_gyro=float(rmse[3:].mean()))
    return {**scores, **code_stats(ids, model.vocab_size)}


class SeriesTask(TensorTask):
    """A :class:`fourm.train.loop.Task`: random batches of in-memory signals, standardised MSE."""

    model_class = SeriesVQVAE
    score = staticmethod(evaluate_signals)


def run(cfg: Config, out: Path, progress: bool = True) -> SeriesVQVAE:
    """Train ``cfg.model`` on ``cfg.corpus``; the run goes to ``out/runs/<modality>``, the tokenizer to
    :func:`tokenizer_dir`. Returns the trained tokenizer (eval mode)."""
    if cfg.corpus is None:
        raise ValueError("no corpus given: set corpus (the CLI's --corpus) to a folder written by `fourm pseudolabel` "
                         "with series=[imu]")
    train_values, eval_values, _ = load_series(cfg.corpus, cfg.model.source, cfg.eval_samples, cfg.limit)
    to_tensor = SeriesVQVAE(cfg.model).to_tensor
    train_x, eval_x = to_tensor(train_values), to_tensor(eval_values)
    run_dir = Path(out) / "runs" / cfg.model.modality
    run_dir.mkdir(parents=True, exist_ok=True)
    model = train(SeriesTask(cfg, train_x, eval_x), cfg.train, run_dir, progress=progress, record=cfg).eval()
    model.save_pretrained(tokenizer_dir(out, cfg.model.modality))
    return model
