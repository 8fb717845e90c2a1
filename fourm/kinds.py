"""What each modality *kind* means to the code: one handler per :class:`~fourm.modalities.Kind`.

A modality is described once, in the registry (``fourm.modalities``); what its kind implies is
described once, here. The token corpus (``fourm.data.loader``), the masking (``fourm.data.masking``),
the embeddings (``fourm.model.embeddings``) and generation (``fourm.generation``) ask a modality's
handler instead of testing its kind, so a new kind (audio spectrograms, point clouds, time series)
is one handler registered with :func:`register_kind` plus its tokenizer, not an edit of each of them.

A handler answers, for its kind:

* how a sample's value is kept in a token corpus (:meth:`KindHandler.store`, ``array_key``, ``ragged``),
* how many tokens it offers the masking (:meth:`KindHandler.available`) and whether its targets are
  spans decoded left to right (``autoregressive``) or a set of positions predicted in parallel,
* how it enters the model: a table of ids (``discrete``) or raw values in ``Batch.continuous`` that a
  projection embeds (``continuous``: :meth:`KindHandler.input_projection`, :meth:`KindHandler.embed`),
  and its fixed positions (:meth:`KindHandler.positions`: 2D over a patch grid or 1D),
* how a generation state holds it (``state_slot``), whether a condition's value is already token ids
  or a raw value for its tokenizer (:meth:`KindHandler.reads_as_tokens`),
* how raw values become model inputs (:meth:`KindHandler.model_input`).

The registry's cheap commands (``fourm modalities``) read the handlers' traits, so this module
imports torch only inside the methods that compute with it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from fourm.modalities import CORPUS, VIDEO_FRAMES, Kind, Modality

if TYPE_CHECKING:
    from torch import Tensor, nn


def rgb_to_model(images: np.ndarray | Tensor) -> Tensor:
    """uint8 RGB ``(..., H, W, 3)`` -> float ``(..., 3, H, W)`` in [-1, 1]: how every pixel path
    (training batches, generation conditions, the RGB tokenizer) scales an image."""
    import torch
    from einops import rearrange

    # a copy of an array: arrays read from a corpus may be read-only
    x = images if isinstance(images, torch.Tensor) else torch.tensor(np.asarray(images))
    return rearrange(x.float() / 127.5 - 1.0, "... h w c -> ... c h w")


def resize(value: np.ndarray, corpus_key: str, size: int) -> np.ndarray:
    """An image-like corpus value resized to ``size`` x ``size``: smooth for colours and measures,
    nearest for ids and edges (a blend of class 3 and 5 is no class 4)."""
    import torch
    from PIL import Image

    value = np.asarray(value)
    if value.shape[:2] == (size, size):
        return value
    storage = CORPUS[corpus_key].storage
    ids = storage.scale is None and storage.channels == 1
    if value.dtype == np.uint8 and value.ndim == 3 and value.shape[-1] == 3:  # PIL takes RGB, not 32 bands
        return np.asarray(Image.fromarray(value).resize((size, size), Image.BILINEAR))
    tensor = torch.as_tensor(value.astype(np.float32))
    tensor = tensor[None, None] if tensor.dim() == 2 else tensor.permute(2, 0, 1)[None]
    mode = "nearest" if ids else "bilinear"
    out = torch.nn.functional.interpolate(tensor, (size, size), mode=mode, **({} if ids else {"align_corners": False}))
    out = out[0, 0] if value.ndim == 2 else out[0].permute(1, 2, 0)
    return out.numpy().astype(value.dtype)


class KindHandler:
    """The behaviour shared by every modality of one kind (subclass per kind, see the module notes).

    Class attributes (traits): ``discrete`` ids of a vocabulary (an input table, a head as target);
    ``continuous`` raw values ride in ``Batch.continuous`` and encoder ids index their patches /
    vectors; ``ragged`` a sample's length varies (values + offsets in a token corpus);
    ``autoregressive`` targets are spans decoded left to right with teacher forcing; ``grid`` 2D
    positions over a square patch grid whose token count the scale sets; ``array_key`` the name of
    the per-sample array in a token corpus; ``state_slot`` how a generation state holds it (``grid``
    token ids with a known mask, ``sequence`` id lists, ``continuous`` raw values).
    """

    kind: ClassVar[Kind | str]  # a Kind, or the name of a kind the registry does not know yet
    discrete: ClassVar[bool] = True
    continuous: ClassVar[bool] = False
    ragged: ClassVar[bool] = False
    autoregressive: ClassVar[bool] = False
    grid: ClassVar[bool] = False
    array_key: ClassVar[str] = "ids"
    state_slot: ClassVar[str] = "grid"

    # ------------------------------------------------------------------ token corpus
    def store(self, m: Modality, value: np.ndarray, key: str) -> np.ndarray:
        """A sample's value as the token corpus keeps it (checked); ``key`` names the sample in errors."""
        if value.shape != (m.tokens,):
            raise ValueError(f"{m.key} of {key} has shape {value.shape}, the modality {m.tokens} tokens")
        return value.astype(m.token_dtype, copy=False)

    def continuous_shape(self, m: Modality, arrays: dict[str, np.ndarray]) -> tuple[int, ...] | None:
        """Per-sample shape of the raw input a batch carries (None: the kind carries ids only)."""
        return None

    # ------------------------------------------------------------------ masking
    def available(self, m: Modality, value) -> int:
        """How many tokens a sample's value offers the masking: a ragged value its length up to the
        modality's maximum, a fixed one exactly its token count."""
        if self.ragged:
            return min(len(value), m.max_tokens or len(value))
        if len(value) != m.tokens:
            raise ValueError(f"{m.key} has {len(value)} tokens, the modality {m.tokens}")
        return len(value)

    # ------------------------------------------------------------------ model
    def positions(self, m: Modality, dim: int) -> Tensor:
        """The fixed (unscaled) sine-cosine positions of the modality's tokens, (tokens, dim)."""
        from fourm.model.positions import sincos_1d, sincos_2d  # in here: fourm.model imports this module

        return sincos_2d(math.isqrt(m.tokens), dim) if self.grid else sincos_1d(m.tokens, dim)

    def grid_coordinates(self, m: Modality) -> Tensor:
        """(tokens, 2) (row, column) of each token on its patch grid, for rotary attention; (0, 0) for
        tokens on no grid (their rotation is the identity: they keep only their absolute positions)."""
        import torch

        return _grid_cells(math.isqrt(m.tokens)) if self.grid else torch.zeros(m.tokens, 2)

    def input_projection(self, m: Modality, dim: int, image_size: int, pixel_stem: str,
                         stem_options: dict | None = None) -> nn.Module | None:
        """The module that embeds a continuous kind's raw values (None: a discrete kind's table);
        ``stem_options`` are the pixel stem's own settings (the hybrid stem's expert)."""
        return None

    def check_continuous(self, m: Modality, value: Tensor, batch_size: int, image_size: int) -> str | None:
        """The expected shape of ``batch.continuous[m.key]`` if ``value`` does not have it, else None."""
        return None

    def input_limit(self, m: Modality, value: Tensor | None) -> int:
        """Encoder ids must lie in [0, limit): the vocabulary, or the patches / vectors of a raw value."""
        return m.vocab_size or 0

    def embed(self, projection: nn.Module, value: Tensor, samples: Tensor, ids: Tensor) -> Tensor:
        """Continuous kinds: embed item ``ids[i]`` of sample ``samples[i]`` of the raw ``value``."""
        raise TypeError(f"{_name(self.kind)} modalities are embedded by their token table")

    # ------------------------------------------------------------------ generation
    def reads_as_tokens(self, m: Modality, value) -> bool:
        """Whether a generation condition's ``value`` is token ids (else a raw value, for the tokenizer):
        a 1-D integer array or tensor, or a non-empty list of ints. No raw value of an image, a vector, a
        caption, a point cloud or a video is one; kinds whose raw values can be override this."""
        import torch

        if isinstance(value, torch.Tensor):
            return value.dim() == 1 and not value.dtype.is_floating_point
        if isinstance(value, np.ndarray):
            return value.ndim == 1 and value.dtype.kind in "iu"
        return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, (int, np.integer))
                                                                         for v in value)

    def model_input(self, m: Modality, value, image_size: int):
        """A raw value -> what the generation state holds (continuous kinds only; the others are
        tokenized by their tokenizer)."""
        raise TypeError(f"{_name(self.kind)} modalities are tokenized by their tokenizer")

    def continuous_length(self, m: Modality, value: Tensor) -> int:
        """Encoder tokens a held raw value (batched) gives: its patches or vectors."""
        raise TypeError(f"{_name(self.kind)} modalities hold token ids")


