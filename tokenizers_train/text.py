"""The ``wordpiece`` family: the shared vocabulary of the sequence modalities, learned from a corpus.

WordPiece is counted, not trained by gradient descent, so this family does not use the shared loop:
Hugging Face's ``WordPieceTrainer`` learns word pieces from the corpus captions, the class names of the
manifest and the labels found in ``det``, the words of scene graphs and tables, and the metadata field
names (plus any ``extra_text`` files), with every reserved token of :mod:`fourm.tokenization.text` given
as a special token so it stays whole. One :class:`~fourm.tokenization.text.SequenceTokenizer` folder is
written per sequence modality of the corpus (``out/caption``, ``out/det`` ...); all hold the same
vocabulary and each loads on its own. The instance-mask and pose codes come from trained coders when the
tokenizers folder has them (``out/parts/sam_instance_mask``, ``out/parts/pose_vqvae``: train those
first) and ``mask_coder`` / ``pose_coder`` say ``auto``, else from the grid fallbacks; a trained coder
is stored inside the folder of the modality that uses it. A summary (token counts, truncation, encode
speed, round-trip quality, the coders used) goes to ``out/wordpiece_stats.json``.
A table's schema (its columns, each number column's range) is the built-in scenes' when the corpus's
tables have their columns, else read from the corpus's tables (``table_columns`` in the config sets it).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, trainers
from tqdm import tqdm

from fourm.data.corpus import CorpusReader, read_manifest
from fourm.io import write_json
from fourm.tokenization.bins import NUM_BINS
from fourm.tokenization.coders import MASK_CODERS, POSE_CODERS
from fourm.tokenization.serializers import (
    METADATA_FIELDS,
    NODE_FIELDS,
    SERIALIZERS,
    TABLE_BINS,
    default_columns,
    infer_columns,
)
from fourm.tokenization.text import SequenceTokenizer, TextConfig, alphabet, new_tokenizer, reserved_tokens
from fourm.tokenization.words import normalize_text, split_words
from tokenizers_train.data import tokenizer_dir

log = logging.getLogger(__name__)


@dataclass
class Config:
    family: str = "wordpiece"
    corpus: str | None = None
    vocab_size: int = 8192  # 30000 at full scale (REFERENCE.md)
    min_frequency: int = 2  # pieces seen fewer times are not learned
    num_mask_codes: int = 1024  # code tokens reserved for the instance-mask tokenizer
    num_pose_codes: int = 1024  # ... and for the pose tokenizer
    # a name in MASK_CODERS / POSE_CODERS (grid, vqvae: the trained one in out/parts), or auto: the
    # trained coder when out/parts has it, the grid otherwise
    mask_coder: str = "auto"
    pose_coder: str = "auto"
    # levels per box coordinate (det, sam_instance, human_poses): 1000 as 4M-21 at 224 px; a small model
    # learns the value tokens from ~1000 scenes of 64 px only with far fewer: 65 (the pixel edges, boxes
    # exact) or 64 (one per pixel, within half a pixel)
    box_bins: int = NUM_BINS
    # the table's schema, [[column, [lo, hi] or null], ...]; null: the scenes' when the corpus's tables have
    # their columns, else read from the corpus (fourm.tokenization.serializers.infer_columns)
    table_columns: list | None = None
    table_bins: int = TABLE_BINS  # levels per number column of a table
    modalities: list[str] = field(default_factory=list)  # empty: every sequence modality of the corpus
    limit: int | None = None  # samples read from the corpus; None: all
    extra_text: list[str] = field(default_factory=list)  # text files (one document a line) to learn from too

    def __post_init__(self):
        if self.family != "wordpiece":
            raise ValueError(f"family must be 'wordpiece', got {self.family!r}")


def training_text(values: dict[str, list], manifest: dict, extra_text: list[str] = ()) -> list[str]:
    """Captions, class names (manifest and det labels), the words of scene graphs and tables, metadata field
    names and extra documents."""
    texts = [str(c) for c in values.get("caption", [])]
    names = {n for names in manifest.get("classes", {}).values() for n in names}
    names |= {d["label"] for objects in values.get("det", []) for d in objects}
    for graph in values.get("scene_graph", []):
        names |= {str(node[f]) for node in graph.get("nodes", []) for f in NODE_FIELDS if node.get(f) is not None}
        names |= {str(edge["relation"]) for edge in graph.get("edges", [])}
    names |= {cell for rows in values.get("table", []) for row in rows for cell in row.values()
              if isinstance(cell, str)}
    texts += sorted(names) + [name.replace("_", " ") for name in METADATA_FIELDS]
    for path in extra_text:
        texts += [line for line in Path(path).read_text().splitlines() if line.strip()]
    return texts


def learn_pieces(texts: list[str], cfg: Config) -> list[str]:
    """Word pieces learned from ``texts``, most useful first (reserved tokens left out).

    Every continuation character ``##c`` of the texts is handed to the trainer up front: the trainer
    otherwise numbers them in hash-map order, which breaks ties between equally frequent merges
    differently from run to run (huggingface/tokenizers#1794). With fixed ids, training is repeatable.
    """
    chars = set()
    for text in texts:
        chars.update(c for word in split_words(text) for p in word if len(p) > 1 or p.isalnum() for c in p)
    continued = [f"##{c}" for c in sorted(chars)]
    reserved = reserved_tokens(cfg.num_mask_codes, cfg.num_pose_codes)
    tok = new_tokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency, show_progress=False,
        special_tokens=[AddedToken(t, normalized=False, special=True) for t in reserved + continued],
        continuing_subword_prefix="##")
    tok.train_from_iterator(texts, trainer, length=len(texts))
    kept = set(reserved)
    return [t for t, _ in sorted(tok.get_vocab().items(), key=lambda item: item[1]) if t not in kept]


def resolve_coders(cfg: Config, out: Path) -> dict[str, tuple[str, object | None]]:
    """``{"mask_coder": (name, coder or None), "pose_coder": ...}``: the trained coders loaded from
    ``out/parts`` (None for the grid, which the tokenizer builds itself)."""
    chosen = {}
    for key, name, table in (("mask_coder", cfg.mask_coder, MASK_CODERS), ("pose_coder", cfg.pose_coder, POSE_CODERS)):
        trained = [cls for cls in table.values() if hasattr(cls, "from_pretrained")]
        if name == "auto":
            found = [cls for cls in trained if (tokenizer_dir(out, cls.part) / "config.json").is_file()]
            name = found[0].name if found else "grid"
        if name not in table:
            raise ValueError(f"unknown {key} {name!r}; known: auto, {', '.join(sorted(table))}")
        cls = table[name]
        if not hasattr(cls, "from_pretrained"):
            chosen[key] = (name, None)
            continue
        folder = tokenizer_dir(out, cls.part)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{key} {name!r} needs the trained {cls.part} tokenizer in {folder}: train it "
                                    f"first (configs/tokenizers/{cls.config_file}) or use grid")
        chosen[key] = (name, cls.from_pretrained(folder))
        log.info("%s: %s from %s", key, name, folder)
    return chosen


def load_values(corpus: str, modalities: list[str] | None, limit: int | None, progress: bool = True):
    """(values by sequence modality, manifest) of the corpus's sequence series."""
    manifest = read_manifest(corpus)
    present = [m for m in SERIALIZERS if m in manifest["modalities"]]
    names = modalities or present
    missing = [m for m in names if m not in present]
    if missing:
        raise ValueError(f"{corpus} has no sequence series {', '.join(missing)}; it has: {', '.join(present)}")
    if not names:
        raise ValueError(f"{corpus} holds no sequence modality ({', '.join(SERIALIZERS)})")
    reader = CorpusReader(corpus, names)
    total = len(reader) if limit is None else min(limit, len(reader))
    values: dict[str, list] = {m: [] for m in names}
    for i, sample in enumerate(tqdm(reader, total=total, desc="load", unit="sample", disable=not progress)):
        if i == total:
            break
        for m in names:
            values[m].append(sample[m])
    return values, manifest


def measure(tokenizer, values: list, batch_size: int = 256) -> dict:
    """Token counts, truncation and encode speed of ``values``, and how well they round-trip."""
    tokenizer.encode(values[:8])  # warm up: lazy imports are not encoding time
    start = time.perf_counter()
    ids = [row for i in range(0, len(values), batch_size) for row in tokenizer.encode(values[i:i + batch_size])]
    seconds = time.perf_counter() - start
    lengths = np.array([len(row) for row in ids])
    full = np.array([len(row) for row in tokenizer.encode(values, truncate=False)])
    decoded = tokenizer.decode(ids)
    stats = {"samples": len(values), "mean_tokens": round(float(lengths.mean()), 2), "max_tokens": int(lengths.max()),
             "truncated": int((full > tokenizer.max_tokens).sum()),
             "encode_samples_per_s": round(len(values) / max(seconds, 1e-9), 1)}
    stats.update(round_trip(tokenizer.modality, values, decoded, tokenizer))
    return stats


def table_columns(cfg: Config, tables: list) -> list[list]:
    """The schema the table tokenizer is given (see the module notes)."""
    if cfg.table_columns is not None:
        return cfg.table_columns
    scenes = default_columns()
    found = {name for rows in tables for row in rows for name in row}
    return scenes if found <= {name for name, _ in scenes} else infer_columns(tables)


def table_errors(values: list, decoded: list, columns: list[list], bins: int) -> dict:
    """The share of tables that come back exactly (the schema's cells of every row: numbers within half a
    level of their column's binning, words normalised) and the largest number error, in levels."""
    spans = {name: span for name, span in columns}
    worst, exact = 0.0, []
    for rows, back in zip(values, decoded, strict=True):
        same = len(rows) == len(back)
        for row, got in zip(rows, back, strict=False):
            kept = {n: v for n, v in row.items() if n in spans and v is not None}
            same = same and set(kept) == set(got)
            for name, value in kept.items():
                span = spans[name]
                if span is None:
                    same = same and got.get(name) == normalize_text(str(value))
                elif name in got:
                    level = (span[1] - span[0]) / (bins - 1)
                    error = abs(min(max(float(value), span[0]), span[1]) - got[name])
                    # 1e-6: decoded numbers are rounded to 6 places, and a value halfway between levels is
                    # half a level off either way
                    worst, same = max(worst, error / level), same and error <= level / 2 + 1e-6
        exact.append(same)
    return {"exact_within_bins": float(np.mean(exact)) if exact else 1.0, "max_error_levels": round(worst, 4)}


def round_trip(modality: str, values: list, decoded: list, tokenizer=None) -> dict:
    """One quality figure per modality: exact captions, box error, palette exactness, instance IoU, exact
    scene graphs, tables within their binning."""
    if modality == "scene_graph":
        return {"exact": float(np.mean([d == v for v, d in zip(values, decoded, strict=True)]))}
    if modality == "table":
        config = tokenizer.config
        return table_errors(values, decoded, config.table_columns, config.table_bins)
    if modality == "caption":
        return {"exact": float(np.mean([d == normalize_text(v) for v, d in zip(values, decoded, strict=True)]))}
    if modality == "det":
        errors = [abs(a - b) for v, d in zip(values, decoded, strict=True) if len(v) == len(d)
                  for x, y in zip(sorted(o["box"] for o in v), sorted(o["box"] for o in d), strict=True)
                  for a, b in zip(x, y, strict=True)]
        return {"max_box_error": round(float(max(errors, default=0.0)), 6)}
    if modality == "color_palette":
        return {"exact": float(np.mean([d == [list(map(int, c)) for c in v] for v, d in zip(values, decoded,
                                                                                           strict=True)]))}
    if modality == "sam_instance":
        ious = [iou for v, d in zip(values, decoded, strict=True) for iou in instance_ious(v, d)]
        return {"mean_iou": round(float(np.mean(ious)), 4) if ious else None,
                "min_iou": round(float(np.min(ious)), 4) if ious else None}
    return {}


def instance_ious(ids: np.ndarray, decoded: np.ndarray) -> list[float]:
    """Per instance of ``ids``: the best IoU with an instance of ``decoded`` (same size)."""
    ids, decoded = np.asarray(ids), np.asarray(decoded)
    if ids.shape != decoded.shape:
        return []
    out = []
    for label in np.unique(ids)[1:]:
        mask = ids == label
        candidates = np.unique(decoded[mask])
        out.append(max((float((mask & (decoded == k)).sum() / (mask | (decoded == k)).sum())
                        for k in candidates if k), default=0.0))
    return out


def run(cfg: Config, out: Path, progress: bool = True) -> dict:
    """Learn the vocabulary from ``cfg.corpus`` and save one tokenizer per sequence modality under ``out``."""
    if cfg.corpus is None:
        raise ValueError("the wordpiece family needs a corpus (--corpus or corpus: in the config)")
    values, manifest = load_values(cfg.corpus, cfg.modalities or None, cfg.limit, progress)
    texts = training_text(values, manifest, cfg.extra_text)
    pieces = learn_pieces(texts, cfg)
    image_size = max(np.asarray(values["sam_instance"][0]).shape) if values.get("sam_instance") else 64
    coders = resolve_coders(cfg, Path(out))
    stats: dict = {"training_texts": len(texts), "learned_pieces": 0,
                   **{key: name for key, (name, _) in coders.items()}}
    for modality, vals in values.items():
        # a trained coder goes only where the serializer uses it; elsewhere the name stays grid
        used = {key: coders[key] if key in SERIALIZERS[modality].__dataclass_fields__ else ("grid", None)
                for key in coders}
        tok = SequenceTokenizer.from_vocabulary(
            TextConfig(modality, vocab_size=cfg.vocab_size, num_mask_codes=cfg.num_mask_codes,
                       num_pose_codes=cfg.num_pose_codes, mask_coder=used["mask_coder"][0],
                       pose_coder=used["pose_coder"][0], image_size=image_size, box_bins=cfg.box_bins,
                       table_columns=table_columns(cfg, values.get("table", [])), table_bins=cfg.table_bins), pieces,
            **{key: coder for key, (_, coder) in used.items() if coder is not None})
        tok.save_pretrained(Path(out) / modality)
        stats["vocab_size"] = tok.vocab_size
        stats["learned_pieces"] = sum(not tok.id_to_token(i).startswith("[unused")
                                      for i in range(_fixed_count(cfg), tok.vocab_size))
        stats[modality] = measure(tok, vals)
        log.info("%s: %s", modality, json.dumps(stats[modality]))
    write_json(Path(out) / "wordpiece_stats.json", stats)
    if progress:
        print(json.dumps(stats, indent=2))
    return stats


def _fixed_count(cfg: Config) -> int:
    return len(reserved_tokens(cfg.num_mask_codes, cfg.num_pose_codes)) + len(alphabet())
