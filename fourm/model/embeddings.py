"""Input embeddings of every modality, built from the registry (``fourm.modalities``).

Each token's embedding is two parts kept apart, as 4M's ``x`` and ``emb`` (arXiv 2303.06516):

* content -- what the token says: a row of its modality's token table (discrete kinds: IMAGE,
  SEQUENCE, GLOBAL), or the kind's projection of a raw value (continuous kinds: a pixel stem's
  embedding of an rgb patch, ``fourm.model.stems``; a linear map of a text-encoder vector);
* where it is -- the kind's fixed sine-cosine positions (2D over a patch grid, 1D otherwise) plus
  one learned embedding of its modality.

What each kind means here is its handler's (``fourm.kinds``): this module asks, never tests a kind.
Encoder tokens are content + position; decoder queries of parallel targets (IMAGE / GLOBAL) are a
learned mask token + position (no content: that is what they predict), those of autoregressive
targets (SEQUENCE) embed the previous token (teacher forcing) with the modality's input table.

Tokens arrive packed (``fourm.model.batch``): a (B, N) list with modality and position tags.
Lookups are vectorised per modality: tokens are grouped by modality with one sort, each
modality's table sees only its own tokens (a loop over modalities, never over tokens).
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from fourm.kinds import handler
from fourm.modalities import Modality

_NO_LIMIT = 2**62  # decoder input ids of IMAGE / GLOBAL targets are ignored, so never out of range


def split_by_modality(mod: Tensor, num_modalities: int, valid: Tensor | None = None) -> dict[int, Tensor]:
    """Flat indices (into ``mod.flatten()``) of the valid tokens of each modality present, in order.

    One stable sort and one host read of the counts, whatever the number of modalities.
    """
    key = mod.flatten() + 1  # bucket 0 holds the padding
    if valid is not None:
        key = key.masked_fill(~valid.flatten(), 0)
    counts = torch.bincount(key, minlength=num_modalities + 1).tolist()
    chunks = torch.argsort(key, stable=True).split(counts)
    return {m: chunks[m + 1] for m in range(num_modalities) if counts[m + 1]}


def pad_rows(idx: Tensor, x: Tensor) -> Tensor:
    """``idx`` (n,) padded to one of a few sizes by repeating its first entry: powers of two up to 64,
    then multiples of 64, where the rows are taken from ``x`` for training or for bf16 (``pads_rows``).
    Callers run a module on the padded rows and keep the first ``n`` outputs.

    How many tokens a modality has changes from batch to batch, and on a CPU every new row count makes
    oneDNN build (JIT) a new bf16 matmul kernel for the modality's head (and its stem's): the demo's
    train step took 202 ms on fresh batches against 138 ms on 20 batches seen before (2 threads,
    compiled blocks), the difference building kernels, beyond oneDNN's cache of 1024. Padded, a
    modality's rows take ~30 sizes instead of ~1500; the padding costs at most 2x the rows below 64
    and 63 rows above, and nothing at one row (a step of autoregressive decoding). Under gradients one
    row becomes two: a compiled loss would compile a graph of its own for one.
    """
    n = idx.numel()
    if not pads_rows(x):
        return idx
    size = 1 << max(n - 1, torch.is_grad_enabled()).bit_length() if n <= 64 else -(-n // 64) * 64
    return torch.cat([idx, idx[:1].expand(size - n)]) if size > n > 0 else idx


def pads_rows(x: Tensor) -> bool:
    """Whether ``pad_rows`` pads rows of ``x``: while gradients are on (a compiled step then sees a few
    shapes, not any) and in bf16 (oneDNN's kernels per row count). Inference in fp32 or int8 runs its
    rows only: padding the 196 rows of a MaskGIT head to 256 was 23% more of its largest matmul."""
    return torch.is_grad_enabled() or x.dtype == torch.bfloat16 or torch.is_autocast_enabled(x.device.type)


class ModalityEmbeddings(nn.Module):
    """Content and position+modality embeddings of the modalities ``specs`` (resolved entries, in
    the model's modality order: index ``m`` in ``enc_mod`` / ``dec_mod`` is ``list(specs)[m]``)."""

    def __init__(self, specs: dict[str, Modality], dim: int, image_size: int, pixel_stem: str = "linear",
                 position_scale: float = 1.0, position_scales: dict[str, float] | None = None,
                 stem_options: dict | None = None):
        super().__init__()
        self.specs, self.names, self.dim, self.image_size = specs, list(specs), dim, image_size
        self.kinds = {n: handler(s) for n, s in specs.items()}
        self.tables = nn.ModuleDict({n: nn.Embedding(s.vocab_size, dim) for n, s in specs.items()
                                     if self.kinds[n].discrete})
        self.projections = nn.ModuleDict()  # continuous kinds: a pixel stem, a linear map of vectors...
        for name, spec in specs.items():
            projection = self.kinds[name].input_projection(spec, dim, image_size, pixel_stem, stem_options)
            if projection is not None:
                self.projections[name] = projection
        self.modality = nn.Parameter(torch.zeros(len(specs), dim))
        self.mask_token = nn.Parameter(torch.zeros(dim))

        # every modality's fixed positions in one table, so a token's position is one gather
        tables = [self.kinds[n].positions(s, dim) for n, s in specs.items()]
        # per modality: how many positions it has and where they start, as host lists (a decode step reads
        # them without touching a tensor) and as buffers (gathers over a batch's tags)
        self._counts = [len(t) for t in tables]
        self._offsets = [sum(self._counts[:m]) for m in range(len(self._counts))]
        # Scaled to the token tables' init (std 0.02, as nanoGPT's wte/wpe): raw sine-cosine entries
        # (RMS 0.7) would be ~35x longer than a token's content, and the trunk would first learn to
        # ignore what the tokens say (image targets stayed at the unigram loss without this).
        scales = [(position_scales or {}).get(s.kind_name, position_scale) for s in specs.values()]
        positions = torch.cat([t * (0.02 * math.sqrt(2) * k) for t, k in zip(tables, scales, strict=True)])
        self.register_buffer("positions", positions, persistent=False)  # (sum of counts, D)
        coords = torch.cat([self.kinds[n].grid_coordinates(s) for n, s in specs.items()])
        self.register_buffer("coords", coords, persistent=False)  # (sum of counts, 2): (row, col) on its grid
        self.register_buffer("pos_offset", torch.tensor(self._offsets), persistent=False)  # (M,)
        self.register_buffer("pos_count", torch.tensor(self._counts), persistent=False)
        vocab = torch.tensor([s.vocab_size or 0 for s in specs.values()])
        self.register_buffer("vocab", vocab, persistent=False)
        # decoder inputs of autoregressive targets are the previous tokens (teacher forcing)
        self.register_buffer("is_sequence", torch.tensor([self.kinds[n].autoregressive for n in specs]),
                             persistent=False)

    # ------------------------------------------------------------------------------ position
    def position(self, mod: Tensor, pos: Tensor, valid: Tensor) -> Tensor:
        """(B, N) tags -> (B, N, D) position + modality embedding; padding gets modality 0, position 0."""
        mod, pos = mod.masked_fill(~valid, 0), pos.masked_fill(~valid, 0)
        return self.positions[self.pos_offset[mod] + pos] + self.modality[mod]

    def grid_coordinates(self, mod: Tensor, pos: Tensor, valid: Tensor) -> Tensor:
        """(B, N) tags -> (B, N, 2) (row, column) of each token on its modality's patch grid, for
        rotary attention; (0, 0) for padding and for tokens on no grid."""
        mod, pos = mod.masked_fill(~valid, 0), pos.masked_fill(~valid, 0)
        return self.coords[self.pos_offset[mod] + pos] * valid[..., None]

    # ------------------------------------------------------------------------------ content
    def encoder_content(self, ids: Tensor, mod: Tensor, pos: Tensor, valid: Tensor,
                        continuous: dict[str, Tensor]) -> Tensor:
        """(B, Ne) tags + raw continuous inputs -> (B, Ne, D) content; zeros on padding."""
        b, n = ids.shape
        groups = self._split_checked("encoder", mod, valid)
        limits = self.vocab.clone()  # ids of continuous modalities index their patches / vectors
        for m in groups:
            name = self.names[m]
            if self.kinds[name].continuous:
                value = self._check_continuous(name, continuous, b)
                limits[m] = self.kinds[name].input_limit(self.specs[name], value)
        self.check_tokens("encoder", ids, mod, pos, valid, limits)

        x = self.mask_token.new_zeros(b * n, self.dim)
        flat_ids = ids.flatten()
        for m, idx in groups.items():
            name = self.names[m]
            if name in self.projections:
                rows = pad_rows(idx, x)  # a stem's matmuls and convolutions on a few row counts, not any
                embedded = self.kinds[name].embed(self.projections[name], continuous[name], rows // n, flat_ids[rows])
                x[idx] = embedded[: idx.numel()].to(x.dtype)
            else:
                x[idx] = self.tables[name](flat_ids[idx]).to(x.dtype)
        return rearrange(x, "(b n) d -> b n d", b=b)

    def decoder_content(self, ids: Tensor, mod: Tensor, pos: Tensor, valid: Tensor) -> Tensor:
        """(B, Nd) tags -> (B, Nd, D): the mask token for IMAGE / GLOBAL targets, the embedded
        previous token for SEQUENCE targets (their ``ids``); zeros on padding."""
        b, n = ids.shape
        groups = self._split_checked("decoder", mod, valid, targets=True)
        self.check_tokens("decoder", ids, mod, pos, valid, self._decoder_limits())
        x = self.mask_token.new_zeros(b * n, self.dim)
        flat_ids = ids.flatten()
        for m, idx in groups.items():
            name = self.names[m]
            if self.kinds[name].autoregressive:
                x[idx] = self.tables[name](flat_ids[idx]).to(x.dtype)
            else:
                x[idx] = self.mask_token.to(x.dtype)
        return rearrange(x, "(b n) d -> b n d", b=b)

    def decoder_queries(self, name: str, ids: Tensor, pos: Tensor) -> Tensor:
        """Decoder queries of tokens all of modality ``name`` and all valid, (B, n) ids and positions ->
        (B, n, D): what :meth:`decoder_content` plus :meth:`position` give such tokens, without grouping
        them by modality. A step of autoregressive decoding embeds one token a row, and the grouping's sort,
        host reads and scatter took ~0.3 ms of it on a 2-core EPYC (0.07 ms this way)."""
        m = self.names.index(name)
        if self.specs[name].input_only:
            raise ValueError(f"modality {name!r} is input-only: it cannot be a decoder target")
        autoregressive = self.kinds[name].autoregressive
        bad = (pos < 0) | (pos >= self._counts[m])
        if autoregressive:
            bad |= (ids < 0) | (ids >= self.specs[name].vocab_size)
        if bad.any():  # the general check names the first offender
            valid = torch.ones_like(bad)
            self.check_tokens("decoder", ids, torch.full_like(ids, m), pos, valid, self._decoder_limits())
        content = self.tables[name](ids) if autoregressive else self.mask_token.expand(*ids.shape, self.dim)
        # summed in the general path's order (content + (position + modality)): the same floats
        return content + (self.positions[pos + self._offsets[m]] + self.modality[m])

    # ------------------------------------------------------------------------------ checks
    def _decoder_limits(self) -> Tensor:
        """(M,) the exclusive bound of each modality's decoder input ids: its vocabulary for sequences (their
        inputs are the previous tokens), none for the others (their ids are ignored)."""
        return torch.where(self.is_sequence, self.vocab, _NO_LIMIT)

    def _split_checked(self, what: str, mod: Tensor, valid: Tensor, targets: bool = False) -> dict[int, Tensor]:
        bad = valid & ((mod < 0) | (mod >= len(self.names)))
        if bad.any():
            b, n = bad.nonzero()[0].tolist()
            raise ValueError(f"{what} token [{b}, {n}]: modality index {mod[b, n].item()} is out of range; "
                             f"this model's modalities are {self.names}")
        groups = split_by_modality(mod, len(self.names), valid)
        if targets:
            for m in groups:
                if self.specs[self.names[m]].input_only:
                    raise ValueError(f"modality {self.names[m]!r} is input-only: it cannot be a decoder target")
        return groups

    def check_tokens(self, what: str, ids: Tensor, mod: Tensor, pos: Tensor, valid: Tensor, limits: Tensor) -> None:
        """One vectorised test of every valid token: 0 <= id < limits[mod], 0 <= pos < its modality's
        token count; the first offender is named. ``mod`` must already be in range."""
        m = mod.clamp(0, len(self.names) - 1)
        bad_id = valid & ((ids < 0) | (ids >= limits[m]))
        bad_pos = valid & ((pos < 0) | (pos >= self.pos_count[m]))
        if not (bad_id | bad_pos).any():
            return
        b, n = (bad_id | bad_pos).nonzero()[0].tolist()
        name = self.names[m[b, n]]
        if bad_id[b, n]:
            raise ValueError(f"{what} token [{b}, {n}] of modality {name!r}: id {ids[b, n].item()} is out of "
                             f"range [0, {limits[m[b, n]].item()})")
        hint = f" (raise the config's max_tokens[{name!r}] if it is real)" if self.is_sequence[m[b, n]] else ""
        raise ValueError(f"{what} token [{b}, {n}] of modality {name!r}: position {pos[b, n].item()} is out of "
                         f"range [0, {self.pos_count[m[b, n]].item()}){hint}")

    def _check_continuous(self, name: str, continuous: dict[str, Tensor], batch_size: int) -> Tensor:
        if name not in continuous:
            raise ValueError(f"the batch has {name!r} tokens but no batch.continuous[{name!r}]")
        value = continuous[name]
        expected = self.kinds[name].check_continuous(self.specs[name], value, batch_size, self.image_size)
        if expected is not None:
            raise ValueError(f"batch.continuous[{name!r}] has shape {tuple(value.shape)}, expected {expected}")
        return value
