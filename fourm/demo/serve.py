"""What ``fourm serve`` does behind its page, without the page: requests in, pictures and files out.

A :class:`Server` holds one :class:`~fourm.generation.Pipeline` (a FourM and its tokenizers), an
optional retrieval index and an optional corpus of held-out scenes. :meth:`Server.generate` reads a
:class:`GenerateRequest` (the page's fields: uploaded files, a caption with ``[MASK]`` spans, boxes
as JSON, a scene, the chain of targets with their settings) and yields an :class:`Update` after
each target of the chain, so the page shows every modality as soon as it is made; the last update
carries a zip of the outputs in their corpus formats (``fourm generate``'s files). :meth:`Server.search`
ranks the index for a caption or an image.

Bad input raises ``ValueError`` with one line that names the problem; :mod:`fourm.demo.page` shows it
in the page. Gradio is imported only there, so this module and its tests need none.

Several browser tabs share one model: a lock serialises its use (the page's queue runs one request
at a time as well), and each request draws from a ``torch.Generator`` seeded by the request, never from
global state, so concurrent requests neither mix nor change each other's samples.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fourm.data.corpus import CorpusReader
from fourm.generation.output import corpus_key, read_input, write_outputs
from fourm.generation.pipeline import MASK, Generated, Pipeline, seeded
from fourm.generation.schedule import PARALLEL_SCHEMES, SEQUENCE_SCHEMES, Target
from fourm.kinds import handler
from fourm.modalities import CORPUS
from fourm.retrieval.index import load_index, read_samples, search_samples
from fourm.viz.render import render

TILE = 256  # px of every picture on the page: 64 px scenes at four times their size
UPLOADS = ("rgb", "depth", "semseg")  # inputs the page takes as files (boxes come as JSON, the caption as text)
SETTINGS = ("target", "scheme", "steps", "temperature", "guidance")  # the columns of the chain table
AUTO = "auto"  # scheme: MaskGIT for image and global targets, autoregressive for sequences


@dataclass
class GenerateRequest:
    """One press of Generate: the page's fields as plain values.

    Args:
        files: corpus modality -> path of an uploaded file (``rgb``: an image; ``depth``: a 16-bit PNG
            in millimetres as the corpus stores it, or ``.npy`` metres; ``semseg``: a PNG of class ids).
        caption: text; ``[MASK]`` marks spans for the model to fill (then ``caption`` may be a target).
        boxes: ``det`` as JSON: ``[{"box": [x0, y0, x1, y1] in [0, 1], "label": "cube"}, ...]``.
        scene: key of a held-out scene whose ``scene_modalities`` are given as inputs.
        targets: model or corpus modality names, generated in this order (the chain).
        settings: rows ``[target, scheme, steps, temperature, guidance]`` overriding the defaults for
            that target; an empty cell keeps the default.
        scheme, steps, temperature, guidance: defaults for every target (a scheme only where it applies).
        seed: the sampling seed of this request.
    """

    files: dict[str, str | None] = field(default_factory=dict)
    caption: str = ""
    boxes: str = ""
    scene: str | None = None
    scene_modalities: list[str] = field(default_factory=lambda: ["rgb"])
    targets: list[str] = field(default_factory=list)
    settings: list[list] = field(default_factory=list)
    scheme: str = AUTO
    steps: int = 8
    temperature: float = 1.0
    guidance: float = 0.0
    seed: int = 0


@dataclass
class Update:
    """What the page shows after a step: the inputs, one titled tile per finished target, a status
    line, and (at the end) the zip of the outputs."""

    given: list[tuple[Image.Image, str]]
    tiles: list[tuple[Image.Image, str]]
    status: str
    archive: Path | None = None
    done: bool = False


def _blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, float) and np.isnan(value))


class Server:
    """A FourM, its tokenizers, and optionally an index and a corpus of scenes, served to requests.

    Args:
        model, tokenizers: a FourM folder and its tokenizers folder (``fourm generate``'s).
        index: a ``fourm index`` folder for search (None: no search).
        corpus: held-out scenes to pick inputs from (default: the index's corpus, if any).
        scenes: how many of the corpus' scenes are offered (they are kept in memory).
        device: torch device of the model.
    """

    def __init__(self, model: str | os.PathLike, tokenizers: str | os.PathLike, index: str | os.PathLike | None = None,
                 corpus: str | os.PathLike | None = None, scenes: int = 64, device: str = "cpu"):
        self.model_dir, self.tokenizers_dir = Path(model), Path(tokenizers)
        self.pipe = Pipeline.from_pretrained(model, tokenizers, device)
        self.index = load_index(index) if index is not None else None
        if corpus is None and self.index is not None and Path(self.index.info["corpus"]).is_dir():
            corpus = self.index.info["corpus"]
        self.corpus = Path(corpus) if corpus is not None else None
        self.scenes: dict[str, dict] = {}
        self.classes: dict[str, list[str]] = {}
        if self.corpus is not None:
            reader = CorpusReader(self.corpus, [m for m in CorpusReader(self.corpus).modalities if m in self.inputs()
                                                or m == "rgb"])
            self.scenes = {s["__key__"]: s for s in reader.head(scenes)}
            self.classes = reader.manifest.get("classes") or {}
        self.lock = threading.Lock()  # one request on the model at a time, whoever serves the page
        self.outputs = Path(tempfile.mkdtemp(prefix="fourm-serve-"))  # each request's zip (the page copies it)
        atexit.register(shutil.rmtree, self.outputs, ignore_errors=True)

    # ------------------------------------------------------------------------------ what the model offers
    def targets(self) -> list[str]:
        """Model modalities the page may ask for: generable, with a tokenizer to decode them."""
        return [n for n, s in self.pipe.specs.items() if not s.input_only and n in self.pipe.tokenizers]

    def inputs(self) -> list[str]:
        """Corpus modalities the model reads (``rgb``, ``depth``, ``caption``...), in registry order."""
        sources = {s.source for s in self.pipe.specs.values()}
        return [k for k in CORPUS if k in sources]

    def scene_tiles(self, key: str | None) -> list[tuple[Image.Image, str]]:
        """The picture of a served scene (none for None), to show what picking it gives."""
        if key is None or key not in self.scenes or "rgb" not in self.scenes[key]:
            return []
        return [(render("rgb", self.scenes[key]["rgb"], size=TILE), f"scene {key}")]

    # ------------------------------------------------------------------------------ requests
    def read_inputs(self, request: GenerateRequest) -> dict[str, Any]:
        """The request's inputs as raw corpus values, ``{corpus key: value}``; one clear error for a bad one."""
        raw: dict[str, Any] = {}
        if request.scene:
            if request.scene not in self.scenes:
                raise ValueError(f"scene {request.scene!r} is not one of the served scenes")
            for key in request.scene_modalities:
                if key not in self.scenes[request.scene]:
                    raise ValueError(f"scene {request.scene} has no {key} (it has: "
                                     f"{', '.join(k for k in self.scenes[request.scene] if k != '__key__')})")
                raw[key] = self.scenes[request.scene][key]
        for key, path in request.files.items():
            if not path:
                continue
            if key not in UPLOADS:
                raise ValueError(f"unknown upload {key!r}; the page takes: {', '.join(UPLOADS)}")
            if key in raw:
                raise ValueError(f"{key} is given twice: by the scene and by an upload")
            raw[key] = _read_upload(key, path)
        if request.caption.strip():
            if "caption" in raw:
                raise ValueError("caption is given twice: by the scene and in the text box")
            raw["caption"] = request.caption.strip()
        if request.boxes.strip():
            if "det" in raw:
                raise ValueError("det is given twice: by the scene and as boxes")
            raw["det"] = _read_boxes(request.boxes)
        for key in raw:
            self.pipe.model_keys(key)  # a modality the model does not read: its one-line error
        return raw

    def schedule(self, request: GenerateRequest, given: dict[str, Any]) -> list[Target]:
        """The chain: the request's targets in order, each with its row of settings over the defaults."""
        if not request.targets:
            raise ValueError("no targets: pick at least one modality to generate")
        rows = {}
        for row in request.settings or []:
            row = list(row) + [None] * (len(SETTINGS) - len(row))
            if not _blank(row[0]):
                rows[self.pipe.target_key(str(row[0]).strip())] = row
        chain = []
        for name in request.targets:
            key = self.pipe.target_key(str(name).strip())  # unknown or input-only: its one-line error
            source = corpus_key(key)
            if source in given and not (isinstance(given[source], str) and MASK in given[source]):
                raise ValueError(f"target {name} is also given as an input ({source}): leave it out of the inputs "
                                 f"or of the targets" + (f" (or put {MASK} in the caption where words are to be "
                                                         "filled)" if source == "caption" else ""))
            if any(t.modality == key for t in chain):
                raise ValueError(f"target {name} is listed twice")
            kinds = SEQUENCE_SCHEMES if handler(self.pipe.specs[key]).autoregressive else PARALLEL_SCHEMES
            settings = {"scheme": request.scheme if request.scheme in kinds else None, "steps": request.steps,
                        "temperature": request.temperature, "guidance": request.guidance}
            for column, value in zip(SETTINGS[1:], rows.get(key, [None] * len(SETTINGS))[1:], strict=True):
                if not _blank(value):
                    settings[column] = _setting(key, column, value)
            if settings["scheme"] == AUTO:
                settings["scheme"] = None
            chain.append(Target(key, **settings))
        return chain

    def generate(self, request: GenerateRequest) -> Iterator[Update]:
        """Run the request's chain; an :class:`Update` after each target, the last with the zip."""
        given = self.read_inputs(request)
        if not given:
            raise ValueError("no inputs: upload an image, pick a scene, or type a caption")
        chain = self.schedule(request, given)
        backdrop = given.get("rgb")  # boxes and poses are drawn on the image: the given one, else the generated one
        shown = [(render(k, v, size=TILE, rgb=backdrop, classes=self.classes), f"given: {k}") for k, v in given.items()]
        yield Update(shown, [], f"generating {chain[0].modality} (1/{len(chain)}) ...")
        tiles, result, times = [], {}, []
        with self.lock:
            start = time.perf_counter()
            steps = self.pipe.generate_steps(given, chain, seeded(int(request.seed)))
            for i, (name, generated) in enumerate(steps, start=1):
                times.append(time.perf_counter() - start)
                result[name] = generated
                value = generated.values[0]
                if corpus_key(name) == "rgb":
                    backdrop = value
                tiles.append((render(corpus_key(name), value, size=TILE, rgb=backdrop, classes=self.classes),
                              f"{name} ({times[-1] - (times[-2] if i > 1 else 0):.1f} s)"))
                yield Update(shown, list(tiles), f"{i}/{len(chain)}: {name} done ({times[-1]:.1f} s)"
                             + (f"; generating {chain[i].modality} ..." if i < len(chain) else ""))
        archive = self.archive(given, result)
        yield Update(shown, list(tiles), f"done: {len(chain)} target{'s' * (len(chain) > 1)} in {times[-1]:.1f} s "
                                  f"(seed {int(request.seed)})", archive, done=True)

    def archive(self, given: dict[str, Any], result: dict[str, Generated]) -> Path:
        """The outputs as ``fourm generate`` writes them (corpus formats, tokens.json, grid.png), zipped."""
        folder = self.outputs / uuid.uuid4().hex[:12]
        files = write_outputs(self.pipe, given, result, folder / "outputs", 1)
        path = folder / "fourm-outputs.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in files:
                zf.write(f, f.relative_to(folder / "outputs"))
        return path

    def search(self, caption: str = "", image: str | None = None, k: int = 5,
               embedder: str | None = None) -> tuple[list[tuple[Image.Image, str]], str]:
        """The ``k`` best scenes of the index for a caption and/or an image: (tiles titled rank, score
        and key; a status line)."""
        if self.index is None:
            raise ValueError("no index is served: start fourm serve with --index")
        query: dict[str, Any] = {}
        if caption and caption.strip():
            query["caption"] = caption.strip()
        if image:
            query["rgb"] = _read_upload("rgb", image)
        if not query:
            raise ValueError("no query: type a caption or upload an image")
        if not 1 <= int(k) <= 100:
            raise ValueError(f"k must lie in [1, 100], not {k}")
        start = time.perf_counter()
        with self.lock:
            hits = search_samples(self.index, [query], int(k), embedder or None, model=self.model_dir,
                                  tokenizers=self.tokenizers_dir)[0]
        seconds = time.perf_counter() - start
        known = {h.key: self.scenes[h.key] for h in hits if h.key in self.scenes}
        missing = [h.key for h in hits if h.key not in known]
        if missing and Path(self.index.info["corpus"]).is_dir():
            shown = [m for m in ("rgb", "caption") if m in CorpusReader(self.index.info["corpus"]).modalities]
            known |= read_samples(self.index.info["corpus"], missing, shown) if shown else {}
        tiles = []
        for hit in hits:
            sample = known.get(hit.key, {})
            picture = sample.get("rgb")
            tile = render("rgb", picture, size=TILE) if picture is not None else \
                render("caption", sample.get("caption", hit.key), size=TILE)
            words = f": {sample['caption']}" if "caption" in sample else ""
            tiles.append((tile, f"#{hit.rank} {hit.key} {hit.score:.3f}{words}"))
        return tiles, f"{len(hits)} hits of {len(self.index)} in {seconds:.2f} s ({', '.join(query)} query)"


def _read_upload(key: str, path: str | os.PathLike) -> Any:
    """An uploaded file as ``fourm generate --input key=FILE`` reads it; errors name the file, not its temp path."""
    path = Path(path)
    try:
        if key == "rgb":  # any image Pillow reads, whatever its name says
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"))
        value = np.asarray(read_input(f"{key}=@{path}", "upload")[1])
    except (OSError, ValueError) as e:
        what = "an image" if key == "rgb" else "a PNG or .npy file"
        raise ValueError(f"the {key} upload {path.name!r} is not {what} that can be read "
                         f"({str(e).replace(str(path), path.name).splitlines()[0]})") from None
    # a map of one value per pixel; class ids are whole numbers (a depth .npy given as semseg is not)
    if value.ndim != 2 or (key == "semseg" and value.dtype.kind not in "iu"):
        need = "integer class ids" if key == "semseg" else "one value per pixel"
        raise ValueError(f"the {key} upload {path.name!r} holds a {value.dtype} array of shape {value.shape}: "
                         f"{key} needs an (H, W) map of {need}")
    return value


def _read_boxes(text: str) -> list[dict]:
    """``det`` from JSON: a list of ``{"box": [x0, y0, x1, y1] in [0, 1], "label": str}``."""
    try:
        boxes = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"boxes are not valid JSON: {e}") from None
    if not isinstance(boxes, list):
        raise ValueError('boxes must be a JSON list: [{"box": [x0, y0, x1, y1], "label": "cube"}]')
    for i, b in enumerate(boxes):
        box = b.get("box") if isinstance(b, dict) else None
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
                and all(0 <= v <= 1 for v in box) and box[0] <= box[2] and box[1] <= box[3]):
            raise ValueError(f"box {i}: needs \"box\": [x0, y0, x1, y1] with 0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1")
        if not isinstance(b.get("label"), str) or not b["label"].strip():
            raise ValueError(f"box {i}: needs a \"label\" (a class name)")
    return [{"box": [float(v) for v in b["box"]], "label": b["label"], "score": float(b.get("score", 1.0))}
            for b in boxes]


def _setting(target: str, column: str, value) -> Any:
    """One cell of the chain table, typed."""
    try:
        if column == "scheme":
            return str(value).strip()
        return int(float(value)) if column == "steps" else float(value)
    except (TypeError, ValueError):
        raise ValueError(f"target {target}: {column} {value!r} is not a number") from None
