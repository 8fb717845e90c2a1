"""Point-cloud tokenizer in the style of Point-BERT (Yu et al. 2022, arXiv 2111.14819): farthest-point
centres, k-NN groups, a mini-PointNet per group, one VQ code per group, and a decoder that rebuilds the
group's points (Chamfer loss), with their colours and classes.

Point-BERT's tokens carry no position: its centres travel beside them as continuous inputs. A FourM
target must be all tokens, so here each group is two: the coarse cell of its centre on a
``grid_size^3`` grid, and its shape code, which encodes the group's points *relative to that cell's
centre* (so the code also carries where in the cell the group lies). Groups are ordered by cell, in
raster order (ties keep the farthest-point order), which makes the sequence a deterministic function
of the cloud. One vocabulary holds both: codes ``[0, codebook_size)``, cells after them.

Input normalisation lives here, so ``encode`` takes clouds as the corpus stores them (``float32
(N, 7)``: xyz, rgb 0-255, class; see :mod:`fourm.data.points`): one centre and one isotropic scale,
fitted on the training clouds (:meth:`PointVQVAE.fit_normalization`, buffers in the weights), map
them into the cell grid's cube ``[-1, 1]^3``; ``decode`` gives clouds back in the same units.

Shapes: ``B`` clouds, ``N`` points, ``G`` groups, ``k`` points per group, ``d`` code width, ``F``
per-point outputs (xyz, rgb, class logits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from fourm.data.points import (
    NO_CLASS,
    chamfer,
    check_points,
    farthest_point_sample,
    gather,
    knn,
    resample,
)
from fourm.pretrained import PretrainedMixin, register_pretrained
from fourm.tokenization.base import FactsFromConfig, vector_quantizer


@dataclass
class PointVQVAEConfig:
    """A cloud -> ``2 * num_groups`` ids in ``[0, vocab_size)``.

    Args:
        modality, source: the model modality and corpus series (``tok_point_cloud``, ``point_cloud``).
        num_points: N, points per cloud (inputs are resampled to it; decode gives this many).
        num_groups, group_size: G centres and the k nearest points of each (Point-BERT: 64 x 32 for 1024).
        grid_size: cells per axis of the centre grid (vocabulary: ``grid_size ** 3`` cells).
        num_classes: class ids ``[0, num_classes)`` (the scenes' 6); -1 marks an unlabelled point.
        dim: width of the PointNet and of the decoder.
        codebook_size, codebook_dim, use_cosine_sim, decay, threshold_ema_dead_code, use_kmeans_init,
            commitment_weight: VQP's ``VectorQuantize`` settings (as in the other VQ tokenizers).
        colour_weight, class_weight: weights of the colour (L1) and class (cross-entropy) losses
            beside the Chamfer distance.
    """

    modality: str = "tok_point_cloud"
    source: str = "point_cloud"
    num_points: int = 1024
    num_groups: int = 64
    group_size: int = 32
    grid_size: int = 8
    num_classes: int = 6
    dim: int = 128
    codebook_size: int = 512
    codebook_dim: int = 32
    use_cosine_sim: bool = True
    decay: float = 0.99
    threshold_ema_dead_code: float = 2.0
    use_kmeans_init: bool = True
    commitment_weight: float = 0.25
    colour_weight: float = 1.0
    class_weight: float = 1.0

    def __post_init__(self):
        counts = (self.num_points, self.num_groups, self.group_size, self.grid_size, self.num_classes, self.dim,
                  self.codebook_size, self.codebook_dim)
        if min(counts) < 1:
            raise ValueError("num_points, num_groups, group_size, grid_size, num_classes, dim, codebook_size and "
                             "codebook_dim must be >= 1")
        if max(self.num_groups, self.group_size) > self.num_points:
            raise ValueError(f"num_groups {self.num_groups} and group_size {self.group_size} must not exceed "
                             f"num_points {self.num_points}")

    @property
    def num_cells(self) -> int:
        return self.grid_size**3

    @property
    def vocab_size(self) -> int:
        return self.codebook_size + self.num_cells

    @property
    def num_tokens(self) -> int:
        return 2 * self.num_groups


class PointVQOutput(NamedTuple):
    recon: torch.Tensor  # (B, G, k, F) per group: xyz relative to its cell in cell units, rgb in [-1, 1], class logits
    target: torch.Tensor  # (B, G, k, 7) per group: the same units, class ids
    ids: torch.Tensor  # (B, 2G) long
    loss: torch.Tensor
    recon_loss: torch.Tensor  # Chamfer (cell units) + weighted colour and class
    chamfer: torch.Tensor
    aux_loss: torch.Tensor  # commitment


class Groups(NamedTuple):
    cells: torch.Tensor  # (B, G) long, in raster order
    points: torch.Tensor  # (B, G, k, 7): xyz relative to the cell centre in cell units, rgb in [-1, 1], class


def _mlp(dim_in: int, dim: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim), nn.GELU(), nn.Linear(dim, dim_out))


class MiniPointNet(nn.Module):
    """Point-BERT's group encoder: a shared per-point MLP, max-pooled; the pooled feature joined back to
    every point, a second MLP, max-pooled again: ``(..., k, C_in) -> (..., d)``, blind to point order.

    The join is ``W [f; pooled] = W_f f + W_p pooled`` with the pooled half computed once per group, not
    once per point: the same map as concatenating, without a (k, 2 dim) tensor (encode ran 1.25x faster).
    """

    def __init__(self, dim_in: int, dim: int, dim_out: int):
        super().__init__()
        self.first = _mlp(dim_in, dim, dim)
        self.point = nn.Linear(dim, dim)
        self.pooled = nn.Linear(dim, dim, bias=False)
        self.second = nn.Sequential(nn.GELU(), nn.Linear(dim, dim))
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.first(x)  # (..., k, dim)
        joined = self.point(f) + self.pooled(f.amax(-2))[..., None, :]
        return self.head(self.second(joined).amax(-2))


@register_pretrained("vqvae_point")
class PointVQVAE(FactsFromConfig, nn.Module, PretrainedMixin):
    """Point-cloud tokenizer (a :class:`~fourm.tokenization.base.ModalityTokenizer`).

    ``encode(clouds) -> LongTensor (B, 2G)`` (cell, code) pairs; ``decode(ids) -> list`` of ``float32
    (num_points, 7)`` clouds. The tensor path: ``forward(x (B, N, 7)) -> PointVQOutput``.
    """

    config_class = PointVQVAEConfig

    def __init__(self, config: PointVQVAEConfig):
        super().__init__()
        self.config = c = config
        self.encoder = MiniPointNet(3 + 3 + c.num_classes + 1, c.dim, c.codebook_dim)  # one-hot class + "none"
        self.decoder = nn.Sequential(_mlp(c.codebook_dim, c.dim, c.dim), nn.GELU(),
                                     nn.Linear(c.dim, c.group_size * self.point_outputs))
        self.quantizer = vector_quantizer(c)
        # xyz -> the grid's cube: (xyz - centre) / scale; set by fit_normalization
        self.register_buffer("centre", torch.zeros(3))
        self.register_buffer("scale", torch.ones(()))

    # ------------------------------------------------------------------ shapes
    @property
    def point_outputs(self) -> int:
        return 3 + 3 + self.config.num_classes

    @property
    def cell_size(self) -> float:
        return 2.0 / self.config.grid_size

    # ------------------------------------------------------------------ values <-> tensors
    def to_tensor(self, values: Any) -> torch.Tensor:
        """Corpus clouds (a list of ``(N_i, 7)`` arrays, or one ``(B, N, 7)`` array) -> float32
        ``(B, num_points, 7)``, each resampled to ``num_points`` (farthest points, or repeats)."""
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().numpy()
        if isinstance(values, np.ndarray) and values.ndim == 3:
            values = list(values)
        clouds = [check_points(v, f"{self.modality} cloud {i}") for i, v in enumerate(values)]
        n = self.config.num_points
        stack = np.stack([resample(p, n) for p in clouds]) if clouds else np.zeros((0, n, 7), np.float32)
        return torch.from_numpy(stack)

    @torch.no_grad()
    def fit_normalization(self, x: torch.Tensor) -> None:
        """Centre and scale from training clouds ``(B, N, 7)``: the middle of each axis' 1st-99th percentile
        range, and the largest half range (isotropic: shapes keep their proportions). Call before training."""
        xyz = x[..., :3].reshape(-1, 3).float()
        xyz = xyz[torch.randperm(len(xyz), generator=torch.Generator().manual_seed(0))[:1_000_000]]
        lo, hi = torch.quantile(xyz, 0.01, dim=0), torch.quantile(xyz, 0.99, dim=0)
        self.centre.copy_((lo + hi) / 2)
        self.scale.copy_(((hi - lo) / 2).max().clamp_min(1e-6))

    # ------------------------------------------------------------------ grouping
    def cell_centres(self, cells: torch.Tensor) -> torch.Tensor:
        """Cell ids ``(...)`` -> their centres in the grid's cube ``(..., 3)`` (raster order x, y, z)."""
        g = self.config.grid_size
        ijk = torch.stack([cells // (g * g), cells // g % g, cells % g], dim=-1)
        return -1.0 + (ijk.float() + 0.5) * self.cell_size

    def group(self, x: torch.Tensor) -> Groups:
        """Clouds ``(B, N, 7)`` -> their groups, in the raster order of their centres' cells."""
        c = self.config
        xyz = (x[..., :3].float() - self.centre) / self.scale
        centres = gather(xyz, farthest_point_sample(xyz, c.num_groups))  # (B, G, 3)
        ijk = ((centres + 1.0) / self.cell_size).floor().long().clamp(0, c.grid_size - 1)
        cells = (ijk[..., 0] * c.grid_size + ijk[..., 1]) * c.grid_size + ijk[..., 2]
        cells, order = cells.sort(dim=1, stable=True)
        centres = gather(centres, order)
        members = gather(torch.cat([xyz, x[..., 3:].float()], dim=-1), knn(centres, xyz, c.group_size))
        rel = (members[..., :3] - self.cell_centres(cells)[:, :, None]) / self.cell_size
        return Groups(cells, torch.cat([rel, members[..., 3:6] / 127.5 - 1.0, members[..., 6:]], dim=-1))

    def features(self, points: torch.Tensor) -> torch.Tensor:
        """Group points ``(..., k, 7)`` -> PointNet inputs: xyz, rgb, class one-hot with a "none" slot."""
        cls = points[..., 6].long()
        cls = torch.where((cls < 0) | (cls >= self.config.num_classes), self.config.num_classes, cls)
        return torch.cat([points[..., :6], F.one_hot(cls, self.config.num_classes + 1).float()], dim=-1)

    # ------------------------------------------------------------------ tensor path
    def quantize(self, latents: torch.Tensor, update: bool = True):
        """(B, G, d) -> (quantized (B, G, d), ids (B, G), commitment). ``update=False`` freezes the codebook."""
        with torch.autocast(latents.device.type, enabled=False):  # code distances in fp32
            quantized, ids, aux = self.quantizer(latents.float(), freeze_codebook=not update)
        return quantized, ids.long(), aux

    def decode_groups(self, quantized: torch.Tensor) -> torch.Tensor:
        """Quantized latents ``(B, G, d)`` -> group points ``(B, G, k, F)`` (units of :class:`Groups`)."""
        out = self.decoder(quantized.to(self.centre.dtype))
        return rearrange(out, "b g (k f) -> b g k f", k=self.config.group_size)

    def group_losses(self, recon: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(total, Chamfer) of rebuilt groups against the true ones. Colour and class are compared at each
        true point's nearest rebuilt point: every true point's attributes must be carried by some point."""
        c = self.config
        distance, _, nearest = chamfer(recon[..., :3], target[..., :3])  # (B, G), (B, G, k)
        matched = torch.take_along_dim(recon, nearest[..., None], dim=-2)  # (B, G, k, F)
        colour = (matched[..., 3:6] - target[..., 3:6]).abs().mean()
        classes = target[..., 6].long()
        classes = torch.where(classes >= c.num_classes, NO_CLASS, classes)
        ce = F.cross_entropy(rearrange(matched[..., 6:], "... f -> (...) f").float(), classes.reshape(-1),
                             ignore_index=NO_CLASS) if (classes != NO_CLASS).any() else recon.new_zeros(())
        chamfer_mean = distance.mean()
        return chamfer_mean + c.colour_weight * colour + c.class_weight * ce, chamfer_mean

    def forward(self, x: torch.Tensor) -> PointVQOutput:
        """Clouds ``(B, N, 7)`` -> rebuilt groups, ids and losses."""
        self._check_points(x)
        groups = self.group(x)
        quantized, codes, aux = self.quantize(self.encoder(self.features(groups.points)))
        recon = self.decode_groups(quantized)
        recon_loss, distance = self.group_losses(recon, groups.points)
        ids = self._interleave(groups.cells, codes)
        return PointVQOutput(recon, groups.points, ids, recon_loss + aux, recon_loss, distance, aux)

    # ------------------------------------------------------------------ ids
    def _interleave(self, cells: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return rearrange(torch.stack([cells + self.config.codebook_size, codes], dim=-1), "b g two -> b (g two)")

    def split_ids(self, ids) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids ``(B, 2G)`` -> (cells, codes), each ``(B, G)``. A generated id of the wrong half (a code where
        a cell belongs, or back) is folded into range, so any sampled sequence decodes."""
        ids = torch.as_tensor(ids, device=self.centre.device).long()
        c = self.config
        if ids.ndim != 2 or ids.shape[1] != c.num_tokens:
            raise ValueError(f"{c.modality}: expected ids (B, {c.num_tokens}), got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= c.vocab_size):
            raise ValueError(f"{c.modality}: ids must lie in [0, {c.vocab_size}), "
                             f"got [{int(ids.min())}, {int(ids.max())}]")
        pairs = rearrange(ids, "b (g two) -> two b g", two=2)
        return (pairs[0] - c.codebook_size) % c.num_cells, pairs[1] % c.codebook_size

    # ------------------------------------------------------------------ tokenizer interface
    @torch.no_grad()
    def encode(self, values: Any) -> torch.Tensor:
        """Corpus clouds -> ids, LongTensor (B, 2G): per group its cell (+ codebook_size), then its code."""
        x = values if isinstance(values, torch.Tensor) and values.ndim == 3 else self.to_tensor(values)
        self._check_points(x)
        if len(x) == 0:
            return torch.zeros(0, self.num_tokens, dtype=torch.long)
        groups = self.group(x.to(self.centre.device))
        _, codes, _ = self.quantize(self.encoder(self.features(groups.points)), update=False)
        return self._interleave(groups.cells, codes)

    @torch.no_grad()
    def decode_points(self, ids) -> torch.Tensor:
        """Ids ``(B, 2G)`` -> every rebuilt point ``(B, G * k, 7)`` in corpus units (no resampling)."""
        cells, codes = self.split_ids(ids)
        recon = self.decode_groups(self.quantizer.get_output_from_indices(codes).float())
        xyz = (self.cell_centres(cells)[:, :, None] + recon[..., :3] * self.cell_size) * self.scale + self.centre
        rgb = ((recon[..., 3:6].clamp(-1, 1) + 1) * 127.5).round()
        cls = recon[..., 6:].argmax(-1, keepdim=True).float()
        return rearrange(torch.cat([xyz, rgb, cls], dim=-1), "b g k f -> b (g k) f")

    @torch.no_grad()
    def decode(self, ids) -> list[np.ndarray]:
        """Ids ``(B, 2G)`` -> clouds ``float32 (num_points, 7)`` (the farthest of the rebuilt points)."""
        points = self.decode_points(ids).cpu().numpy().astype(np.float32)
        return [resample(p, self.config.num_points) for p in points]

    def _check_points(self, x: torch.Tensor) -> None:
        if x.ndim != 3 or x.shape[-1] != 7 or x.shape[1] < max(self.config.num_groups, self.config.group_size):
            raise ValueError(f"{self.modality}: expected clouds (B, N >= {self.config.num_groups}, 7), "
                             f"got {tuple(x.shape)}")
