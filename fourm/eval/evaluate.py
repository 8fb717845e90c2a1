"""`fourm evaluate`: what a trained FourM does on held-out scenes, beside two references per measure.

Held-out scenes (the scenes source rendered with a seed the model never trained on) have exact
ground truth. For each row of the table (issue 6, after 4M-21's out-of-the-box results) we report:

* **model**: the FourM prediction, generated from the given modality and decoded by the tokenizers;
* **baseline**: a trivial answer that needs no image: the per-pixel mean depth / mean normal / most
  frequent class of the evaluated scenes themselves (which flatters the baseline), another scene's
  boxes, caption or point cloud, the most frequent class at every exact point, the first frame of a
  video copied as its last, chance for retrieval;
* **upper bound**: the tokenizer round trip ``decode(encode(truth))``, the best any model predicting
  these tokens can do.

Caption -> RGB has no true image to compare with; the generated image is *judged*, by a judge that is not
the model: which of the caption's colours it shows, and which colours it shows that the caption did not
name (:func:`fourm.eval.metrics.colour_hits`, pixel hues in regions at least 3 pixels across; white is not
judged, the ground being grey). The same judge scores the round-tripped true image (upper bound) and another
scene's image (baseline).

The two generative rows *sample* from the model (``draws`` per scene, :meth:`Context.sample`): RGB ->
caption, whose captions are scored by the objects they name, and caption -> RGB, whose images are
made by MaskGIT in ``sample_steps`` steps as `fourm generate` makes them. A caption does not say
where an object is, so each image token's most likely value alone is the background: with one argmax
pass, the 10000-step model's images showed none of the named colours (0.000), its sampled ones 0.80.
The other rows are predictions and take each token's most likely value.

Beyond vision (issue 17, rows needing the modalities of ``configs/demo_omni.yaml``): speech -> caption
(word error rate of the transcript, from the raw 16 kHz clip), RGB -> point cloud (per-point class
accuracy of the decoded cloud at the exact points, and Chamfer distance), IMU + first frame -> last
frame (PSNR and mean absolute error of the video's last frame generated from the IMU signal and the
first frame's tokens).

Scene graphs and tables (issue 18, rows needing ``configs/demo_omni.yaml``'s ``scene_graph`` and ``table``):
scene graph -> RGB is judged as caption -> RGB is, on the colours of the graph's nodes; caption -> table and
table -> caption score the agreement of the (size, colour, class) objects that the table's rows and the
caption name (:func:`fourm.eval.metrics.object_agreement`), beside another scene's table or caption.

Rows are a registry (``TASKS``); each task asks the model for what it needs through a
:class:`Generator`, whose answers are cached so that chained rows reuse them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from fourm.data.corpus import CorpusReader
from fourm.eval import metrics
from fourm.eval.retrieval import chance_recall, recall_at_k
from fourm.io import write_json
from fourm.modalities import MODALITIES, readers
from fourm.registry import Registry
from fourm.retrieval.embed import EmbedSpec, normalize, predict_vectors
from fourm.tokenization.base import load_tokenizers


class Generator(Protocol):
    """What the evaluation needs from generation: decoded values of ``targets`` given raw ``conditions``.

    ``conditions`` maps model modalities to one raw corpus value per sample (``{"tok_rgb": [uint8 images]}``,
    ``{"caption": [str]}``); the result maps each target to one decoded value per sample.
    """

    modalities: list[str]  # the model's modalities (tasks needing others are skipped)

    def generate(self, conditions: dict[str, list], targets: list[str], seed: int = 0,
                 **settings) -> dict[str, list]:
        """``settings``: Target fields for this call (``temperature=1.0``) over the generator's defaults."""

    def vectors(self, conditions: dict[str, list], target: str) -> np.ndarray:
        """(B, C) vectors of the global modality ``target`` predicted from ``conditions``, made the way
        ``fourm retrieve`` makes a model-built gallery (:func:`fourm.retrieval.embed.predict_vectors`)."""


