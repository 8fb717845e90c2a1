"""The modality registry: every modality described once.

Two tables, one per face of a modality:

* ``CORPUS`` -- what the aligned corpus stores, one shard series (folder) per entry: how a value is
  kept on disk, how it is drawn for a person, and which labeller makes it by default.
* ``MODALITIES`` -- what the 4M model sees (the keys of 4M-21, arXiv 2406.09406, Table 1): kind,
  tokenizer family, vocabulary, token count, and which corpus entry feeds it. Several model
  modalities may read one corpus entry (``rgb`` pixels and ``tok_rgb`` both read ``rgb``).

Full-scale numbers follow the reference (224 px, 16 px patches, 196 tokens per image). A
:class:`ModalityScale` scales images and vocabularies down (our CPU default: 64 px, 8 px patches,
64 tokens) without touching the entries. Adding a modality is one ``CORPUS`` entry for its data,
one ``MODALITIES`` entry for the model, and, if it is a new kind, one tokenizer class.

In-memory value conventions (what sources and labellers produce, what the corpus reader returns):

=================  ===============================================================================
storage            value
=================  ===============================================================================
png, uint8, C=3    ``np.uint8 (H, W, 3)``
png, uint8, C=1    ``np.uint8 (H, W)`` (class ids, or edges as 0/255)
png, uint16        ``np.uint16 (H, W)`` (instance ids), or float after ``scale`` (metres, attenuation, kelvin)
npy                ``np.ndarray`` (float16 features ``(h, w, C)``, vectors ``(C,)``, ``(L, C)``)
npy, uint8         ``np.uint8`` frames ``(F, H, W, 3)``, hyperspectral bands ``(H, W, C)``
json               ``list`` / ``dict``
txt                ``str``
=================  ===============================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import Enum


class Kind(str, Enum):
    """How the model treats a modality's tokens."""

    PIXELS = "pixels"  # raw image patches, projected linearly; input only
    IMAGE = "image"  # a grid of discrete tokens (image VQ-VAE), 2D positions
    SEQUENCE = "sequence"  # text-like tokens of the shared WordPiece vocabulary, 1D positions
    EMBEDDING_SEQUENCE = "embedding_sequence"  # frozen vectors, projected linearly; input only
    GLOBAL = "global"  # a few tokens of an MLP VQ-VAE over one vector
    POINT_CLOUD = "point_cloud"  # (centre cell, group shape) token pairs of a Point-BERT style VQ-VAE
    TIME_SERIES = "time_series"  # patch codes of a 1D VQ-VAE over a multichannel signal, in time order
    VIDEO = "video"  # frames of image tokens (the RGB tokenizer's), positions in time and on the patch grid


@dataclass(frozen=True)
class Storage:
    """How one value is kept in a shard.

    Numbers are stored as ``round((value + offset) * scale)`` in ``dtype`` and read back as
    ``stored / scale - offset``; ``scale=None`` keeps the values as they are (ids, pixels).
    """

    ext: str  # file extension inside the tar: png, npy, json, txt
    dtype: str | None = None  # uint8 / uint16 for png, float16 / float32 for npy
    channels: int | None = None  # png only: 1 (grey, ids) or 3 (colour)
    scale: float | None = None
    offset: float = 0.0


@dataclass(frozen=True)
class CorpusModality:
    """One shard series of the aligned corpus."""

    key: str
    storage: Storage
    render: str  # name of a renderer in fourm.viz.render
    labeller: str | None  # default labeller in pseudolabel.labellers (None: only from a source)
    description: str


