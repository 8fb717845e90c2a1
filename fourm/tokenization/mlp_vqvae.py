"""MLP VQ-VAE over one vector: global embeddings (DINOv2 / ImageBind / caption) and one person's pose.

4M-21 (arXiv 2406.09406) tokenizes each global embedding into 16 tokens of an
8192-code MLP VQ-VAE trained with a cosine loss, and each person of ``human_poses`` into a box plus
8 codes of an MLP VQ-VAE over the body pose. Both are this class: a residual MLP encoder (pre-norm
blocks, Scaling MLPs arXiv 2306.13575 as in the reference) maps the vector to ``num_tokens`` latents,
each latent is quantized with ONE codebook shared by all token positions (the reference's
"multi-head codebook", here as a token axis so that VQ and FSQ see the same ``(B, N, d)`` shape), and
a mirrored MLP decodes the vector.

Quantizers (vector-quantize-pytorch):

* ``vq`` -- EMA codebook (``decay``), optionally cosine-similarity codes (l2-normalised,
  ``use_cosine_sim``), k-means init and dead-code replacement (``threshold_ema_dead_code``).
* ``fsq`` -- Finite Scalar Quantization (Mentzer et al., arXiv 2309.15505): no codebook, no collapse;
  ``levels=[8, 5, 5, 5]`` is a 1000-code vocabulary.

Input normalisation lives here, so ``encode`` takes values as the corpus stores them:

* global embeddings: float16 ``(C,)`` vectors. They are l2-normalised (what retrieval compares is
  direction), centred and scaled per dimension with statistics of the training set
  (:meth:`VectorVQVAE.fit_normalization`, kept as buffers in the weights); ``decode`` returns unit
  float16 ``(C,)`` vectors. Loss: ``1 - cos``.
* poses: a list of people ``{"box", "keypoints": [[x, y, visibility] x 33]}`` (one person per row);
  the keypoints are made relative to the box (a 99-d vector), ``decode`` returns box-relative keypoint
  lists, or absolute ones given the boxes; the pose <-> vector functions live with the other pose code
  (:func:`~fourm.tokenization.coders.pose_to_vector`, :func:`~fourm.tokenization.coders.vector_to_keypoints`).
  Loss: MSE or smooth-L1 on the box-relative vector.

Shapes: ``B`` batch, ``C`` input dim, ``N`` tokens per vector, ``d`` codebook dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from fourm.pretrained import PretrainedMixin, register_pretrained
from fourm.tokenization.base import FactsFromConfig, vector_quantizer
from fourm.tokenization.coders import NUM_KEYPOINTS, POSE_DIM, pose_to_vector, vector_to_keypoints

POSE_SOURCES = ("human_poses",)
QUANTIZERS, LOSSES = ("vq", "fsq"), ("cosine", "mse", "smooth_l1")


# ----------------------------------------------------------------------------- model
@dataclass
class VectorVQVAEConfig:
    """One vector -> ``num_tokens`` ids in ``[0, vocab_size)``.

    Args:
        modality: key the tokenizer serves (``tok_caption_global``...; ``pose_vqvae`` for poses).
        source: corpus series it reads (``caption_global``, ``human_poses``...).
        input_dim: C, the vector width (384 MiniLM, 768 DINOv2-B, 99 for a pose).
        num_tokens: N, tokens per vector (reference: 16 for globals, 8 for a pose).
        dim, depth, mlp_ratio: width, residual blocks per side, hidden expansion of the MLPs.
        quantizer: ``vq`` or ``fsq``.
        codebook_size, codebook_dim: ``vq`` vocabulary and code width (``fsq``: ``prod(levels)``, ``len(levels)``).
        use_cosine_sim, decay, threshold_ema_dead_code, use_kmeans_init, commitment_weight: ``vq`` settings
            (VQP's ``VectorQuantize`` arguments; ``use_kmeans_init`` is its ``kmeans_init``).
        levels: ``fsq`` levels per code dimension.
        loss: ``cosine`` (embeddings), ``mse`` or ``smooth_l1`` (poses).
    """

    RENAMED_KEYS: ClassVar[dict[str, str]] = {"kmeans_init": "use_kmeans_init"}  # config.json of older versions

    modality: str = "tok_caption_global"
    source: str = "caption_global"
    input_dim: int = 384
    num_tokens: int = 8
    dim: int = 512
    depth: int = 2
    mlp_ratio: int = 4
    quantizer: str = "vq"
    codebook_size: int = 1024
    codebook_dim: int = 32
    use_cosine_sim: bool = True
    decay: float = 0.99
    threshold_ema_dead_code: float = 2.0
    use_kmeans_init: bool = True
    commitment_weight: float = 1.0
    levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    loss: str = "cosine"

    def __post_init__(self):
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, not {self.quantizer!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, not {self.loss!r}")
        if self.is_pose and self.input_dim != POSE_DIM:
            raise ValueError(f"a pose vector has {POSE_DIM} values (33 keypoints x 3), not input_dim={self.input_dim}")
        if self.is_pose and self.loss == "cosine":
            raise ValueError("poses are coordinates, not directions: use loss mse or smooth_l1")
        if min(self.input_dim, self.num_tokens, self.dim, self.codebook_size, self.codebook_dim) < 1 or self.depth < 0:
            raise ValueError("input_dim, num_tokens, dim, codebook_size and codebook_dim must be >= 1, depth >= 0")
        if self.quantizer == "fsq" and (not self.levels or min(self.levels) < 2):
            raise ValueError(f"fsq levels must be a non-empty list of integers >= 2, got {self.levels}")

    @property
    def is_pose(self) -> bool:
        return self.source in POSE_SOURCES

    @property
    def vocab_size(self) -> int:
        return math.prod(self.levels) if self.quantizer == "fsq" else self.codebook_size

    @property
    def latent_dim(self) -> int:
        return len(self.levels) if self.quantizer == "fsq" else self.codebook_dim


def values_to_vectors(values: Any, config: VectorVQVAEConfig) -> torch.Tensor:
    """Corpus values -> float32 (B, C): ``(C,)`` vectors (a list, or one (B, C) array), or a list of people."""
    c = config
    if c.is_pose and isinstance(values, (list, tuple)) and all(isinstance(v, dict) for v in values):
        vecs = np.stack([pose_to_vector(p) for p in values]) if values else np.zeros((0, c.input_dim))
    elif isinstance(values, torch.Tensor):
        vecs = values.detach().float().cpu().numpy()
    elif isinstance(values, (list, tuple)):
        if values and any(np.ndim(v) != 1 for v in values):
            raise ValueError(f"{c.modality}: expected one ({c.input_dim},) vector per sample, got shapes "
                             f"{sorted({np.shape(v) for v in values})}"
                             + (" (poses: a list of person dicts, one per row)" if c.is_pose else ""))
        vecs = np.stack([np.asarray(v, dtype=np.float32) for v in values]) if values else np.zeros((0, c.input_dim))
    else:
        vecs = np.asarray(values, dtype=np.float32)
    if vecs.ndim != 2 or vecs.shape[1] != c.input_dim:
        raise ValueError(f"{c.modality}: expected vectors of dim {c.input_dim} ({c.source}), got shape {vecs.shape}")
    if not np.isfinite(vecs).all():
        raise ValueError(f"{c.modality}: input holds NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(vecs, dtype=np.float32))


class VQOutput(NamedTuple):
    recon: torch.Tensor  # (B, C) reconstruction in vector units (unit vectors for the cosine loss)
    ids: torch.Tensor  # (B, N) long
    quantized: torch.Tensor  # (B, N, d) quantized latents, what embed_ids(ids) gives back
    loss: torch.Tensor  # reconstruction + commitment
    recon_loss: torch.Tensor
    aux_loss: torch.Tensor  # commitment (vq) or 0 (fsq)


class ResidualBlock(nn.Module):
    """Pre-norm residual MLP block: ``x + W2 gelu(W1 norm(x))``."""

    def __init__(self, dim: int, mlp_ratio: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * mlp_ratio)
        self.fc2 = nn.Linear(dim * mlp_ratio, dim)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


def _mlp(dim_in: int, dim: int, dim_out: int, depth: int, mlp_ratio: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim), *[ResidualBlock(dim, mlp_ratio) for _ in range(depth)],
                         nn.LayerNorm(dim), nn.Linear(dim, dim_out))


@register_pretrained("vqvae_mlp")
class VectorVQVAE(FactsFromConfig, nn.Module, PretrainedMixin):
    """MLP VQ-VAE tokenizer of one vector per sample (a :class:`~fourm.tokenization.base.ModalityTokenizer`).

    ``encode(values) -> LongTensor (B, N)``; ``decode(ids) -> list`` of values in corpus units. The
    tensor path is ``forward(x (B, C)) -> VQOutput`` with ``x`` a batch of raw vectors (what
    :meth:`to_vectors` makes of corpus values).
    """

    config_class = VectorVQVAEConfig

    def __init__(self, config: VectorVQVAEConfig):
        super().__init__()
        self.config = c = config
        self.encoder = _mlp(c.input_dim, c.dim, c.num_tokens * c.latent_dim, c.depth, c.mlp_ratio)
        self.decoder = _mlp(c.num_tokens * c.latent_dim, c.dim, c.input_dim, c.depth, c.mlp_ratio)
        if c.quantizer == "vq":
            self.quantizer = vector_quantizer(c)
        else:
            from vector_quantize_pytorch import FSQ

            self.quantizer = FSQ(levels=list(c.levels))
        # per-dimension standardisation of the (l2-normalised) input; set by fit_normalization
        self.register_buffer("shift", torch.zeros(c.input_dim))
        self.register_buffer("scale", torch.ones(c.input_dim))

    # ------------------------------------------------------------------ values <-> raw vectors
    def to_vectors(self, values: Any) -> torch.Tensor:
        """Corpus values (a list of ``(C,)`` arrays, a ``(B, C)`` array, or a list of people) -> float32 (B, C)."""
        return values_to_vectors(values, self.config)

    def from_vectors(self, x: torch.Tensor, boxes: list | None = None) -> list:
        """Raw vectors (B, C) -> corpus values: float16 unit vectors, or keypoint lists for poses."""
        x = x.detach().float().cpu().numpy()
        if not self.config.is_pose:
            return list(x.astype(np.float16))
        x = x.reshape(-1, NUM_KEYPOINTS, 3)
        x[..., 2] = np.clip(x[..., 2], 0.0, 1.0)  # visibility is a probability
        if boxes is None:
            return [[[float(a), float(b), float(v)] for a, b, v in person] for person in x]
        if len(boxes) != len(x):
            raise ValueError(f"{len(boxes)} boxes for {len(x)} people")
        return [vector_to_keypoints(vec, box) for vec, box in zip(x, boxes, strict=True)]

    def to_targets(self, x: torch.Tensor) -> torch.Tensor:
        """Raw vectors -> the target space of the loss (unit vectors for the cosine loss)."""
        x = x.float()
        return F.normalize(x, dim=-1) if self.config.loss == "cosine" else x

    @torch.no_grad()
    def fit_normalization(self, x: torch.Tensor) -> None:
        """Set the input standardisation from training vectors (B, C); call before training."""
        x = self.to_targets(x.to(self.shift.device))
        std = x.std(0, unbiased=False)
        # constant dimensions (a visibility always 1) would divide by ~0: floor at a share of the mean spread
        self.shift.copy_(x.mean(0))
        self.scale.copy_(std.clamp_min(0.05 * float(std.mean()) + 1e-8))

    # ------------------------------------------------------------------ tensor path
    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Raw vectors (B, C) -> continuous latents (B, N, d) before quantization."""
        z = (self.to_targets(x) - self.shift) / self.scale
        return rearrange(self.encoder(z), "b (n d) -> b n d", n=self.config.num_tokens)

    def quantize(self, latents: torch.Tensor, update: bool = True):
        """(B, N, d) latents -> (quantized (B, N, d), ids (B, N), aux loss). ``update=False`` freezes the codebook."""
        # distances in fp32 whatever the autocast: bf16 rounds close codes together
        with torch.autocast(latents.device.type, enabled=False):
            latents = latents.float()
            if self.config.quantizer == "vq":
                quantized, ids, aux = self.quantizer(latents, freeze_codebook=not update)
            else:
                quantized, ids = self.quantizer(latents)
                aux = latents.new_zeros(())
        return quantized, ids.long(), aux

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids (B, N) -> the quantized latents (B, N, d) they stand for."""
        ids = torch.as_tensor(ids, device=self.shift.device).long()
        self._check_ids(ids)
        if self.config.quantizer == "vq":
            return self.quantizer.get_output_from_indices(ids).float()
        return self.quantizer.indices_to_codes(ids).float()

    def decode_latents(self, quantized: torch.Tensor) -> torch.Tensor:
        """Quantized latents (B, N, d) -> reconstructed raw vectors (B, C)."""
        y = self.decoder(rearrange(quantized, "b n d -> b (n d)").to(self.shift.dtype))
        y = y.float() * self.scale + self.shift
        return F.normalize(y, dim=-1) if self.config.loss == "cosine" else y

    def reconstruction_loss(self, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        target = self.to_targets(x)
        loss = self.config.loss
        if loss == "cosine":
            return (1 - (recon * target).sum(-1)).mean()  # both unit vectors
        return F.mse_loss(recon, target) if loss == "mse" else F.smooth_l1_loss(recon, target, beta=0.05)

    def forward(self, x: torch.Tensor) -> VQOutput:
        """Raw vectors (B, C) -> reconstruction, ids, quantized latents and losses."""
        self._check_dim(x)
        quantized, ids, aux = self.quantize(self.encode_latents(x))
        recon = self.decode_latents(quantized)
        recon_loss = self.reconstruction_loss(recon, x)
        return VQOutput(recon, ids, quantized, recon_loss + aux, recon_loss, aux)

    # ------------------------------------------------------------------ tokenizer interface
    @torch.no_grad()
    def encode(self, values: Any) -> torch.Tensor:
        """Corpus values -> ids, LongTensor (B, N)."""
        x = values if isinstance(values, torch.Tensor) and values.dtype.is_floating_point else self.to_vectors(values)
        self._check_dim(x)
        if len(x) == 0:
            return torch.zeros(0, self.config.num_tokens, dtype=torch.long)
        _, ids, _ = self.quantize(self.encode_latents(x.to(self.shift.device)), update=False)
        return ids

    @torch.no_grad()
    def decode_vectors(self, ids) -> torch.Tensor:
        """Ids (B, N) -> raw vectors float32 (B, C) (unit vectors for embeddings)."""
        return self.decode_latents(self.embed_ids(ids))

    @torch.no_grad()
    def decode(self, ids, boxes: list | None = None) -> list:
        """Ids (B, N) -> corpus values: float16 ``(C,)`` unit vectors, or per person ``[[x, y, v] x 33]``,
        box-relative unless the people's ``boxes`` are given."""
        return self.from_vectors(self.decode_vectors(ids), boxes)

    # ------------------------------------------------------------------ checks
    def _check_dim(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.config.input_dim:
            raise ValueError(f"{self.config.modality}: expected (B, {self.config.input_dim}) vectors, "
                             f"got {tuple(x.shape)}")

    def _check_ids(self, ids: torch.Tensor) -> None:
        if ids.ndim != 2 or ids.shape[1] != self.config.num_tokens:
            raise ValueError(f"{self.config.modality}: expected ids (B, {self.config.num_tokens}), "
                             f"got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"{self.config.modality}: ids must lie in [0, {self.vocab_size}), "
                             f"got [{int(ids.min())}, {int(ids.max())}]")