@dataclass
class EvaluateConfig:
    model: str = "runs/demo/fourm/model"
    tokenizers: str = "runs/demo/tokenizers"
    corpus: str = "runs/demo/heldout"
    samples: int | None = None  # held-out scenes from the corpus' start; None: all of them
    seed: int = 0
    batch_size: int = 16
    steps: int = 1  # MaskGIT steps per image / global target; 1: each token's argmax in one pass (configs/demo.yaml)
    temperature: float = 0.0  # 0: the most likely tokens, what a prediction measure should see
    draws: int = 4  # samples per scene for the rows that score a sample (RGB -> caption, caption -> RGB)
    sample_steps: int = 8  # MaskGIT steps of a sampled image (caption -> RGB), as `fourm generate` makes it
    encode_every: int = 1  # MaskGIT / ROAR: the target encoded whole every N steps (Target.encode_every; 1: exact)
    device: str = "cpu"  # where the model runs ("cuda"); tokenizer round trips and metrics stay on the CPU
    precision: str = "auto"  # what generation computes in (fourm.generation.Pipeline): auto | bf16 | fp32 | int8
    out: str | None = None  # write the table as JSON here


@dataclass
class Row:
    task: str
    metric: str
    model: float | None
    baseline: float | None
    upper: float | None
    higher_is_better: bool
    baseline_is: str  # what the baseline is, in a few words

    @property
    def beats_baseline(self) -> bool | None:
        if self.model is None or self.baseline is None:
            return None
        return self.model > self.baseline if self.higher_is_better else self.model < self.baseline


class Context:
    """The held-out samples, the tokenizers, and memoised generations shared by the tasks."""

    def __init__(self, samples: list[dict], classes: dict, tokenizers: dict, generator: Generator, seed: int,
                 draws: int, sample_steps: int = 8):
        if draws < 1 or sample_steps < 1:
            raise ValueError(f"evaluate: draws and sample_steps must be at least 1, not {draws} and {sample_steps}")
        self.samples, self.classes, self.tokenizers = samples, classes, tokenizers
        self.generator, self.seed, self.draws, self.sample_steps = generator, seed, draws, sample_steps
        self._cache: dict[tuple, list] = {}

    def truth(self, key: str) -> list:
        return [s[key] for s in self.samples]

    def shuffled(self, key: str, shift: int = 1) -> list:
        """Another scene's value for each scene (the one ``shift`` later): an answer that ignores the input."""
        values = self.truth(key)
        shift %= len(values)
        if shift == 0:
            raise ValueError(f"shuffled: a shift that is a multiple of {len(values)} gives each scene its own {key}")
        return values[shift:] + values[:shift]

    def round_trip(self, modality: str, values: list) -> list:
        tokenizer = self.tokenizers[modality]
        with torch.no_grad():
            return list(tokenizer.decode(tokenizer.encode(values)))

    def conditions(self, given: str, values: list | None = None) -> dict[str, list]:
        """The model inputs for ``given`` (default value: its corpus truth): every model modality that
        reads the same corpus series gets it, so a model reading RGB as pixels and as tokens sees both."""
        source = MODALITIES[given].source
        values = self.truth(source) if values is None else values
        return {m: values for m in readers(source, self.generator.modalities) or [given]}

    def generate(self, target: str, given: str, values: list | None = None, tag: str = "") -> list:
        """``target`` generated from the model modality ``given`` (default: its corpus truth), memoised by tag."""
        return self.generate_from(target, {given: values}, tag)

    def generate_from(self, target: str, given: dict[str, list | None], tag: str = "") -> list:
        """``target`` generated from several model modalities at once (a value None: the corpus truth;
        a list: one raw value or token array per scene, -1 marking tokens to generate), memoised by tag."""
        key = (target, *given, tag)
        if key not in self._cache:
            conditions = {m: v for name, values in given.items() for m, v in self.conditions(name, values).items()}
            made = self.generator.generate(conditions, [target], seed=self.seed)
            self._cache[key] = list(made[target])
        return self._cache[key]

    def sample(self, target: str, given: str) -> list[list]:
        """``draws`` samples of ``target`` per scene at temperature 1 (images annealed from it), memoised.

        For measures that score what a sample *says*, such as the objects a caption names. Greedy decoding
        of an unsure model repeats its likeliest words ("a small orange cylinder to the right of a small
        orange cylinder, and ..."), so it measures the decoding, not what the model knows. Each target
        keeps its scheme's temperature schedule, as ``fourm generate`` draws it: a caption's stays at 1,
        an image's anneals from 1 over its MaskGIT steps
        (:data:`fourm.generation.schedule.DEFAULT_TEMPERATURE_SCHEDULES` says why).
        """
        key = (target, given, "sampled")
        if key not in self._cache:
            conditions, n = self.conditions(given), len(self.samples)
            # seeds seed + d * n + batch start: no two batches of any two draws share one
            self._cache[key] = [list(self.generator.generate(conditions, [target], seed=self.seed + d * n,
                                                             temperature=1.0, steps=self.sample_steps)[target])
                                for d in range(self.draws)]
        return self._cache[key]

    def vectors(self, target: str, given: str) -> np.ndarray:
        """Vectors of the global modality ``target`` predicted from the truth of ``given``, memoised."""
        key = (target, given, "vectors")
        if key not in self._cache:
            self._cache[key] = np.asarray(self.generator.vectors(self.conditions(given), target))
        return self._cache[key]