@dataclass(frozen=True)
class Modality:
    """One modality as the 4M model sees it (full-scale defaults)."""

    key: str
    kind: Kind | str  # a Kind, or the name of a kind registered with fourm.kinds.register_kind
    source: str  # the CORPUS entry holding its data
    tokenizer: str | None  # tokenizer family; None for PIXELS / EMBEDDING_SEQUENCE
    vocab_size: int | None  # None where the input is continuous
    # the most tokens a sample has: a sequence's length limit; for a global the bound its tokenizer's
    # count must keep within (a model's resolved spec holds that count here). Image grids: num_tokens
    max_tokens: int | None = None
    input_only: bool = False
    dim: int | None = None  # width of continuous inputs (EMBEDDING_SEQUENCE)
    num_tokens: int | None = None  # filled in by ModalityScale.resolve for image kinds
    patch_size: int | None = None  # image kinds: pixels per patch side, filled in by ModalityScale.resolve

    @property
    def kind_name(self) -> str:
        return self.kind.value if isinstance(self.kind, Kind) else self.kind

    @property
    def is_image(self) -> bool:
        """Tokens on a square patch grid, counted by the scale: its kind handler's ``grid``."""
        from fourm.kinds import handler  # in here: fourm.kinds builds on this module

        return handler(self).grid

    @property
    def token_dtype(self) -> str:
        """How token ids are stored in ``tok_<modality>`` shards (``.npy``)."""
        return "int16" if (self.vocab_size or 0) <= 2**15 else "int32"

    @property
    def tokens(self) -> int:
        """Token count (images, globals) or maximum (sequences): whichever of ``num_tokens`` and
        ``max_tokens`` the kind has, for the code that only needs a number (positions, budgets)."""
        n = self.num_tokens if self.is_image else self.max_tokens
        if n is None:
            raise ValueError(f"modality {self.key!r} has no token count: resolve it with ModalityScale")
        return n


# ----------------------------------------------------------------------------- corpus (stored data)
# bands of a hyperspectral image (400-710 nm in 10 nm steps, fourm.data.spectra): the scenes, the
# codec and the renderer all read it here
HYPERSPECTRAL_BANDS = 32

_PNG_RGB = Storage("png", "uint8", 3)
_PNG_IDS = Storage("png", "uint8", 1)
_FEATURES = Storage("npy", "float16")