KINDS: dict[str, KindHandler] = {}  # by the kind's name (a Kind is a str: Kind.IMAGE == "image")


def _name(kind: Kind | str) -> str:
    return kind.value if isinstance(kind, Kind) else str(kind)


def _grid_cells(side: int) -> Tensor:
    """(side * side, 2) float (row, column) of a square grid in raster order."""
    import torch

    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return torch.stack([rows, cols], -1).reshape(-1, 2).float()


def register_kind(cls: type[KindHandler]) -> type[KindHandler]:
    """Class decorator: ``cls`` handles every modality of kind ``cls.kind`` (a :class:`Kind`, or a new
    kind's name: a modality of that kind then needs no other code than its handler and tokenizer)."""
    name = _name(cls.kind)
    if name in KINDS:
        raise ValueError(f"kind {name!r} already has a handler: {type(KINDS[name]).__name__}")
    KINDS[name] = cls()
    return cls


def handler(m: Modality | Kind | str) -> KindHandler:
    """The handler of a modality's kind (or of a kind)."""
    kind = m.kind_name if isinstance(m, Modality) else _name(m)
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"no handler for modality kind {kind!r}; known: {', '.join(KINDS)}") from None


def token_count_key(m: Modality) -> str:
    """The name of a modality's token count where a tokenizer or a token corpus states it:
    ``max_tokens`` for a ragged kind (a sequence has at most that many), else ``num_tokens`` (exactly)."""
    return "max_tokens" if handler(m).ragged else "num_tokens"