TASKS: Registry[Callable[[Context], list[Row]]] = Registry("evaluation task")
REQUIRES: dict[str, tuple[str, ...]] = {}  # model modalities a task needs


def task(name: str, *requires: str):
    def register(fn):
        TASKS[name] = fn
        REQUIRES[name] = requires
        return fn

    return register


@task("RGB -> depth", "tok_rgb", "tok_depth")
def _depth(ctx: Context) -> list[Row]:
    gt = ctx.truth("depth")
    mean = [np.mean(np.stack(gt), 0)] * len(gt)
    model, base = metrics.depth_errors(ctx.generate("tok_depth", "tok_rgb"), gt), metrics.depth_errors(mean, gt)
    upper = metrics.depth_errors(ctx.round_trip("tok_depth", gt), gt)
    return [Row("RGB -> depth", "abs rel", model["abs_rel"], base["abs_rel"], upper["abs_rel"], False,
                "mean depth map"),
            Row("RGB -> depth", "delta < 1.25", model["delta1"], base["delta1"], upper["delta1"], True,
                "mean depth map")]


@task("RGB -> normals", "tok_rgb", "tok_normal")
def _normals(ctx: Context) -> list[Row]:
    gt = ctx.truth("normal")
    mean = np.mean(np.stack(gt), 0)
    mean = [mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-6)] * len(gt)
    return [Row("RGB -> normals", "mean angle error (deg)", metrics.normal_angle_error(
        ctx.generate("tok_normal", "tok_rgb"), gt), metrics.normal_angle_error(mean, gt),
        metrics.normal_angle_error(ctx.round_trip("tok_normal", gt), gt), False, "mean normal map")]


def _class_mode(maps: list[np.ndarray], num_classes: int) -> np.ndarray:
    """The most frequent class of each pixel over ``maps``."""
    stack = np.stack(maps).astype(np.int64)
    counts = np.stack([(stack == c).sum(0) for c in range(num_classes)])
    return counts.argmax(0)


@task("RGB -> semseg", "tok_rgb", "tok_semseg")
def _semseg(ctx: Context) -> list[Row]:
    gt = ctx.truth("semseg")
    n = len(ctx.classes["semseg"])
    mode = [_class_mode(gt, n)] * len(gt)
    return [Row("RGB -> semseg", "mIoU", metrics.mean_iou(ctx.generate("tok_semseg", "tok_rgb"), gt, n),
                metrics.mean_iou(mode, gt, n), metrics.mean_iou(ctx.round_trip("tok_semseg", gt), gt, n), True,
                "most frequent class per pixel")]