CORPUS: dict[str, CorpusModality] = {
    m.key: m
    for m in [
        CorpusModality("rgb", _PNG_RGB, "rgb", None, "the image, 8-bit RGB"),
        # millimetres in 16 bits: 1 mm steps up to 65 m, enough for scenes and indoor/outdoor photos
        CorpusModality("depth", Storage("png", "uint16", 1, scale=1000.0), "depth", "depth",
                       "depth in metres (relative units for monocular models); 0 = unknown"),
        CorpusModality("normal", Storage("png", "uint8", 3, scale=127.5, offset=1.0), "normal", "normal",
                       "unit surface normals, camera frame (x right, y up, z to the viewer)"),
        CorpusModality("semseg", _PNG_IDS, "semseg", "semseg", "semantic class id per pixel"),
        CorpusModality("sam_instance", Storage("png", "uint16", 1), "instances", "sam_instance",
                       "instance id per pixel, 0 = no instance"),
        CorpusModality("canny_edge", _PNG_IDS, "edges", "canny_edge", "Canny edges of the RGB, 0/255"),
        CorpusModality("sam_edge", _PNG_IDS, "edges", "sam_edge", "boundaries of the instances, 0/255"),
        CorpusModality("clip", _FEATURES, "features", "clip", "CLIP patch features (h, w, C)"),
        CorpusModality("dinov2", _FEATURES, "features", "dinov2", "DINOv2 patch features (h, w, C)"),
        # ImageBind has no transformers port yet: no labeller makes these two, a user's own data can
        CorpusModality("imagebind", _FEATURES, "features", None, "ImageBind patch features (h, w, C)"),
        CorpusModality("dinov2_global", _FEATURES, "vector", "dinov2", "DINOv2 CLS vector (C,)"),
        CorpusModality("imagebind_global", _FEATURES, "vector", None, "ImageBind global vector (C,)"),
        CorpusModality("caption_global", _FEATURES, "vector", "text_embedding",
                       "MiniLM sentence vector of the caption (C,): retrieval without image encoders"),
        CorpusModality("caption", Storage("txt"), "text", "caption", "a caption"),
        CorpusModality("t5_caption", _FEATURES, "vector", "text_embedding",
                       "per-token text-encoder vectors of the caption (L, C)"),
        CorpusModality("det", Storage("json"), "boxes", "det",
                       "objects: [{box: [x0, y0, x1, y1] in [0, 1], label, score}]"),
        CorpusModality("human_poses", Storage("json"), "poses", "human_poses",
                       "people: [{box, keypoints: [[x, y, visibility], ...]}] in [0, 1]"),
        CorpusModality("color_palette", Storage("json"), "palette", "color_palette",
                       "1-7 dominant colours [[r, g, b], ...], most frequent first"),
        CorpusModality("metadata", Storage("json"), "metadata", "metadata", "image statistics {field: value}"),
        # float32: class ids and 0-255 colours exactly, and metres without a storage step to explain
        CorpusModality("point_cloud", Storage("npy", "float32"), "points", None,
                       "points (N, 7): x, y, z (camera frame), r, g, b (0-255), class (-1 = none)"),
        CorpusModality("imu", Storage("npy", "float32"), "series", None,
                       "IMU (T, 6): accelerometer m/s^2 and gyroscope rad/s, camera frame"),
        CorpusModality("video", Storage("npy", "uint8"), "frames", None, "frames (F, H, W, 3), 8-bit RGB"),
        # int16 at its true length (the array's length records it): fourm.data.audio
        CorpusModality("speech", Storage("npy", "int16"), "speech", None, "16 kHz mono audio int16 (N,), at most 8 s"),
        # X-ray: the line integral of attenuation (sum of mu * path length, dimensionless) along each
        # camera ray, 0.001 steps up to 65 in 16 bits (a radiograph's transmission is exp(-value))
        CorpusModality("xray", Storage("png", "uint16", 1, scale=1000.0), "xray", None,
                       "X-ray attenuation integral along each ray (H, W), 0 = nothing in the way"),
        # centi-kelvin in 16 bits: 0.01 K steps up to 655 K
        CorpusModality("thermal", Storage("png", "uint16", 1, scale=100.0), "thermal", None,
                       "thermal infrared brightness temperature (H, W) in kelvin"),
        # gamma-encoded as the RGB is (sqrt of linear radiance, 8 bits), one plane per band
        CorpusModality("hyperspectral", Storage("npy", "uint8"), "spectral", None,
                       f"hyperspectral radiance (H, W, {HYPERSPECTRAL_BANDS}) in 8 bits, bands 400-710 nm"),
        CorpusModality("scene_graph", Storage("json"), "graph", None,
                       "objects and relations: {nodes: [{size, colour, class}], edges: [{subject, relation, object}]}"),
        CorpusModality("table", Storage("json"), "table", None, "rows: [{column: number or words}]"),
    ]
}

# ----------------------------------------------------------------------------- model modalities
_TEXT_VOCAB = 30_000  # one WordPiece vocabulary shared by every sequence modality (REFERENCE.md)
_IMAGE, _MLP, _WORDPIECE = "vqvae_image", "vqvae_mlp", "wordpiece"
# frames of a video clip: the scenes render, the tokenizer and the video kind all read it here
VIDEO_FRAMES = 8
_POINT, _SERIES, _VIDEO, _SPEECH = "vqvae_point", "vqvae_series", "vqvae_video", "vqvae_speech"

