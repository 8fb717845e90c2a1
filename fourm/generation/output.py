"""``fourm generate``: raw inputs from the command line, generated modalities to files and one grid.

Each generated modality is written in its corpus format (``fourm.data.codecs``: PNG for images --
depth as 16-bit millimetres, normals and colours as 8-bit --, JSON for boxes and other structures,
TXT for captions, NPY for vectors), plus ``tokens.json`` (the generated ids) and ``grid.png``: one
row per sample, the inputs then the targets, drawn by ``fourm.viz.render``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from fourm.config import load_config
from fourm.data.audio import AUDIO_SUFFIXES, read_audio
from fourm.data.codecs import IMAGE_SUFFIXES, CorruptSampleError, decode, encode
from fourm.generation.pipeline import Generated, Pipeline
from fourm.generation.schedule import PARALLEL_SCHEMES, SEQUENCE_SCHEMES, Target
from fourm.io import atomic_path, write_json
from fourm.kinds import handler
from fourm.modalities import CORPUS, MODALITIES
from fourm.viz.render import image_grid, render


def corpus_key(key: str) -> str:
    """The corpus entry a condition or target key reads (``tok_depth`` -> ``depth``)."""
    if key in CORPUS:
        return key
    if key in MODALITIES:
        return MODALITIES[key].source
    raise ValueError(f"unknown modality {key!r}; known: {', '.join(sorted({*CORPUS, *MODALITIES}))}")


def read_input(spec: str, flag: str = "--input") -> tuple[str, Any]:
    """``key=value`` -> (key, raw value), read in the corpus' units. ``flag`` names the option in errors.

    For text modalities the value is the text itself, always: ``caption=@notes.txt`` reads a file.
    (Trying the value as a path first made a caption that happened to name a file read that file,
    and a long caption fail as a too-long file name.) Other modalities take a file (image, .json,
    .npy, or a .wav / .flac / .ogg clip, read as 16 kHz mono ``int16`` as the corpus keeps speech), with
    or without the ``@``.
    """
    key, sep, text = spec.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"{flag} {spec!r} is not of the form modality=value")
    source = corpus_key(key)
    storage = CORPUS[source].storage
    if storage.ext == "txt" and not text.startswith("@"):  # text is literal: a caption never names a file
        if not text.strip():
            raise ValueError(f"{flag} {key}: the text is empty; give words, or @FILE to read them from a file")
        return key, text
    path = Path(text.removeprefix("@")).expanduser()
    if not path.is_file():
        raise ValueError(f"{flag} {key}: {_short(text)!r} is not a readable file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return key, np.load(path, allow_pickle=False)
        if suffix == ".json":
            return key, json.loads(path.read_text())
        if suffix in AUDIO_SUFFIXES:
            return key, read_audio(path)
        if storage.ext == "txt":
            words = path.read_text().strip()
            if not words:
                raise ValueError(f"{flag} {key}: {path} holds no text")
            return key, words
        if suffix in IMAGE_SUFFIXES:
            if storage.ext == "png" and suffix == ".png" and storage.channels == 1:
                return key, decode(path.read_bytes(), storage)  # depth in mm, class ids: the corpus' own PNGs
            with Image.open(path) as image:
                return key, np.asarray(image.convert("RGB" if storage.channels == 3 else "L"))
    except (OSError, ValueError, RuntimeError, CorruptSampleError) as e:  # RuntimeError: soundfile's on bad audio
        raise ValueError(f"{flag} {key}: cannot read {path}: {str(e).splitlines()[0]}") from None
    raise ValueError(f"{flag} {key}: {path} is not an image, audio, .json or .npy file")


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."


def parse_targets(pipe: Pipeline, targets: list[str], schedule: str | os.PathLike | None,
                  overrides: list[str], defaults: dict) -> list[Target]:
    """Targets from ``--target`` names or a YAML schedule (``targets: [{modality: ..., steps: ...}]``),
    with ``name.field=value`` overrides and flag ``defaults`` (a default scheme applies to the targets
    of kinds that take it, a default temperature schedule to image and global targets: a caption's is
    set by ``caption.temperature_schedule=...``)."""
    entries: list[dict] = []
    if schedule is not None:
        if not Path(schedule).is_file():
            raise FileNotFoundError(f"schedule file {schedule} does not exist")
        try:
            data = yaml.safe_load(Path(schedule).read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ValueError(f"schedule file {schedule} is not valid YAML: {' '.join(str(e).split())}") from None
        listed = data.get("targets") if isinstance(data, dict) else data
        if not isinstance(listed, list):
            raise ValueError(f"{schedule}: expected a list of targets (or a 'targets:' list)")
        entries = [{"modality": e} if isinstance(e, str) else dict(e) for e in listed]
    entries += [{"modality": t} for t in targets]
    if not entries:
        raise ValueError("no targets: give --target or --schedule")
    per_target: dict[str, list[str]] = {}
    for item in overrides:
        name, dot, setting = item.partition(".")
        if not dot or "=" not in setting:
            raise ValueError(f"override {item!r} is not of the form target.field=value")
        per_target.setdefault(pipe.target_key(name), []).append(setting)
    out = []
    for entry in entries:
        name = pipe.target_key(str(entry.pop("modality")))
        sequence = handler(pipe.specs[name]).autoregressive
        kind_schemes = SEQUENCE_SCHEMES if sequence else PARALLEL_SCHEMES
        flags = {k: v for k, v in defaults.items() if v is not None and (k != "scheme" or v in kind_schemes)
                 and not (k == "temperature_schedule" and sequence)}
        out.append(load_config(Target, None, per_target.pop(name, []), **{**flags, **entry, "modality": name}))
    if per_target:
        raise ValueError(f"overrides name {', '.join(per_target)}, which are not targets")
    return out


def write_outputs(pipe: Pipeline, inputs: dict[str, Any], result: dict[str, Generated], out: str | os.PathLike,
                  num_samples: int) -> list[Path]:
    """Files of every generated modality (a sub-folder per sample when there are several), tokens.json, grid.png."""
    out = Path(out)
    written = []
    for name, generated in result.items():
        if generated.values is None:
            continue
        storage = CORPUS[corpus_key(name)].storage
        for i, value in enumerate(generated.values):
            path = (out / f"{name}.{storage.ext}") if num_samples == 1 else (out / f"{i:03d}" / f"{name}.{storage.ext}")
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_bytes(encode(value, storage))
            written.append(path)
    tokens = {name: g.tokens.tolist() if hasattr(g.tokens, "tolist") else g.tokens for name, g in result.items()}
    write_json(out / "tokens.json", tokens)
    written.append(out / "tokens.json")

    shown = {k: _drawable(pipe, k, v) for k, v in inputs.items()}
    rows = []
    for i in range(num_samples):
        given = {k: (corpus_key(k), shown[k]) for k in inputs if shown[k] is not None}
        made = {n: (corpus_key(n), g.values[i]) for n, g in result.items() if g.values is not None}
        backdrop = {**dict(given.values()), **dict(made.values())}.get("rgb")  # boxes and poses are drawn on it
        cells = [*(given.get(k) for k in inputs), *(made.get(n) for n in result)]
        rows.append([None if c is None else render(c[0], c[1], size=192, rgb=backdrop) for c in cells])
    titles = [f"input: {k}" for k in inputs] + list(result)
    grid = image_grid(rows, column_titles=titles, row_titles=[f"#{i}" for i in range(num_samples)]
                      if num_samples > 1 else None)
    with atomic_path(out / "grid.png") as tmp:
        grid.save(tmp, format="PNG")
    written.append(out / "grid.png")
    return written


def _drawable(pipe: Pipeline, key: str, value):
    """An input as the grid draws it: a raw value as it is, token ids decoded by their tokenizer (None,
    an empty cell, where some are still to generate or no tokenizer is loaded): renderers draw values."""
    name = pipe.model_keys(key)[0]
    spec = pipe.specs[name]
    kind = handler(spec)
    if not kind.reads_as_tokens(spec, value):
        return value
    if kind.autoregressive:
        decoded = pipe.decode(name, [[int(t) for t in value]])
    else:
        ids = np.asarray(value, dtype=np.int64)
        decoded = None if (ids < 0).any() else pipe.decode(name, ids[None])
    return None if decoded is None else decoded[0]


def run_generate(model: str, tokenizers: str, inputs: list[str], targets: list[str], out: str | os.PathLike,
                 schedule: str | None = None, overrides: list[str] = (), seed: int = 0, num_samples: int = 1,
                 device: str = "cpu", precision: str = "auto", **defaults) -> list[Path]:
    """What ``fourm generate`` does: read inputs, generate the targets in order, write files and a grid.

    Everything is checked (inputs, model, tokenizers, targets, the out folder) before any work, and
    nothing is written before the generation succeeds.
    """
    if Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    if num_samples < 1:
        raise ValueError(f"--num-samples must be at least 1, not {num_samples}")
    raw: dict[str, Any] = {}
    for spec in inputs:
        key, value = read_input(spec)
        if key in raw:
            raise ValueError(f"--input {key} is given twice")
        raw[key] = value
    pipe = Pipeline.from_pretrained(model, tokenizers, device, precision)
    for key in raw:
        pipe.model_keys(key)  # a modality the model does not know: its one-line error before any work
    schedule_targets = parse_targets(pipe, targets, schedule, list(overrides), defaults)
    missing = [t.modality for t in schedule_targets if t.modality not in pipe.tokenizers]
    if missing:
        raise ValueError(f"no tokenizer in {tokenizers} for {', '.join(missing)}: cannot decode the generated tokens")
    result = pipe.generate(raw, schedule_targets, seed=seed, num_samples=num_samples)
    return write_outputs(pipe, raw, result, out, num_samples)