def _mean_map(gt: list[np.ndarray]) -> list[np.ndarray]:
    """The per-pixel mean of the evaluated scenes' maps, in their dtype, as each scene's answer."""
    stack = np.stack(gt)
    mean = stack.mean(0)
    return [(mean.round() if stack.dtype.kind in "iu" else mean).astype(stack.dtype)] * len(gt)


def _from_rgb(ctx: Context, name: str, target: str, series: str, measures: dict[str, Callable]) -> list[Row]:
    """Rows of ``target`` predicted from RGB, one per ``measures`` entry (label -> fn(pred, gt) -> float,
    lower is better), beside the mean map and the tokenizer's round trip."""
    gt = ctx.truth(series)
    answers = {"model": ctx.generate(target, "tok_rgb"), "baseline": _mean_map(gt),
               "upper": ctx.round_trip(target, gt)}
    return [Row(name, label, *(fn(answers[k], gt) for k in ("model", "baseline", "upper")), False, "mean map")
            for label, fn in measures.items()]


@task("RGB -> X-ray", "tok_rgb", "tok_xray")
def _xray(ctx: Context) -> list[Row]:
    return _from_rgb(ctx, "RGB -> X-ray", "tok_xray", "xray",
                     {"relative error": lambda p, g: metrics.measure_errors(p, g)["rel_error"]})


@task("RGB -> thermal", "tok_rgb", "tok_thermal")
def _thermal(ctx: Context) -> list[Row]:
    return _from_rgb(ctx, "RGB -> thermal", "tok_thermal", "thermal",
                     {"relative error": lambda p, g: metrics.measure_errors(p, g)["rel_error"],
                      "mean abs error (K)": lambda p, g: metrics.measure_errors(p, g)["mae"]})


@task("RGB -> hyperspectral", "tok_rgb", "tok_hyperspectral")
def _hyperspectral(ctx: Context) -> list[Row]:
    return _from_rgb(ctx, "RGB -> hyperspectral", "tok_hyperspectral", "hyperspectral",
                     {"spectral angle (deg)": metrics.spectral_angle_error})


@task("RGB -> boxes", "tok_rgb", "det")
def _boxes(ctx: Context) -> list[Row]:
    gt = ctx.truth("det")
    model = metrics.detection_scores(ctx.generate("det", "tok_rgb"), gt)
    base = metrics.detection_scores(ctx.shuffled("det"), gt)
    upper = metrics.detection_scores(ctx.round_trip("det", gt), gt)
    return [Row("RGB -> boxes", f"{k} @ IoU 0.5", model[k], base[k], upper[k], True, "another scene's boxes")
            for k in ("precision", "recall")]


@task("caption -> image retrieval", "caption", "tok_rgb", "tok_caption_global")
def _retrieval(ctx: Context) -> list[Row]:
    """Rank the images by the cosine between the caption's vector and the vector the model predicts from each.

    Queries are the true caption vectors (MiniLM, the corpus' ``caption_global``); the gallery is what the
    model predicts as ``tok_caption_global`` from each image alone, decoded as ``fourm retrieve`` does
    (each token's expected code). Upper bound: the gallery of the tokenizer's round trip of the true vectors.
    """
    def unit(vectors) -> torch.Tensor:  # a list of vectors or a (N, C) array
        return normalize(torch.as_tensor(np.stack(vectors), dtype=torch.float32))

    queries = unit(ctx.truth("caption_global"))
    ks = (1, 5)
    model = recall_at_k(queries, unit(ctx.vectors("tok_caption_global", "tok_rgb")), ks=ks)
    upper = recall_at_k(queries, unit(ctx.round_trip("tok_caption_global", list(queries.numpy()))), ks=ks)
    chance = chance_recall(len(queries), ks)
    return [Row("caption -> image retrieval", f"recall@{k}", model[k], chance[k], upper[k], True, "chance")
            for k in ks]