MODALITIES: dict[str, Modality] = {
    m.key: m
    for m in [
        Modality("rgb", Kind.PIXELS, "rgb", None, None, input_only=True),
        Modality("tok_rgb", Kind.IMAGE, "rgb", _IMAGE, 16384),
        Modality("tok_depth", Kind.IMAGE, "depth", _IMAGE, 8192),
        Modality("tok_normal", Kind.IMAGE, "normal", _IMAGE, 8192),
        Modality("tok_semseg", Kind.IMAGE, "semseg", _IMAGE, 4096),
        Modality("tok_clip", Kind.IMAGE, "clip", _IMAGE, 8192),
        Modality("tok_dinov2", Kind.IMAGE, "dinov2", _IMAGE, 8192),
        Modality("tok_imagebind", Kind.IMAGE, "imagebind", _IMAGE, 8192),
        Modality("tok_dinov2_global", Kind.GLOBAL, "dinov2_global", _MLP, 8192, max_tokens=16),
        Modality("tok_imagebind_global", Kind.GLOBAL, "imagebind_global", _MLP, 8192, max_tokens=16),
        Modality("tok_caption_global", Kind.GLOBAL, "caption_global", _MLP, 8192, max_tokens=16),
        Modality("tok_canny_edge", Kind.IMAGE, "canny_edge", _IMAGE, 8192),
        Modality("tok_sam_edge", Kind.IMAGE, "sam_edge", _IMAGE, 8192),
        Modality("sam_instance", Kind.SEQUENCE, "sam_instance", _WORDPIECE, _TEXT_VOCAB, max_tokens=290),
        Modality("human_poses", Kind.SEQUENCE, "human_poses", _WORDPIECE, _TEXT_VOCAB, max_tokens=275),
        Modality("caption", Kind.SEQUENCE, "caption", _WORDPIECE, _TEXT_VOCAB, max_tokens=256),
        Modality("t5_caption", Kind.EMBEDDING_SEQUENCE, "t5_caption", None, None, max_tokens=77,
                 input_only=True, dim=384),
        Modality("det", Kind.SEQUENCE, "det", _WORDPIECE, _TEXT_VOCAB, max_tokens=256),
        Modality("color_palette", Kind.SEQUENCE, "color_palette", _WORDPIECE, _TEXT_VOCAB, max_tokens=23),
        Modality("metadata", Kind.SEQUENCE, "metadata", _WORDPIECE, _TEXT_VOCAB, max_tokens=40),
        # 64 groups (Point-BERT's count for 1024 points) x (cell of 8^3, shape code of 512)
        Modality("tok_point_cloud", Kind.POINT_CLOUD, "point_cloud", _POINT, 1024, max_tokens=128),
        # 8 patches of 8 samples x 2 codes of 512
        Modality("tok_imu", Kind.TIME_SERIES, "imu", _SERIES, 512, max_tokens=16),
        # 8 frames of tok_rgb's grid (196 tokens at full scale, 64 at the cpu scale's): a token corpus states it
        Modality("tok_video", Kind.VIDEO, "video", _VIDEO, 16384, max_tokens=VIDEO_FRAMES * 196),
        # 8 s of log-mel frames (50 a second), 50 patches of 8 frames x 2 codes of 512
        Modality("tok_speech", Kind.TIME_SERIES, "speech", _SPEECH, 512, max_tokens=100),
        # image-like beyond RGB: one ViT VQ-VAE each, the hyperspectral one taking all its bands in
        Modality("tok_xray", Kind.IMAGE, "xray", _IMAGE, 8192),
        Modality("tok_thermal", Kind.IMAGE, "thermal", _IMAGE, 8192),
        Modality("tok_hyperspectral", Kind.IMAGE, "hyperspectral", _IMAGE, 8192),
        # a scene's 4 objects and 12 edges are ~90 tokens; a table's 4 rows of 8 cells ~70
        Modality("scene_graph", Kind.SEQUENCE, "scene_graph", _WORDPIECE, _TEXT_VOCAB, max_tokens=256),
        Modality("table", Kind.SEQUENCE, "table", _WORDPIECE, _TEXT_VOCAB, max_tokens=256),
    ]
}


class UnknownModalityError(LookupError):
    """A modality name that no registry table knows."""


def _lookup(table: dict, name: str, what: str):
    try:
        return table[name]
    except KeyError:
        raise UnknownModalityError(
            f"unknown {what} {name!r}; known: {', '.join(sorted(table))}"
        ) from None


def corpus_modality(name: str) -> CorpusModality:
    """The corpus entry ``name``, or a one-line error that lists the known ones."""
    return _lookup(CORPUS, name, "corpus modality")