@register_kind
class ImageKind(KindHandler):
    """A grid of discrete tokens from an image VQ-VAE; positions 2D; targets predicted in parallel."""

    kind = Kind.IMAGE
    grid = True


@register_kind
class GlobalKind(KindHandler):
    """A few tokens of an MLP VQ-VAE over one vector; positions 1D; targets predicted in parallel."""

    kind = Kind.GLOBAL


@register_kind
class SequenceKind(KindHandler):
    """Text-like ids of the shared WordPiece vocabulary, ending with [EOS]: span-masked (T5), decoded
    left to right with teacher forcing; positions 1D."""

    kind = Kind.SEQUENCE
    ragged = True
    autoregressive = True
    array_key = "values"
    state_slot = "sequence"

    def store(self, m: Modality, value: np.ndarray, key: str) -> np.ndarray:
        return value[: m.max_tokens].astype(np.int32)


@register_kind
class PointCloudKind(KindHandler):
    """Point-BERT style tokens: per group of points a (centre cell, shape code) pair, groups in raster
    order of their cells; one vocabulary holds both (cells after the codes), 1D positions, targets
    predicted in parallel. The traits of a global, but its own kind: a point cloud is no embedding that
    retrieval can search (it asks for ``Kind.GLOBAL``), and its count is checked in pairs."""

    kind = Kind.POINT_CLOUD

    def store(self, m: Modality, value: np.ndarray, key: str) -> np.ndarray:
        if m.tokens % 2:
            raise ValueError(f"{m.key} has {m.tokens} tokens: a point cloud's come in (cell, shape) pairs")
        return super().store(m, value, key)


@register_kind
class TimeSeriesKind(KindHandler):
    """A multichannel signal cut into patches of time, each patch a few codes of a 1D VQ-VAE, in time
    order; 1D positions, targets predicted in parallel (the traits of a global, not one: see above)."""

    kind = Kind.TIME_SERIES

    def reads_as_tokens(self, m: Modality, value) -> bool:
        # a raw series may itself be a 1-D integer array (a 16 kHz int16 clip: speech): ids are told
        # apart by their count, exactly the modality's tokens (a clip that short is a few milliseconds)
        return super().reads_as_tokens(m, value) and len(value) == m.tokens