def _judged_images(ctx: Context, name: str, given: str, named: list[set[str]]) -> list[Row]:
    """Images sampled from ``given`` ``ctx.draws`` times per scene, judged without the model
    (:func:`fourm.eval.metrics.named_colour_hits`): which of the ``named`` colours an image shows, and how
    many of the colours it shows were not named; beside another scene's image and the RGB round trip."""
    draws = [metrics.named_colour_hits(d, named) for d in ctx.sample("tok_rgb", given)]
    model = {k: float(np.mean([d[k] for d in draws])) for k in draws[0]}
    base = metrics.named_colour_hits(ctx.shuffled("rgb"), named)
    upper = metrics.named_colour_hits(ctx.round_trip("tok_rgb", ctx.truth("rgb")), named)
    return [Row(name, "named colours shown", model["named"], base["named"], upper["named"], True,
                "another scene's image"),
            Row(name, "colours shown not named", model["false_alarms"], base["false_alarms"],
                upper["false_alarms"], False, "another scene's image")]


@task("caption -> RGB", "caption", "tok_rgb")
def _caption_to_rgb(ctx: Context) -> list[Row]:
    """Images judged by the colours the caption names (:func:`_judged_images`)."""
    named = [{c for c, _ in metrics.parse_objects(caption) if c} for caption in ctx.truth("caption")]
    return _judged_images(ctx, "caption -> RGB", "caption", named)


@task("scene graph -> RGB", "scene_graph", "tok_rgb")
def _graph_to_rgb(ctx: Context) -> list[Row]:
    """Images judged by the colours of the graph's nodes (:func:`_judged_images`): the objects it shows."""
    named = [{n.get("colour") for n in graph.get("nodes", []) if n.get("colour")} for graph in ctx.truth("scene_graph")]
    return _judged_images(ctx, "scene graph -> RGB", "scene_graph", named)


@task("caption -> table", "caption", "table")
def _caption_to_table(ctx: Context) -> list[Row]:
    """The objects (size, colour, class) of the table predicted from a caption against the caption's own
    (:func:`fourm.eval.metrics.object_agreement`): another scene's table is the baseline, the true table's
    round trip the bound."""
    said = [metrics.object_triples(c) for c in ctx.truth("caption")]

    def agreement(tables: list) -> float:
        return metrics.object_agreement([metrics.row_triples(t) for t in tables], said)

    return [Row("caption -> table", "objects agree (F1)", agreement(ctx.generate("table", "caption")),
                agreement(ctx.shuffled("table")), agreement(ctx.round_trip("table", ctx.truth("table"))), True,
                "another scene's table")]


@task("table -> caption", "table", "caption")
def _table_to_caption(ctx: Context) -> list[Row]:
    """The objects of captions sampled ``ctx.draws`` times from a table against the table's rows (sampled for
    the reason RGB -> caption is), beside as many other scenes' captions and the true caption's round trip."""
    rows = [metrics.row_triples(t) for t in ctx.truth("table")]
    gt = ctx.truth("caption")

    def agreement(captions: list[str]) -> float:
        return metrics.object_agreement([metrics.object_triples(c) for c in captions], rows)

    model = float(np.mean([agreement(d) for d in ctx.sample("caption", "table")]))
    base = float(np.mean([agreement(ctx.shuffled("caption", 1 + k % (len(gt) - 1))) for k in range(ctx.draws)]))
    return [Row("table -> caption", "objects agree (F1)", model, base, agreement(ctx.round_trip("caption", gt)),
                True, "another scene's caption")]


