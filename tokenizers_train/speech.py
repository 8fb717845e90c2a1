"""Training of the speech family (:mod:`fourm.tokenization.speech_vqvae`, ``vqvae_speech``): the corpus's
``speech`` clips as log-mel spectrograms through the time-series VQ-VAE.

The clips' spectrograms are computed once (librosa, :func:`fourm.data.audio.log_mel`) and training is the
series family's (:class:`tokenizers_train.series.SeriesTask`). Held-out metrics of the round trip
(:func:`evaluate_speech`): ``l1_db``, the mean absolute spectrogram error in dB, over all frames and, as
``l1_db_voiced``, over the frames where the clip has sound (padding is easy to rebuild and would flatter
the mean); then the series family's ``rmse`` / ``nrmse`` (per mel bin) and ``usage`` / ``perplexity``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from fourm.tokenization.speech_vqvae import VOICED_DB, SpeechVQVAE, SpeechVQVAEConfig
from fourm.train.loop import TrainConfig, train
from tokenizers_train.data import load_series, tokenizer_dir
from tokenizers_train.family import check_config
from tokenizers_train.series import SeriesTask, evaluate_signals


@dataclass
class Config:
    family: str = "vqvae_speech"
    corpus: str | None = None
    modality: str = "tok_speech"
    model: SpeechVQVAEConfig = field(default_factory=SpeechVQVAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    batch_size: int = 32
    eval_samples: int = 64
    limit: int | None = None

    def __post_init__(self):
        check_config(self, "vqvae_speech", check_tokenizer=True)


@torch.no_grad()
def evaluate_speech(model: SpeechVQVAE, x: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
    """Round-trip metrics of ``model`` on log-mel spectrograms ``x (B, T, n_mels)``; see the module docstring."""
    x = x.float()
    ids = torch.cat([model.encode(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    recon = torch.cat([model.decode_spectrograms(ids[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    error = (recon.cpu() - x).abs()  # (B, T, n_mels)
    voiced = x.amax(-1) > model.config.mel.floor_db + VOICED_DB  # (B, T)
    scores = {"l1_db": float(error.mean()),
              "l1_db_voiced": float(error[voiced].mean()) if voiced.any() else float("nan")}
    return {**scores, **evaluate_signals(model, x, batch_size)}


class SpeechTask(SeriesTask):
    model_class = SpeechVQVAE
    score = staticmethod(evaluate_speech)


def run(cfg: Config, out: Path, progress: bool = True) -> SpeechVQVAE:
    """Train ``cfg.model`` on ``cfg.corpus``'s speech; the run goes to ``out/runs/<modality>``, the
    tokenizer to :func:`tokenizer_dir`. Returns the trained tokenizer (eval mode)."""
    if cfg.corpus is None:
        raise ValueError("no corpus given: set corpus (the CLI's --corpus) to a folder written by `fourm pseudolabel` "
                         "with series=[speech] (scenes) or from the audio:PATH source")
    train_values, eval_values, _ = load_series(cfg.corpus, cfg.model.source, cfg.eval_samples, cfg.limit)
    to_tensor = SpeechVQVAE(cfg.model).to_tensor
    train_x, eval_x = to_tensor(train_values), to_tensor(eval_values)
    run_dir = Path(out) / "runs" / cfg.model.modality
    run_dir.mkdir(parents=True, exist_ok=True)
    model = train(SpeechTask(cfg, train_x, eval_x), cfg.train, run_dir, progress=progress, record=cfg).eval()
    model.save_pretrained(tokenizer_dir(out, cfg.model.modality))
    return model
