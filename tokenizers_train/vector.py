"""Training of the MLP VQ-VAE family (:mod:`fourm.tokenization.mlp_vqvae`): global embeddings and poses.

``run`` reads one corpus series into memory (a few thousand vectors), trains through the shared loop
into ``out/runs/<modality>`` and saves the tokenizer to ``out/<modality>``. A tokenizer that is not
itself a model modality (the pose VQ-VAE, a part of the ``human_poses`` serializer) goes to
``out/parts/<key>``, so that ``load_tokenizers(out)`` only ever meets model modalities.

Held-out metrics (:func:`evaluate_vectors`):

* embeddings: ``cos``, the mean cosine of reconstruction and original; ``recall@1``, the share of
  held-out vectors whose reconstruction's nearest original (cosine) is itself -- what retrieval
  through a predicted global embedding can at best achieve over a gallery of that size;
* poses: ``kp_err`` (``kp_err_visible``), the mean distance of keypoints in box units (keypoints
  with visibility >= 0.5), and ``vis_mae``;
* both: ``usage``, the share of the vocabulary used on the held-out set, and ``perplexity``, the
  exponentiated entropy of the code histogram (``vocab_size`` at best).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fourm.tokenization.coders import NUM_KEYPOINTS
from fourm.tokenization.mlp_vqvae import VectorVQVAE, VectorVQVAEConfig, values_to_vectors
from fourm.train.loop import TrainConfig, train
from tokenizers_train.data import TensorTask, load_series, tokenizer_dir
from tokenizers_train.family import check_config, code_stats


@dataclass
class Config:
    family: str = "vqvae_mlp"
    corpus: str | None = None
    modality: str = "tok_caption_global"  # model modality (its source comes from the registry), or pose_vqvae
    model: VectorVQVAEConfig = field(default_factory=VectorVQVAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    batch_size: int = 256
    eval_samples: int = 200  # held out: the last samples (embeddings) or people (poses) of the corpus
    limit: int | None = None  # read at most this many corpus samples

    def __post_init__(self):
        check_config(self, "vqvae_mlp", check_tokenizer=True)


# ----------------------------------------------------------------------------- metrics
def recall_at_1(recon: torch.Tensor, originals: torch.Tensor, gallery: torch.Tensor | None = None) -> float:
    """Share of rows whose reconstruction's most cosine-similar vector in ``gallery`` (default: the
    originals) is that row's original.

    Identical vectors (the same caption twice) count as a hit whichever of them is found.
    """
    normalize = torch.nn.functional.normalize
    u = normalize(originals.float(), dim=-1)
    g = u if gallery is None else normalize(gallery.float(), dim=-1)
    nearest = (normalize(recon.float(), dim=-1) @ g.T).argmax(-1)
    return float((g[nearest] == u).all(-1).float().mean())


@torch.no_grad()
def evaluate_vectors(model: VectorVQVAE, x: torch.Tensor, batch_size: int = 1024) -> dict[str, float]:
    """Held-out metrics of ``model`` on raw vectors ``x`` (B, C); see the module docstring."""
    outs = [model(x[i:i + batch_size].to(model.shift.device)) for i in range(0, len(x), batch_size)]
    recon = torch.cat([o.recon.float() for o in outs]).cpu()
    ids = torch.cat([o.ids for o in outs])
    target = model.to_targets(x.float())
    scores = {"recon_loss": float(model.reconstruction_loss(recon, x))}
    if model.config.is_pose:
        rec, ref = recon.reshape(-1, NUM_KEYPOINTS, 3), target.reshape(-1, NUM_KEYPOINTS, 3)
        dist = (rec[..., :2] - ref[..., :2]).norm(dim=-1)
        visible = ref[..., 2] >= 0.5
        scores.update(kp_err=float(dist.mean()),
                      kp_err_visible=float(dist[visible].mean()) if visible.any() else float("nan"),
                      vis_mae=float((rec[..., 2].clamp(0, 1) - ref[..., 2]).abs().mean()))
    else:
        scores.update({"cos": float((recon * target).sum(-1).mean()), "recall@1": recall_at_1(recon, x)})
    return {**scores, **code_stats(ids, model.vocab_size)}


# ----------------------------------------------------------------------------- task
class VectorTask(TensorTask):
    """A :class:`fourm.train.loop.Task`: random batches of in-memory vectors, VQ-VAE loss, held-out metrics."""

    model_class = VectorVQVAE
    score = staticmethod(evaluate_vectors)


# ----------------------------------------------------------------------------- data
def load_vectors(cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) raw vectors of the corpus series ``cfg.model.source``."""
    m = cfg.model
    if cfg.corpus is None:
        raise ValueError("no corpus given: set corpus (the CLI's --corpus) to a folder written by `fourm pseudolabel`")
    if not m.is_pose:
        train_values, eval_values, _ = load_series(cfg.corpus, m.source, cfg.eval_samples, cfg.limit)
        return values_to_vectors(train_values, m), values_to_vectors(eval_values, m)
    samples, _, _ = load_series(cfg.corpus, m.source, 0, cfg.limit)
    people = [person for sample in samples for person in sample]
    if not people:
        raise ValueError(
            f"{cfg.corpus}: no people in {m.source} ({len(samples)} samples, every list empty). The pose "
            "tokenizer trains on photos labelled with the human_poses labeller (mediapipe, pip install "
            "'fourm[pose]'); the built-in scenes have no people.")
    held_out = min(cfg.eval_samples, len(people) // 5)
    if held_out < 1:
        raise ValueError(f"{cfg.corpus}: only {len(people)} people in {m.source}, too few to train a pose tokenizer")
    x = values_to_vectors(people, m)
    return x[:-held_out], x[-held_out:]


def run(cfg: Config, out: Path, progress: bool = True) -> VectorVQVAE:
    """Train ``cfg.model`` on ``cfg.corpus``; the run goes to ``out/runs/<modality>``, the tokenizer to
    :func:`tokenizer_dir`. Returns the trained tokenizer (eval mode)."""
    train_x, eval_x = load_vectors(cfg)
    run_dir = Path(out) / "runs" / cfg.model.modality
    run_dir.mkdir(parents=True, exist_ok=True)
    model = train(VectorTask(cfg, train_x, eval_x), cfg.train, run_dir, progress=progress, record=cfg).eval()
    model.save_pretrained(tokenizer_dir(out, cfg.model.modality))
    return model


# ----------------------------------------------------------------------------- synthetic people
# A stick figure in BlazePose order: (parent, canonical direction in degrees (0 = right, 90 = down),
# length in body heights); limbs are turned by random angles around the canonical standing pose.
_LIMBS = {
    "l_elbow": ("l_shoulder", 80, 0.15), "l_wrist": ("l_elbow", 85, 0.14),
    "r_elbow": ("r_shoulder", 100, 0.15), "r_wrist": ("r_elbow", 95, 0.14),
    "l_knee": ("l_hip", 92, 0.23), "l_ankle": ("l_knee", 90, 0.22),
    "r_knee": ("r_hip", 88, 0.23), "r_ankle": ("r_knee", 90, 0.22),
}
_SPREAD = {"elbow": 70.0, "wrist": 50.0, "knee": 25.0, "ankle": 20.0}  # degrees, std of the random turn


def _stick_figure(rng: np.random.Generator) -> np.ndarray:
    """(33, 2) keypoints of one random pose, about one unit tall, y down."""
    lean, tilt = np.radians(rng.normal(0, 8)), np.radians(rng.normal(0, 10))
    up = np.array([np.sin(lean), -np.cos(lean)])  # hip -> shoulder direction
    side = np.array([-up[1], up[0]])  # to the image's right: the person's left, facing the camera
    j = {"hip": np.zeros(2)}
    j["l_hip"], j["r_hip"] = j["hip"] + 0.06 * side, j["hip"] - 0.06 * side
    j["neck"] = j["hip"] + 0.3 * up
    j["l_shoulder"], j["r_shoulder"] = j["neck"] + 0.1 * side, j["neck"] - 0.1 * side
    for name, (parent, angle, length) in _LIMBS.items():
        a = np.radians(angle + rng.normal(0, _SPREAD[name[2:]])) + lean
        j[name] = j[parent] + length * np.array([np.cos(a), np.sin(a)])
    head_up = np.array([np.sin(lean + tilt), -np.cos(lean + tilt)])
    head_side = np.array([-head_up[1], head_up[0]])
    nose = j["neck"] + 0.11 * head_up

    def face(dx, dy):
        return nose + dx * head_side - dy * head_up

    def hand(s, dx):
        return j[f"{s}_wrist"] + 0.04 * (j[f"{s}_wrist"] - j[f"{s}_elbow"]) / 0.14 + dx * side

    def foot(s, dx, dy):
        return j[f"{s}_ankle"] + np.array([dx, dy])

    return np.array([
        nose, face(0.012, 0.015), face(0.02, 0.016), face(0.028, 0.015),  # 0 nose, 1-3 left eye
        face(-0.012, 0.015), face(-0.02, 0.016), face(-0.028, 0.015),  # 4-6 right eye
        face(0.045, 0.005), face(-0.045, 0.005), face(0.015, -0.03), face(-0.015, -0.03),  # ears, mouth
        j["l_shoulder"], j["r_shoulder"], j["l_elbow"], j["r_elbow"], j["l_wrist"], j["r_wrist"],
        hand("l", 0.015), hand("r", -0.015), hand("l", 0.0), hand("r", 0.0),  # 17-20 pinky, index
        hand("l", -0.02), hand("r", 0.02),  # 21-22 thumb
        j["l_hip"], j["r_hip"], j["l_knee"], j["r_knee"], j["l_ankle"], j["r_ankle"],
        foot("l", -0.01, 0.02), foot("r", 0.01, 0.02), foot("l", 0.04, 0.03), foot("r", -0.04, 0.03),
    ])


def synthetic_people(n: int, seed: int = 0, occlusion: float = 0.1) -> list[dict]:
    """``n`` random people ``{"box", "keypoints"}`` as the ``human_poses`` labeller writes them (tests, smoke runs).

    A stick figure faces the camera, leans and turns the head a little and swings arms and legs
    around a standing pose; it is scaled and placed at random in the image. A share ``occlusion`` of
    keypoints gets a low visibility; the box is the extent of the visible ones.
    """
    rng = np.random.default_rng(seed)
    people = []
    for _ in range(n):
        points = _stick_figure(rng)
        height = rng.uniform(0.3, 0.9)
        centre = rng.uniform(0.5 - (1 - height) / 2, 0.5 + (1 - height) / 2, size=2)
        xy = np.clip((points - points.mean(0)) * height + centre, 0.0, 1.0)
        vis = np.where(rng.random(NUM_KEYPOINTS) < occlusion, rng.uniform(0, 0.3, NUM_KEYPOINTS),
                       rng.uniform(0.8, 1.0, NUM_KEYPOINTS))
        seen = xy[vis >= 0.5] if (vis >= 0.5).any() else xy
        box = [*seen.min(0), *seen.max(0)]
        people.append({"box": [round(float(v), 4) for v in box],
                       "keypoints": [[round(float(x), 4), round(float(y), 4), round(float(v), 3)]
                                     for (x, y), v in zip(xy, vis, strict=True)]})
    return people


def fit_tokenizer(cfg: Config, train_x: torch.Tensor, eval_x: torch.Tensor, out: Path,
                  progress: bool = False) -> tuple[VectorVQVAE, dict[str, float]]:
    """Train on given vectors (no corpus) into ``out``; return the model and its held-out metrics."""
    task = VectorTask(cfg, train_x, eval_x)
    model = train(task, cfg.train, out, progress=progress).eval()
    return model, evaluate_vectors(model, eval_x)