@task("RGB -> caption", "tok_rgb", "caption")
def _caption(ctx: Context) -> list[Row]:
    """Captions sampled ``ctx.draws`` times per scene (:meth:`Context.sample`), against as many other scenes'."""
    gt = ctx.truth("caption")

    def mean(scores: list[dict]) -> dict:
        return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}

    model = mean([metrics.caption_object_scores(d, gt) for d in ctx.sample("caption", "tok_rgb")])
    others = [ctx.shuffled("caption", 1 + k % (len(gt) - 1)) for k in range(ctx.draws)]  # never the scene's own
    base = mean([metrics.caption_object_scores(o, gt) for o in others])
    upper = metrics.caption_object_scores(ctx.round_trip("caption", gt), gt)
    labels = {"shape": "shapes named right", "colour_shape": "colour + shape named right",
              "recall": "scene objects named"}
    return [Row("RGB -> caption", labels[k], model[k], base[k], upper[k], True, "another scene's caption")
            for k in labels]


@task("speech -> caption", "tok_speech", "caption")
def _speech_to_caption(ctx: Context) -> list[Row]:
    """The caption transcribed from the spoken caption (the raw clip, tokenized by the speech tokenizer), its
    words against the true caption's (:func:`fourm.eval.metrics.word_error_rate`), sampled ``ctx.draws``
    times per scene as RGB -> caption is (:meth:`Context.sample` says why): greedy decoding of the quick omni
    model looped to the length limit, a word error rate of 12 that measured the loop. Baseline: as many
    other scenes' captions; upper bound: the caption tokenizer's round trip of the true caption."""
    gt = ctx.truth("caption")
    model = np.mean([metrics.word_error_rate(d, gt) for d in ctx.sample("caption", "tok_speech")])
    others = [ctx.shuffled("caption", 1 + k % (len(gt) - 1)) for k in range(ctx.draws)]  # never the scene's own
    base = np.mean([metrics.word_error_rate(o, gt) for o in others])
    return [Row("speech -> caption", "word error rate", float(model), float(base),
                metrics.word_error_rate(ctx.round_trip("caption", gt), gt), False, "another scene's caption")]


@task("RGB -> point cloud", "tok_rgb", "tok_point_cloud")
def _point_cloud(ctx: Context) -> list[Row]:
    """The scene's point cloud generated from its image and decoded: each exact point reads the class of the
    decoded point nearest it (:func:`fourm.eval.metrics.point_class_accuracy`), so the row needs the
    geometry and the classes right. Baselines: every point of the true cloud given the most frequent class of
    the evaluated clouds (exact geometry: it flatters the baseline); another scene's cloud for the Chamfer."""
    gt = ctx.truth("point_cloud")
    model, upper = ctx.generate("tok_point_cloud", "tok_rgb"), ctx.round_trip("tok_point_cloud", gt)
    classes = np.concatenate([g[:, 6] for g in gt])
    labelled = np.rint(classes[classes >= 0]).astype(np.int64)
    mode = [np.concatenate([g[:, :6], np.full((len(g), 1), np.bincount(labelled).argmax(), g.dtype)], axis=1)
            for g in gt]
    return [Row("RGB -> point cloud", "per-point class accuracy", metrics.point_class_accuracy(model, gt),
                metrics.point_class_accuracy(mode, gt), metrics.point_class_accuracy(upper, gt), True,
                "most frequent class, exact points"),
            Row("RGB -> point cloud", "Chamfer distance (m)", metrics.chamfer_distance(model, gt),
                metrics.chamfer_distance(ctx.shuffled("point_cloud"), gt), metrics.chamfer_distance(upper, gt),
                False, "another scene's cloud")]