def get_modality(name: str) -> Modality:
    """The model modality ``name`` (full scale), or a one-line error that lists the known ones."""
    return _lookup(MODALITIES, name, "modality")


def readers(source: str, names: list[str]) -> list[str]:
    """The modalities of ``names`` that read corpus series ``source``: what one value of it conditions
    (a model reading RGB as pixels and as tokens is given both)."""
    return [n for n in names if get_modality(n).source == source]


def parse_modalities(spec: str | list[str], table: dict | None = None) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> validated names (default table: the corpus)."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    table = CORPUS if table is None else table
    what = "corpus modality" if table is CORPUS else "modality"
    return [_lookup(table, n, what).key for n in names if n]


# Named scales, beside the registry so that no other module writes sizes as literals: the
# reference's (224 px in 16 px patches, 196 tokens per image) and this project's CPU scale (64 px in
# 8 px patches, 64 tokens: the demo and the tests' tiny models).
SCALE_PRESETS: dict[str, dict] = {"full": dict(image_size=224, patch_size=16), "cpu": dict(image_size=64, patch_size=8)}


@dataclass
class ModalityScale:
    """Image size, patch size and vocabularies of one configuration (defaults: full scale).

    ``patch_sizes`` overrides the patch of single modalities (the reference tokenizes DINOv2 and
    ImageBind features with 14 px patches, 256 tokens at 224 px: ``{"tok_dinov2": 14, ...}``);
    ``vocab_sizes`` overrides vocabularies by modality key.
    """

    image_size: int = SCALE_PRESETS["full"]["image_size"]
    patch_size: int = SCALE_PRESETS["full"]["patch_size"]
    patch_sizes: dict[str, int] = field(default_factory=dict)
    vocab_sizes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        for key in [*self.patch_sizes, *self.vocab_sizes]:
            get_modality(key)
        sizes = {"image_size": self.image_size, "patch_size": self.patch_size, **self.patch_sizes, **self.vocab_sizes}
        bad = [f"{k} {v}" for k, v in sizes.items() if not isinstance(v, int) or v < 1]
        if bad:
            raise ValueError(f"sizes must be positive integers: {', '.join(bad)}")
        for key, patch in {"*": self.patch_size, **self.patch_sizes}.items():
            if self.image_size % patch:
                raise ValueError(f"image_size {self.image_size} is not a multiple of patch size {patch} ({key})")

    @classmethod
    def from_grids(cls, image_size: int, num_tokens: dict[str, int]) -> ModalityScale:
        """The scale at which ``image_size`` px images give ``num_tokens[name]`` tokens in modality
        ``name``: the most common patch is the default, the others per modality."""
        patches = {n: image_size // math.isqrt(t) for n, t in num_tokens.items()}
        counts = list(patches.values())
        common = max(sorted(set(counts)), key=counts.count)
        return cls(image_size, common, {n: p for n, p in patches.items() if p != common})

    def record(self) -> dict:
        """Image size and patches as a token corpus manifest keeps them (vocabularies are per tokenizer)."""
        return {"image_size": self.image_size, "patch_size": self.patch_size, "patch_sizes": dict(self.patch_sizes)}

    def resolve(self, name: str) -> Modality:
        """The modality ``name`` at this scale, with ``num_tokens`` and ``patch_size`` filled in for
        image kinds."""
        m = get_modality(name)
        changes = {}
        if name in self.vocab_sizes:
            changes["vocab_size"] = self.vocab_sizes[name]
        if m.is_image:
            patch = self.patch_sizes.get(name, self.patch_size)
            changes["num_tokens"], changes["patch_size"] = (self.image_size // patch) ** 2, patch
        return replace(m, **changes)

    def resolve_all(self, names: list[str] | None = None) -> dict[str, Modality]:
        return {n: self.resolve(n) for n in (names if names is not None else MODALITIES)}


def named_scale(name: str, **changes) -> ModalityScale:
    """A fresh copy of the scale preset ``name`` (``full``, ``cpu``) with ``changes``."""
    return ModalityScale(**{**_lookup(SCALE_PRESETS, name, "scale"), **changes})