@register_kind
class VideoKind(KindHandler):
    """``frames`` frames of image tokens, frame after frame, each a square patch grid in raster order (the
    RGB tokenizer's ids); a token's position is its frame's plus its patch's (factorised, as ViViT's
    arXiv 2103.15691), so the same patch in two frames differs by time alone; targets in parallel."""

    kind = Kind.VIDEO
    frames: ClassVar[int] = VIDEO_FRAMES

    def positions(self, m: Modality, dim: int) -> Tensor:
        from einops import repeat

        from fourm.model.positions import sincos_1d, sincos_2d  # in here: fourm.model imports this module

        side = math.isqrt(m.tokens // self.frames)
        if side * side * self.frames != m.tokens:
            raise ValueError(f"{m.key} has {m.tokens} tokens: not {self.frames} frames of a square grid")
        grid = repeat(sincos_2d(side, dim), "n d -> (f n) d", f=self.frames)
        return grid + repeat(sincos_1d(self.frames, dim), "f d -> (f n) d", n=side * side)

    def grid_coordinates(self, m: Modality) -> Tensor:
        """Each frame's patch grid: the same patch in two frames sits at the same place."""
        return _grid_cells(math.isqrt(m.tokens // self.frames)).repeat(self.frames, 1)


class ContinuousKind(KindHandler):
    """Raw values, input only: ``Batch.continuous`` carries them and an encoder id is the index of the
    patch / vector a token embeds."""

    discrete = False
    continuous = True
    state_slot = "continuous"

    raw_dtype: ClassVar[type] = np.float32  # how a batch's raw values are stacked

    def input_limit(self, m: Modality, value: Tensor | None) -> int:
        return m.tokens

    def batch_input(self, m: Modality, values: list, shape: tuple[int, ...]) -> Tensor:
        """A batch's raw values (None: the sample lacks it) -> one tensor, zero-padded to ``shape``."""
        import torch

        stack = np.zeros((len(values), *shape), dtype=self.raw_dtype)
        for row, value in enumerate(values):
            if value is not None:
                stack[row, : len(value)] = value[: shape[0]]
        return self.to_model(torch.from_numpy(stack))

    def to_model(self, stack: Tensor) -> Tensor:
        """Stacked raw values -> what the model reads."""
        return stack

    def embed(self, projection: nn.Module, value: Tensor, samples: Tensor, ids: Tensor) -> Tensor:
        return projection(value[samples, ids])


@register_kind
class PixelsKind(ContinuousKind):
    """An image as pixels, (H, W, 3) uint8, embedded patch by patch by a pixel stem; positions 2D."""

    kind = Kind.PIXELS
    grid = True
    array_key = "pixels"
    raw_dtype = np.uint8

    def to_model(self, stack: Tensor) -> Tensor:
        return rgb_to_model(stack)  # (B, 3, H, W) in [-1, 1]

    def store(self, m: Modality, value: np.ndarray, key: str) -> np.ndarray:
        return value.astype(np.uint8, copy=False)

    def continuous_shape(self, m: Modality, arrays: dict[str, np.ndarray]) -> tuple[int, ...]:
        return arrays["pixels"].shape[1:]

    def available(self, m: Modality, value) -> int:
        return m.tokens  # every patch, whatever the value (its presence is what counts)

    def input_projection(self, m: Modality, dim: int, image_size: int, pixel_stem: str,
                         stem_options: dict | None = None) -> nn.Module:
        from fourm.model.stems import PIXEL_STEMS  # in here: fourm.model imports this module

        return PIXEL_STEMS[pixel_stem](m.patch_size or image_size // math.isqrt(m.tokens), dim, **(stem_options or {}))

    def check_continuous(self, m: Modality, value: Tensor, batch_size: int, image_size: int) -> str | None:
        expected = (batch_size, 3, image_size, image_size)
        return None if tuple(value.shape) == expected else str(expected)

    def embed(self, projection: nn.Module, value: Tensor, samples: Tensor, ids: Tensor) -> Tensor:
        return projection.embed(value, samples, ids)  # a stem sees only the patches it is given

    def model_input(self, m: Modality, value, image_size: int) -> Tensor:
        return rgb_to_model(resize(np.asarray(value, dtype=np.uint8), m.source, image_size))

    def continuous_length(self, m: Modality, value: Tensor) -> int:
        return m.tokens


@register_kind
class EmbeddingSequenceKind(ContinuousKind):
    """Frozen per-token vectors (L, C) of a text encoder, projected linearly; positions 1D."""

    kind = Kind.EMBEDDING_SEQUENCE
    ragged = True
    array_key = "values"

    def store(self, m: Modality, value: np.ndarray, key: str) -> np.ndarray:
        return value[: m.max_tokens].astype(np.float16)

    def continuous_shape(self, m: Modality, arrays: dict[str, np.ndarray]) -> tuple[int, ...]:
        # fixed per batch: padded to max_tokens (or the longest sample)
        return (m.max_tokens or int(np.diff(arrays["offsets"]).max()), arrays["values"].shape[1])

    def input_projection(self, m: Modality, dim: int, image_size: int, pixel_stem: str,
                         stem_options: dict | None = None) -> nn.Module:
        from torch import nn

        return nn.Linear(m.dim, dim)

    def check_continuous(self, m: Modality, value: Tensor, batch_size: int, image_size: int) -> str | None:
        ok = value.dim() == 3 and value.shape[0] == batch_size and value.shape[2] == m.dim
        return None if ok else f"({batch_size}, L, {m.dim})"

    def input_limit(self, m: Modality, value: Tensor | None) -> int:
        return value.shape[1]

    def model_input(self, m: Modality, value, image_size: int) -> Tensor:
        import torch

        return torch.as_tensor(np.asarray(value, dtype=np.float32))[: m.tokens]

    def continuous_length(self, m: Modality, value: Tensor) -> int:
        return int(value.shape[1])