@task("IMU + first frame -> last frame", "tok_imu", "tok_video")
def _last_frame(ctx: Context) -> list[Row]:
    """The camera move's video generated from its IMU signal and the tokens of its first frame (the other
    frames' tokens to generate), scored on its last frame, the one furthest from what was given. Baseline:
    the first frame copied as the last (a camera that did not move); upper bound: the video tokenizer's
    round trip of the true last frame."""
    videos = ctx.truth("video")
    tokenizer = ctx.tokenizers["tok_video"]
    with torch.no_grad():
        ids = np.asarray(tokenizer.encode(videos), dtype=np.int64)  # (B, F * N): frame after frame
        upper = [v[-1] for v in tokenizer.decode(ids)]
    first = np.full_like(ids, -1)
    per_frame = ids.shape[1] // len(videos[0])
    first[:, :per_frame] = ids[:, :per_frame]
    made = [v[-1] for v in ctx.generate_from("tok_video", {"tok_imu": None, "tok_video": list(first)}, "first frame")]
    last, still = [v[-1] for v in videos], [v[0] for v in videos]
    return [Row("IMU + first frame -> last frame", "PSNR (dB)", metrics.psnr(made, last), metrics.psnr(still, last),
                metrics.psnr(upper, last), True, "first frame as the last"),
            Row("IMU + first frame -> last frame", "mean abs error (0-255)", metrics.frame_l1(made, last),
                metrics.frame_l1(still, last), metrics.frame_l1(upper, last), False, "first frame as the last")]


# ----------------------------------------------------------------------------- running and printing
def evaluate(generator: Generator, tokenizers: dict, corpus: str | os.PathLike, samples: int | None = None,
             seed: int = 0, tasks: list[str] | None = None, progress: bool = True, draws: int = 4,
             sample_steps: int = 8) -> dict:
    """The evaluation table over the first ``samples`` scenes of ``corpus`` (None: all of them):
    ``{"rows": [...], "samples": N}``.

    Tasks whose modalities the model or the tokenizers lack are listed under ``"skipped"`` with the reason;
    those that need a modality neither the model nor the corpus has (the speech row of a run without
    speech) are not this run's to measure, and are only named, under ``"absent"``.
    """
    reader = CorpusReader(corpus)
    if samples is not None and samples < 2:
        raise ValueError(f"evaluate: samples must be at least 2, not {samples}")
    data = reader.head(samples)
    if len(data) < 2:  # every baseline is another scene's answer
        raise ValueError(f"evaluate: {corpus} holds {len(data)} readable scene(s); the table needs at least 2")
    ctx = Context(data, reader.manifest.get("classes", {}), tokenizers, generator, seed, draws, sample_steps)
    # a task needs its modalities in the model and a tokenizer for each (round trips, decoding)
    available = set(tokenizers) & set(generator.modalities)
    rows, skipped, absent = [], {}, {}
    names = tasks or list(TASKS)
    for name in tqdm(names, desc="evaluate", unit="task", disable=not progress):
        TASKS.check(name)
        missing = [m for m in REQUIRES[name] if m not in available]
        nowhere = [MODALITIES[m].source for m in missing
                   if m not in generator.modalities and MODALITIES[m].source not in reader.modalities]
        if nowhere:
            absent[name] = f"neither the model nor the corpus has {', '.join(nowhere)}"
        elif missing:
            skipped[name] = f"no {', '.join(missing)}"
        else:
            rows.extend(TASKS[name](ctx))
    return {"samples": len(data), "draws": draws, "sample_steps": sample_steps, "corpus": str(corpus),
            "rows": [{**asdict(r), "beats_baseline": r.beats_baseline} for r in rows], "skipped": skipped,
            "absent": absent}


