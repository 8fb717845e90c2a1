"""`fourm demo`: the whole flow on the built-in scenes, stage by stage, each cached in ``out``.

corpus -> tokenizers -> tokenize -> train -> generate -> retrieve -> evaluate -> report. ``STAGES``
is the table of them; each runs one library function (the same the sub-commands call). A finished
stage leaves a stamp ``out/stages/<name>.json`` holding a fingerprint of its settings and of every
stage before it: a re-run skips stamped stages whose fingerprint still matches, so a finished demo
re-runs in seconds, and a changed setting redoes that stage and those after it. A stage killed
half-way has no stamp and resumes (corpus, tokenize and training are resumable by themselves).

Settings live in ``configs/demo.yaml``; ``--quick`` applies its ``quick`` overrides.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from fourm.config import load_config, read_yaml_mapping
from fourm.data.stream import resolve_loader
from fourm.data.tokenize import TokenizeConfig, tokenize_corpus
from fourm.demo.report import write_report
from fourm.demo.showcase import CHAINS, save_chains, save_reconstructions, save_retrieval
from fourm.eval.evaluate import EvaluateConfig, GenerationUnavailable, load_generator, run_evaluation
from fourm.generation.schedule import DEFAULT_TEMPERATURE_SCHEDULES
from fourm.io import read_json, write_json
from fourm.modalities import get_modality
from fourm.train.loop import has_compiler
from fourm.train.pretrain import FourMTrainConfig, run_training
from fourm.viz.show import save_sample_grid
from pseudolabel.pipeline import PseudolabelConfig, run_pipeline
from tokenizers_train import train_tokenizer
from tokenizers_train.data import tokenizer_dir
from tokenizers_train.expert import NAME as EXPERT

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
TOKENIZER_CONFIGS = DEFAULT_CONFIG.parent / "tokenizers"


@dataclass
class CorpusSettings:
    scenes: int = 1024
    heldout_scenes: int = 128
    heldout_seed: int = 1  # training scenes use seed 0: a different seed gives scenes never trained on
    shard_size: int = 64
    image_size: int = 64
    workers: int = 1  # labelling processes
    series: list[str] = field(default_factory=list)  # extra series the scenes render (point_cloud, imu, video, ...)


@dataclass
class TokenizerSettings:
    configs: list[str] = field(default_factory=list)  # names of configs/tokenizers/*.yaml
    by_family: dict[str, list[str]] = field(default_factory=dict)  # key=value overrides per tokenizer family
    by_name: dict[str, list[str]] = field(default_factory=dict)  # and per config name (applied last)


@dataclass
class ModelSettings:
    config: str = "configs/fourm/demo.yaml"
    modalities: list[str] = field(default_factory=list)
    # target modalities whose output heads also read their tokenizer's codebook (model.head_codebooks)
    head_codebooks: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)


@dataclass
class SampleSettings:
    samples: int | None = 4  # held-out scenes from the corpus' start; None: all of them
    seed: int = 0
    steps: int = 8  # MaskGIT steps per image / global target
    temperature: float = 0.0  # 0: most likely tokens


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    corpus: CorpusSettings = field(default_factory=CorpusSettings)
    tokenizers: TokenizerSettings = field(default_factory=TokenizerSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    generate: SampleSettings = field(default_factory=SampleSettings)
    evaluate: SampleSettings = field(default_factory=lambda: SampleSettings(samples=None))
    # picture name -> [given modality, targets in order]: chains drawn beside showcase.CHAINS
    chains: dict[str, list[str]] = field(default_factory=dict)
    quick: list[str] = field(default_factory=list)  # the --quick overrides

    def path(self, *parts: str) -> Path:
        return Path(self.out).joinpath(*parts)


def load_demo_config(config: str | os.PathLike | None = None, overrides: list[str] | tuple = (),
                     quick: bool = False, out: str | None = None) -> DemoConfig:
    """The demo's settings: ``config`` (default ``configs/demo.yaml``), its quick overrides, then ``overrides``."""
    path = config or DEFAULT_CONFIG
    cfg = load_config(DemoConfig, path, overrides, out=out)
    if quick:
        cfg = load_config(DemoConfig, path, [*cfg.quick, *overrides], out=out)
    return cfg


