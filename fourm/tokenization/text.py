"""The shared WordPiece vocabulary of every sequence modality, and :class:`SequenceTokenizer`.

4M-21 (arXiv 2406.09406) writes captions, boxes, palettes, metadata, SAM instances and poses over
one WordPiece vocabulary (BERT's uncased scheme: lower case, accents stripped, punctuation split off)
that also holds 200 sentinels for T5-style span masking, 4 x 1000 value tokens and code tokens.

Layout of the ids, fixed by the config so every trained vocabulary agrees on them::

    0 [PAD]  1 [UNK]  2 [SOS]  3 [EOS]
    4 .. 203                  [S_0] .. [S_199]             sentinels, in order
    204 .. 4203               v0=0 .. v0=999 .. v3=999     value tokens
    then                      mask=0 .. mask=M-1           instance-mask codes (num_mask_codes)
                              pose=0 .. pose=P-1           pose codes (num_pose_codes)
                              color=0 .. color=7           palette sizes
                              original_width .. occlusion_score   metadata field names
                              a .. z 0 .. 9 punctuation, ##a .. ##9: every ASCII word can be spelled
                              learned word pieces (captions, class names)
                              [unused_k] up to vocab_size

All reserved tokens are added tokens of the Hugging Face tokenizer, so they are one id each and
never split. :class:`SequenceTokenizer` pairs the vocabulary with one modality's serializer
(:mod:`fourm.tokenization.serializers`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fourm.io import atomic_dir
from fourm.modalities import SCALE_PRESETS, get_modality
from fourm.pretrained import CONFIG_NAME, FORMAT_VERSION, build_config, read_config, register_pretrained, resolve_path
from fourm.tokenization.bins import NUM_BINS
from fourm.tokenization.coders import MASK_CODERS, POSE_CODERS, MaskCoder, PoseCoder
from fourm.tokenization.serializers import (
    MAX_COLORS,
    METADATA_FIELDS,
    SERIALIZERS,
    TABLE_BINS,
    default_columns,
    get_serializer,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

PAD, UNK, SOS, EOS = "[PAD]", "[UNK]", "[SOS]", "[EOS]"
NUM_SENTINELS = 200
TOKENIZER_NAME = "tokenizer.json"
MAX_CHARS_PER_WORD = 100  # longer words become [UNK], as in BERT
_SPECIAL = (PAD, UNK, SOS, EOS)


def sentinel(i: int) -> str:
    return f"[S_{i}]"


@dataclass
class TextConfig:
    """One sequence modality's tokenizer: the shared vocabulary's shape plus the serializer settings.

    Args:
        modality: sequence modality key (caption, det, color_palette, metadata, sam_instance, human_poses,
            scene_graph, table).
        vocab_size: ids in the vocabulary (reserved + learned + ``[unused_k]`` padding): the embedding size.
        num_mask_codes / num_pose_codes: code tokens reserved for the mask and pose tokenizers.
        mask_coder / pose_coder: names in ``MASK_CODERS`` / ``POSE_CODERS``: ``grid`` is built from the
            number of codes; ``vqvae`` is a trained model (:mod:`fourm.tokenization.coders`) handed to
            :class:`SequenceTokenizer` and saved with it in ``<folder>/mask_coder`` / ``pose_coder``.
            A coder handed over replaces the named one; registered under its ``name`` it is rebuilt on
            loading too.
        image_size: side of the id maps ``sam_instance`` decodes to.
        box_bins: levels per box coordinate (det, sam_instance, human_poses), 2 .. 1000: the value
            tokens ``v0=0 .. v3=box_bins-1`` of the (unchanged) vocabulary. Fewer levels are fewer
            tokens for a small model to learn; palettes and metadata keep 1000.
        table_columns / table_bins: the table's schema and levels per number column
            (:class:`fourm.tokenization.serializers.TableSerializer`); default: the built-in scenes' table.
    """

    modality: str
    vocab_size: int = 8192
    num_mask_codes: int = 1024
    num_pose_codes: int = 1024
    mask_coder: str = "grid"
    pose_coder: str = "grid"
    image_size: int = SCALE_PRESETS["cpu"]["image_size"]
    box_bins: int = NUM_BINS
    table_columns: list = dataclasses.field(default_factory=default_columns)
    table_bins: int = TABLE_BINS

    def __post_init__(self):
        if self.modality not in SERIALIZERS:
            raise ValueError(f"{self.modality!r} is no sequence modality; known: {', '.join(sorted(SERIALIZERS))}")
        MASK_CODERS.check(self.mask_coder)
        POSE_CODERS.check(self.pose_coder)
        floor = len(reserved_tokens(self.num_mask_codes, self.num_pose_codes)) + len(alphabet())
        if self.vocab_size < floor:
            raise ValueError(f"vocab_size {self.vocab_size} is below the {floor} reserved and alphabet tokens")
        if not 2 <= self.box_bins <= NUM_BINS:
            raise ValueError(f"box_bins must be in [2, {NUM_BINS}] (value tokens per coordinate), got {self.box_bins}")


def _untrained_coder(kind: str, cls: type, num_codes: int):
    if hasattr(cls, "from_pretrained"):
        raise ValueError(f"the {kind} coder {cls.name!r} is a trained model: pass {kind}_coder= (e.g. "
                         f"{cls.__name__}.from_pretrained(<tokenizers>/parts/{cls.part})) or load a saved tokenizer")
    return cls(num_codes)


def reserved_tokens(num_mask_codes: int = 1024, num_pose_codes: int = 1024) -> list[str]:
    """Specials, sentinels, value, code, palette-size and field tokens, in id order."""
    return [*_SPECIAL, *(sentinel(i) for i in range(NUM_SENTINELS)),
            *(f"v{a}={k}" for a in range(4) for k in range(NUM_BINS)),
            *(f"mask={k}" for k in range(num_mask_codes)), *(f"pose={k}" for k in range(num_pose_codes)),
            *(f"color={n}" for n in range(MAX_COLORS + 1)), *METADATA_FIELDS]


def alphabet() -> list[str]:
    """Lower-case ASCII letters, digits and punctuation, word-initial and continued (``##x``)."""
    alnum = string.ascii_lowercase + string.digits
    return [*alnum, *string.punctuation, *(f"##{c}" for c in alnum)]


def build_vocabulary(learned: list[str], vocab_size: int, num_mask_codes: int = 1024,
                     num_pose_codes: int = 1024) -> list[str]:
    """Reserved tokens, the alphabet, then ``learned`` pieces (first ones kept) and padding: ``vocab_size`` tokens."""
    vocab = reserved_tokens(num_mask_codes, num_pose_codes) + alphabet()
    if len(vocab) > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is below the {len(vocab)} reserved and alphabet tokens")
    seen = set(vocab)
    for piece in learned:
        if len(vocab) == vocab_size:
            break
        if piece not in seen and not piece.startswith("[unused"):
            seen.add(piece)
            vocab.append(piece)
    return vocab + [f"[unused_{k}]" for k in range(vocab_size - len(vocab))]


def new_tokenizer(vocab: list[str] | None = None, reserved: list[str] | tuple = ()) -> Tokenizer:
    """A Hugging Face WordPiece tokenizer with BERT's uncased normaliser and pre-tokenizer.

    ``vocab``: tokens in id order (see :func:`build_vocabulary`); None gives an empty model to train.
    ``reserved`` tokens become added tokens, matched whole before any splitting.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

    model = models.WordPiece({t: i for i, t in enumerate(vocab)} if vocab else {}, unk_token=UNK,
                             max_input_chars_per_word=MAX_CHARS_PER_WORD)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=True,
                                                lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    brackets = [t for t in reserved if t.startswith("[")]
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in brackets])
    # value, code and field tokens: whole words only, so "contrasting" is not "contrast" + "ing"
    tok.add_tokens([AddedToken(t, single_word=True, normalized=True) for t in reserved if not t.startswith("[")])
    return tok


@register_pretrained("wordpiece")
class SequenceTokenizer:
    """One sequence modality over the shared WordPiece vocabulary.

    ``encode(values)`` gives one id list per value, ending with ``[EOS]`` (no ``[SOS]``: the model adds
    what its decoder needs). Sequences longer than the modality's ``max_tokens`` (from the registry,
    ``[EOS]`` included) are cut at the last whole unit -- object, colour, field, instance, person,
    caption word -- that fits; only a first unit longer than the budget is cut inside.

    ``decode(ids)`` stops at the first ``[EOS]``, skips ``[PAD]``, ``[SOS]``, sentinels and padding
    tokens, joins word pieces and lets the serializer parse the words; what does not parse is dropped.
    Ids outside ``[0, vocab_size)`` are an error.
    """

    def __init__(self, config: TextConfig | str, vocab: Tokenizer, *, mask_coder: MaskCoder | None = None,
                 pose_coder: PoseCoder | None = None):
        config = TextConfig(config) if isinstance(config, str) else config
        if mask_coder is not None and MASK_CODERS.get(mask_coder.name) is type(mask_coder):
            config = dataclasses.replace(config, mask_coder=mask_coder.name)
        if pose_coder is not None and POSE_CODERS.get(pose_coder.name) is type(pose_coder):
            config = dataclasses.replace(config, pose_coder=pose_coder.name)
        self.config, self.modality, self._vocab = config, config.modality, vocab
        self.max_tokens = get_modality(config.modality).max_tokens
        self._tokens = [vocab.id_to_token(i) for i in range(vocab.get_vocab_size())]
        self._ids = {t: i for i, t in enumerate(self._tokens)}
        if len(self._tokens) != config.vocab_size:
            raise ValueError(f"tokenizer has {len(self._tokens)} tokens, the config says {config.vocab_size}")
        reserved = reserved_tokens(config.num_mask_codes, config.num_pose_codes)
        if self._tokens[:len(reserved)] != reserved:
            raise ValueError("tokenizer's reserved tokens are not in the layout the config describes")
        self._skip = {vocab.token_to_id(t) for t in (PAD, SOS)} | set(self.sentinel_ids) | {
            i for i, t in enumerate(self._tokens) if t.startswith("[unused")}
        # ids no word piece may extend: specials, sentinels, value and code tokens (field names are words)
        self._whole = set(range(len(reserved) - len(METADATA_FIELDS)))
        self.mask_coder = mask_coder or _untrained_coder("mask", MASK_CODERS[config.mask_coder], config.num_mask_codes)
        self.pose_coder = pose_coder or _untrained_coder("pose", POSE_CODERS[config.pose_coder], config.num_pose_codes)
        for coder, room in ((self.mask_coder, config.num_mask_codes), (self.pose_coder, config.num_pose_codes)):
            if coder.vocab_size > room:
                raise ValueError(f"{type(coder).__name__} has {coder.vocab_size} codes, the vocabulary {room}")
        self.serializer = get_serializer(config.modality, mask_coder=self.mask_coder, pose_coder=self.pose_coder,
                                         image_size=config.image_size, box_bins=config.box_bins,
                                         table_columns=config.table_columns, table_bins=config.table_bins)

    # ----------------------------------------------------------------------------- ids the model needs
    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    @property
    def sos_id(self) -> int:
        return 2

    @property
    def eos_id(self) -> int:
        return 3

    @property
    def sentinel_ids(self) -> list[int]:
        return list(range(len(_SPECIAL), len(_SPECIAL) + NUM_SENTINELS))

    def token_to_id(self, token: str) -> int | None:
        return self._vocab.token_to_id(token)

    def id_to_token(self, i: int) -> str:
        return self._tokens[i]

    @property
    def hf_tokenizer(self) -> Tokenizer:
        return self._vocab

    # ----------------------------------------------------------------------------- encode / decode
    def encode(self, values: list[Any], truncate: bool = True) -> list[list[int]]:
        """A batch of corpus values -> one id list each, ending with [EOS] (and truncated, see the class notes)."""
        batched = getattr(self.serializer, "to_units_batch", None)  # serializers with a model behind them
        units = batched(list(values)) if batched else [self.serializer.to_units(v) for v in values]
        pieces = self._pieces({w for sample in units for unit in sample for w in unit})
        budget = self.max_tokens - 1 if truncate else None
        out = []
        for sample in units:
            ids: list[int] = []
            for unit in sample:
                unit_ids = [i for w in unit for i in pieces[w]]
                if budget is not None and len(ids) + len(unit_ids) > budget:
                    ids = ids or unit_ids[:budget]
                    break
                ids += unit_ids
            out.append([*ids, self.eos_id])
        return out

    def _pieces(self, words: set[str]) -> dict[str, list[int]]:
        """Word -> its ids. Serializer words are normalised and pre-split already, so a word of the
        vocabulary is its own id (WordPiece matches the longest piece first); only the others go
        through the Hugging Face tokenizer."""
        out = {w: [self._ids[w]] for w in words if w in self._ids}
        rest = sorted(words - out.keys())
        if rest:
            encodings = self._vocab.encode_batch([[w] for w in rest], is_pretokenized=True, add_special_tokens=False)
            out.update((w, enc.ids) for w, enc in zip(rest, encodings, strict=True))
        return out

    def decode(self, ids) -> list[Any]:
        """A batch of id lists (or a (B, N) array/tensor) -> values; see the class notes."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if ids and not hasattr(ids[0], "__iter__"):
            raise ValueError(f"{self.modality}: decode takes a batch (a list of id lists or a (B, N) array)")
        return [self.serializer.from_tokens(self.words(row)) for row in ids]

    def words(self, ids: list[int]) -> list[str]:
        """One id list -> the words it spells, up to [EOS], word pieces joined."""
        words: list[str] = []
        glue = False  # may the next ## piece extend the last word?
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"{self.modality}: id {i} is outside the vocabulary [0, {self.vocab_size})")
            if i == self.eos_id:
                break
            if i in self._skip:
                continue
            token = self._tokens[i]
            if token.startswith("##") and len(token) > 2:
                if glue:
                    words[-1] += token[2:]
                else:
                    words.append(token[2:])
                    glue = True
                continue
            words.append(token)
            glue = i not in self._whole
        return words

    # ----------------------------------------------------------------------------- save / load
    def save_pretrained(self, path: str | os.PathLike) -> Path:
        for coder, name, table in ((self.mask_coder, self.config.mask_coder, MASK_CODERS),
                                   (self.pose_coder, self.config.pose_coder, POSE_CODERS)):
            if type(coder) is not table[name]:
                raise ValueError(f"{type(coder).__name__} is not registered (MASK_CODERS / POSE_CODERS): "
                                 "a saved folder could not rebuild it")
        config = {"format_version": FORMAT_VERSION, "class": self.pretrained_name,
                  "config": dataclasses.asdict(self.config)}
        with atomic_dir(path) as tmp:
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            self._vocab.save(str(tmp / TOKENIZER_NAME))
            for kind, coder in (("mask", self.mask_coder), ("pose", self.pose_coder)):
                if hasattr(coder, "save_pretrained"):  # trained coders travel with the tokenizer
                    coder.save_pretrained(tmp / f"{kind}_coder")
        return Path(path)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, device: str = "cpu") -> SequenceTokenizer:
        """``device`` is accepted for :func:`fourm.pretrained.load_pretrained` and unused."""
        from tokenizers import Tokenizer

        path = resolve_path(path_or_id)
        saved = read_config(path)
        if saved["class"] != cls.pretrained_name:
            raise ValueError(f"{path} holds a {saved['class']}, not a {cls.pretrained_name}")
        config = build_config(TextConfig, saved["config"])
        trained = {}
        for kind, name, table in (("mask", config.mask_coder, MASK_CODERS), ("pose", config.pose_coder, POSE_CODERS)):
            if hasattr(table[name], "from_pretrained"):
                if not (path / f"{kind}_coder").is_dir():
                    raise FileNotFoundError(f"{path}: the config names the trained {kind} coder {name!r} "
                                            f"but {kind}_coder/ is missing")
                trained[f"{kind}_coder"] = table[name].from_pretrained(path / f"{kind}_coder")
        return cls(config, Tokenizer.from_file(str(path / TOKENIZER_NAME)), **trained)

    @classmethod
    def from_vocabulary(cls, config: TextConfig | str, learned: list[str], **coders) -> SequenceTokenizer:
        """A tokenizer from learned word pieces (most useful first): reserved + alphabet + ``learned`` + padding;
        ``coders``: ``mask_coder`` / ``pose_coder`` as for the constructor."""
        config = TextConfig(config) if isinstance(config, str) else config
        vocab = build_vocabulary(learned, config.vocab_size, config.num_mask_codes, config.num_pose_codes)
        return cls(config, new_tokenizer(vocab, reserved_tokens(config.num_mask_codes, config.num_pose_codes)),
                   **coders)

    def __repr__(self) -> str:
        return (f"SequenceTokenizer({self.modality!r}, vocab_size={self.vocab_size}, "
                f"max_tokens={self.max_tokens})")