def format_table(table: dict) -> str:
    """The table as aligned text, one row per measure, best-of marks where the model beats the baseline."""
    head = f"{'task':32} {'metric':28} {'model':>8} {'baseline':>9} {'upper':>8}  baseline is"
    every = table.get("encode_every", 1)
    approximate = f", MaskGIT and ROAR encoding the target whole every {every} steps (approximate)" if every > 1 else ""
    lines = [f"evaluation on {table['samples']} held-out scenes{approximate}", head, "-" * len(head)]
    for r in table["rows"]:
        mark = {True: " ", False: "!", None: "?"}[r["beats_baseline"]]
        lines.append(f"{r['task']:32} {r['metric']:28} {_num(r['model']):>8}{mark}{_num(r['baseline']):>9} "
                     f"{_num(r['upper']):>8}  {r['baseline_is']}")
    for name, why in table.get("skipped", {}).items():
        lines.append(f"{name:32} skipped: {why}")
    if table.get("absent"):
        lines.append(f"not measured (the run has none of their modalities): {', '.join(table['absent'])}")
    lines.append("(! marks a row where the model does not beat the baseline)")
    return "\n".join(lines)


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def run_evaluation(cfg: EvaluateConfig, progress: bool = True) -> dict:
    """Load the model and tokenizers, evaluate, print the table and write it as JSON when ``cfg.out`` is set."""
    if not Path(cfg.model).is_dir():
        raise FileNotFoundError(f"model folder {cfg.model} does not exist")
    if cfg.steps < 1 or cfg.encode_every < 1:  # before the model loads, not at the first row
        raise ValueError(f"evaluate: steps and encode_every must be at least 1, not {cfg.steps} and {cfg.encode_every}")
    generator = load_generator(cfg.model, cfg.tokenizers, cfg.batch_size, cfg.device, cfg.precision,
                               steps=cfg.steps, temperature=cfg.temperature, encode_every=cfg.encode_every)
    table = evaluate(generator, load_tokenizers(cfg.tokenizers), cfg.corpus, cfg.samples, cfg.seed, progress=progress,
                     draws=cfg.draws, sample_steps=cfg.sample_steps)
    # the generation settings beside the figures: an approximate encoder (encode_every > 1) must show in the table
    table.update(steps=cfg.steps, encode_every=cfg.encode_every)
    print(format_table(table))
    if cfg.out:
        write_json(cfg.out, table)
    return table


class GenerationUnavailable(ImportError):
    """fourm.generation's pipeline is not importable (issue 5 not landed)."""


class PipelineGenerator:
    """A :class:`fourm.generation.Pipeline` as a :class:`Generator`: batches of ``batch_size`` samples.

    ``defaults`` are Target settings for every target (``steps``, ``temperature``, ...).
    """

    def __init__(self, pipeline, batch_size: int = 16, **defaults):
        self.pipeline, self.batch_size, self.defaults = pipeline, batch_size, defaults
        self.modalities = list(pipeline.specs)

    def _batches(self, conditions: dict[str, list]):
        """(first index, one dict per sample) for each batch of ``batch_size`` samples."""
        count = {len(v) for v in conditions.values()}
        if len(count) != 1:
            raise ValueError(f"conditions hold different numbers of samples: {sorted(count)}")
        n = count.pop()
        for start in range(0, n, self.batch_size):
            rows = range(start, min(n, start + self.batch_size))
            yield start, [{k: v[i] for k, v in conditions.items()} for i in rows]

    def generate(self, conditions: dict[str, list], targets: list[str], seed: int = 0,
                 **settings) -> dict[str, list]:
        out = {t: [] for t in targets}
        for start, batch in self._batches(conditions):
            made = self.pipeline.generate(batch, list(targets), seed=seed + start, **{**self.defaults, **settings})
            for t in targets:
                out[t] += list(made[t].values)
        return out

    def vectors(self, conditions: dict[str, list], target: str) -> np.ndarray:
        spec = EmbedSpec(target, embedder="model", batch_size=self.batch_size)
        return np.concatenate([predict_vectors(self.pipeline, batch, spec).numpy()
                               for _, batch in self._batches(conditions)])


def load_generator(model: str | os.PathLike, tokenizers: str | os.PathLike, batch_size: int = 16,
                   device: str = "cpu", precision: str = "auto", **defaults) -> Generator:
    """The model as a :class:`Generator` (through :mod:`fourm.generation`'s pipeline)."""
    try:
        from fourm.generation.pipeline import Pipeline
    except ImportError as e:
        raise GenerationUnavailable(f"generation (fourm.generation.pipeline, issue 5) is not importable: {e}") from e
    return PipelineGenerator(Pipeline.from_pretrained(model, tokenizers, device, precision), batch_size, **defaults)