# ----------------------------------------------------------------------------- the stages
def _corpus(cfg: DemoConfig) -> dict:
    c = cfg.corpus
    summary = {}
    for name, count, seed in (("corpus", c.scenes, 0), ("heldout", c.heldout_scenes, c.heldout_seed)):
        print(f"  {name}: {count} scenes (seed {seed})")
        manifest = run_pipeline(PseudolabelConfig(source=f"scenes:{count}", out=str(cfg.path(name)), seed=seed,
                                                  shard_size=c.shard_size, image_size=c.image_size,
                                                  workers=c.workers, series=list(c.series)))
        summary[name] = {"samples": manifest["num_samples"], "modalities": list(manifest["modalities"])}
    for i in range(4):
        save_sample_grid(cfg.path("corpus"), i, cfg.path("pictures", f"sample-{i}.png"))
    return summary


def tokenizer_overrides(cfg: DemoConfig, name: str) -> tuple[Path, list[str]]:
    """The YAML of tokenizer config ``name`` and the demo's overrides for it (its family's, then its own)."""
    path = TOKENIZER_CONFIGS / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"demo tokenizer {name!r}: {path} does not exist")
    family = read_yaml_mapping(path).get("family")
    t = cfg.tokenizers
    return path, [*t.by_family.get(family, []), *t.by_name.get(name, [])]


def _tokenizers(cfg: DemoConfig) -> dict:
    summary = {}
    for i, name in enumerate(cfg.tokenizers.configs, start=1):
        path, overrides = tokenizer_overrides(cfg, name)
        print(f"  [{i}/{len(cfg.tokenizers.configs)}] {name} {' '.join(overrides)}")
        start = time.perf_counter()
        train_tokenizer(path, str(cfg.path("corpus")), cfg.path("tokenizers"), overrides)
        summary[name] = round(time.perf_counter() - start, 1)
    save_reconstructions(cfg.path("tokenizers"), cfg.path("heldout"), cfg.path("pictures", "reconstructions.png"),
                         samples=cfg.generate.samples)
    return {"seconds": summary}


def _tokenize(cfg: DemoConfig) -> dict:
    # raw model inputs (rgb pixels, t5_caption vectors) have no tokenizer: they are copied
    raw = [m for m in cfg.model.modalities if get_modality(m).tokenizer is None]
    manifest = tokenize_corpus(TokenizeConfig(corpus=str(cfg.path("corpus")), tokenizers=str(cfg.path("tokenizers")),
                                              out=str(cfg.path("tokens")),
                                              modalities=[m for m in cfg.model.modalities if m not in raw],
                                              passthrough=raw))
    return {"samples": manifest["num_samples"], "series": list(manifest["modalities"])}


def train_config(cfg: DemoConfig):
    config = Path(cfg.model.config)
    if not config.is_absolute() and not config.exists():  # relative paths in configs/demo.yaml: the repository's
        config = DEFAULT_CONFIG.parent.parent / config
    # a patch expert trained with the tokenizers is what FourM's pixels go through (hybrid stem), and the
    # heads named in head_codebooks read the codebooks of the tokenizers trained here
    extra = []
    if EXPERT in cfg.tokenizers.configs:
        extra = [f"model.pixel_expert={tokenizer_dir(cfg.path('tokenizers'), EXPERT)}"]
    if cfg.model.head_codebooks:
        books = ", ".join(f"{n}: {tokenizer_dir(cfg.path('tokenizers'), n)}" for n in cfg.model.head_codebooks)
        extra.append(f"model.head_codebooks={{{books}}}")
    return load_config(FourMTrainConfig, config, [
        f"out={cfg.path('fourm')}", f"data.corpora=[{cfg.path('tokens')}]",
        f"data.tokenizers={cfg.path('tokenizers', 'caption')}", f"model.modalities=[{','.join(cfg.model.modalities)}]",
        *extra, *cfg.model.overrides])


def _train(cfg: DemoConfig) -> dict:
    config = train_config(cfg)
    if config.train.use_compile and not has_compiler(torch.accelerator.current_accelerator() or torch.device("cpu")):
        print("  no C++ compiler for torch.compile here: training eager (with g++, ~10% faster on a 2-core CPU)")
        config.train.use_compile = False
    run_training(config)
    summary = cfg.path("fourm", "summary.json")
    return json.loads(summary.read_text()) if summary.is_file() else {}


def _train_settings(cfg: DemoConfig) -> dict:
    """What the training stage's model depends on. Compiling changes how fast, not what, and so do the loader's
    workers where the corpus is read in memory (a stream splits its shards over them): both are fixed here at
    the values of runs from before the demo compiled and masked in line, so such runs are reused."""
    settings = asdict(train_config(cfg))
    settings["train"]["use_compile"] = False
    data = settings["data"]
    if resolve_loader(data["loader"], cfg.corpus.scenes, data["corpora"]) == "memory":
        data["num_workers"] = 1
    return settings


def _generator(cfg: DemoConfig):
    try:
        return load_generator(cfg.path("fourm", "model"), cfg.path("tokenizers"), steps=cfg.generate.steps,
                              temperature=cfg.generate.temperature)
    except GenerationUnavailable as e:
        raise StageUnavailable(str(e)) from None


def _generate(cfg: DemoConfig) -> dict:
    chains = {**CHAINS, **{name: (given, targets) for name, (given, *targets) in cfg.chains.items()}}
    return save_chains(_generator(cfg), cfg.path("heldout"), cfg.path("pictures"), samples=cfg.generate.samples,
                       seed=cfg.generate.seed, chains=chains)


def _retrieve(cfg: DemoConfig) -> dict:
    return save_retrieval(cfg.path("fourm", "model"), cfg.path("tokenizers"), cfg.path("heldout"),
                          cfg.path("pictures"), queries=cfg.generate.samples, gallery=cfg.evaluate.samples,
                          index_out=cfg.path("index"))


def _evaluate(cfg: DemoConfig) -> dict:
    e = cfg.evaluate
    try:
        table = run_evaluation(EvaluateConfig(
            model=str(cfg.path("fourm", "model")), tokenizers=str(cfg.path("tokenizers")),
            corpus=str(cfg.path("heldout")), samples=e.samples, seed=e.seed, steps=e.steps,
            temperature=e.temperature, out=str(cfg.path("evaluation.json"))))
    except GenerationUnavailable as err:
        raise StageUnavailable(str(err)) from None
    return {"rows": len(table["rows"]), "skipped": table["skipped"]}


def _report(cfg: DemoConfig) -> dict:
    return {"report": str(write_report(cfg.out, stages=[s.name for s in STAGES]))}


class StageUnavailable(RuntimeError):
    """A stage whose code has not landed yet: reported on the page and not stamped, so a later run retries it."""


@dataclass(frozen=True)
class Stage:
    """One step of the demo: ``run(cfg) -> summary``; ``outputs`` are removed when its settings change."""

    name: str
    run: Callable[[DemoConfig], dict]
    settings: Callable[[DemoConfig], object]
    outputs: tuple[str, ...] = ()
    cached: bool = True  # False: cheap, always redone (the report gathers whatever the others left)


STAGES: list[Stage] = [
    # the number of workers changes how fast, not what: it is left out of the fingerprint
    # (no series asked: the fingerprint of runs from before there were series, so they are reused)
    Stage("corpus", _corpus, lambda c: {k: v for k, v in asdict(c.corpus).items()
                                        if k != "workers" and (k != "series" or v)}, ("corpus", "heldout")),
    Stage("tokenizers", _tokenizers, lambda c: {n: tokenizer_overrides(c, n)[1] for n in c.tokenizers.configs},
          ("tokenizers",)),
    Stage("tokenize", _tokenize, lambda c: list(c.model.modalities), ("tokens",)),
    Stage("train", _train, _train_settings, ("fourm",)),
    # the schemes' default temperature schedules: pictures and samples drawn under other defaults are redone
    Stage("generate", _generate, lambda c: {**asdict(c.generate), **({"chains": c.chains} if c.chains else {}),
                                            "temperature_schedules": DEFAULT_TEMPERATURE_SCHEDULES}),
    # "index": runs from before the stage saved its gallery redo it, so that `fourm serve --index` finds one
    Stage("retrieve", _retrieve, lambda c: [c.generate.samples, c.evaluate.samples, "index"], ("index",)),
    Stage("evaluate", _evaluate, lambda c: asdict(c.evaluate)),
    Stage("report", _report, lambda c: None, cached=False),
]


def _fingerprint(previous: str, settings: object) -> str:
    return hashlib.sha256((previous + json.dumps(settings, sort_keys=True, default=str)).encode()).hexdigest()[:16]


def run_demo(cfg: DemoConfig, stages: list[str] | None = None) -> dict[str, dict]:
    """Run (or reuse) every stage in order; ``stages`` limits which may run (the rest must be finished)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint, results, total = "", {}, time.perf_counter()
    for i, stage in enumerate(STAGES, start=1):
        fingerprint = _fingerprint(fingerprint, stage.settings(cfg))
        stamp_path = out / "stages" / f"{stage.name}.json"
        stamp = read_json(stamp_path) if stamp_path.is_file() else None
        if stamp and "skipped" in stamp:  # unavailable last time: not finished
            stamp = None
        head = f"[{i}/{len(STAGES)}] {stage.name}"
        if not stage.cached:
            stamp = None
        if stamp and stamp["fingerprint"] == fingerprint:
            print(f"{head}: done before ({stamp['seconds']:.0f} s), reused")
            results[stage.name] = stamp
            continue
        if stages is not None and stage.name not in stages:
            raise ValueError(f"demo stage {stage.name} is not finished: run it (stages={','.join(stages)})")
        if stamp:  # finished with other settings: start this stage over
            print(f"{head}: settings changed, redoing it")
            for name in stage.outputs:
                shutil.rmtree(out / name, ignore_errors=True)
        print(f"{head} ...", flush=True)
        start = time.perf_counter()
        try:
            summary = stage.run(cfg) or {}
        except StageUnavailable as e:
            print(f"{head}: skipped: {e}")
            results[stage.name] = {"skipped": str(e)}
            write_json(stamp_path, results[stage.name])
            continue
        seconds = time.perf_counter() - start
        print(f"{head}: {seconds:.0f} s")
        results[stage.name] = {"fingerprint": fingerprint, "seconds": round(seconds, 1), "summary": summary}
        write_json(stamp_path, results[stage.name])
    print(f"demo: {time.perf_counter() - total:.0f} s this run; report: {out / 'report.html'}")
    print(f"explore it in a browser: {serve_command(cfg)}")
    return results


def serve_command(cfg: DemoConfig) -> str:
    """The ``fourm serve`` line for a demo run's model, tokenizers, index and held-out scenes."""
    parts = ["fourm serve", f"--model {shlex.quote(str(cfg.path('fourm', 'model')))}",
             f"--tokenizers {shlex.quote(str(cfg.path('tokenizers')))}"]
    if cfg.path("index", "index.json").is_file():  # the retrieve stage ran: its corpus is the held-out scenes
        parts.append(f"--index {shlex.quote(str(cfg.path('index')))}")
    else:
        parts.append(f"--corpus {shlex.quote(str(cfg.path('heldout')))}")
    return " ".join(parts)
