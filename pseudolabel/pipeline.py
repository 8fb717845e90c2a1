"""The resumable, sharded pseudo-labelling pipeline: source -> labellers -> aligned corpus.

Shards are the unit of work. Each is produced from the source, labelled in batches, and written by
:func:`fourm.data.corpus.write_shard` (temporary names, renamed, completion record last), so:

* a re-run skips finished shards and redoes unfinished ones: a kill loses at most the shards in
  flight, and a resumed corpus is byte-identical to an uninterrupted one (sources and labellers
  are deterministic, tars carry no timestamps);
* worker processes (``workers``) and ranks (``RANK``/``WORLD_SIZE``, as ``accelerate launch`` and
  ``torchrun`` set them) take disjoint shards: rank ``r`` does shards ``i`` with ``i % world == r``.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fourm.data.corpus import finished_shards, planned, storage_entry, write_manifest, write_shard
from fourm.modalities import CORPUS
from pseudolabel.labellers.base import Labeller
from pseudolabel.registry import lookup, table
from pseudolabel.sources.base import Skipped, Source, parse_source

log = logging.getLogger(__name__)


@dataclass
class PseudolabelConfig:
    source: str = "scenes:64"  # scenes:N | folder:PATH | wds:PATTERN
    out: str = "runs/corpus"
    labellers: list[str] | None = None  # None: every default labeller the source's data allows
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # settings by labeller name
    shard_size: int = 64
    workers: int = 1
    batch_size: int = 16  # samples per labeller call
    image_size: int | None = 64  # square side of every image; None keeps folder images as they are
    seed: int = 0
    series: list[str] = field(default_factory=list)  # extra series a source renders: scenes point_cloud, imu, speech
    # read when the config is made, not when the module is imported (a launcher sets them per process)
    rank: int = field(default_factory=lambda: int(os.environ.get("RANK", 0)))
    world_size: int = field(default_factory=lambda: int(os.environ.get("WORLD_SIZE", 1)))

    def __post_init__(self):
        # checked here, before anything is planned or written: a bad value otherwise surfaces as an
        # empty corpus or an error deep in a labeller, after plan.json has pinned the bad settings
        for key in ("shard_size", "workers", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, not {getattr(self, key)}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be at least 1 (or None to keep folder images' sizes), "
                             f"not {self.image_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")


# ----------------------------------------------------------------------------- planning
def build_source(cfg: PseudolabelConfig) -> Source:
    series = {"series": tuple(cfg.series)} if cfg.series else {}  # asked for: a source without them refuses
    return parse_source(cfg.source, image_size=cfg.image_size, seed=cfg.seed, **series)


def plan_labellers(provides: tuple[str, ...], names: list[str] | None,
                   options: dict[str, dict], not_run: dict[str, str] | None = None) -> list[Labeller]:
    """The labellers to run, in dependency order.

    Asked-for labellers must be available and have their inputs. Default ones are left out when the
    source already makes their outputs (ground truth beats a model), and when they cannot run (a
    missing package, an input that nothing makes): those go into ``not_run`` (name -> reason), for
    the caller to report. Missing optional inputs (``uses``) do not stop a labeller: on a folder of
    photos, metadata leaves out the fields of depth, normals, captions and the like, and computes the rest.
    """
    unknown = [n for n in options if n not in table("labeller")]
    if unknown:
        lookup("labeller", unknown[0])  # raises with the list of known names
    explicit = names is not None
    if explicit:
        classes = [lookup("labeller", n) for n in names]
    else:
        classes = [c for c in table("labeller").values() if c.default and not set(c.produces) <= set(provides)]
    chosen = [_build_labeller(cls, options.get(cls.name, {})) for cls in classes]
    dropped: dict[str, str] = {}
    for lab in chosen:
        ok, why = lab.available()
        if not ok:
            if explicit:
                raise ValueError(f"labeller {lab.name!r} cannot run: {why}")
            dropped[lab.name] = why or "unavailable"
    runnable = _reachable(set(provides), [lab for lab in chosen if lab.name not in dropped])
    made = set(provides) | {m for lab in runnable for m in lab.produces}
    for lab in chosen:
        if lab.name not in dropped and lab not in runnable:
            why = (f"needs {', '.join(sorted(set(lab.needs) - made))}, "
                   "which neither the source nor another labeller makes")
            if explicit:
                raise ValueError(f"labeller {lab.name!r} {why}")
            dropped[lab.name] = why
    if not_run is not None:
        not_run.update(dropped)

    have, ordered, pending = set(provides), [], list(runnable)
    while pending:
        # a labeller is ready when its needs are met and no pending labeller still makes what it
        # uses; every pending one can run, so one whose needs are met always exists, and only a
        # cycle of optional inputs (none today) makes one run without the other's output
        makes_later = {m for lab in pending for m in lab.produces}
        met = [lab for lab in pending if set(lab.needs) <= have]
        ready = [lab for lab in met if not (set(lab.uses) & makes_later - set(lab.produces))] or met[:1]
        for lab in ready:
            ordered.append(lab)
            have |= set(lab.produces)
            pending.remove(lab)
    return ordered


def _reachable(have: set[str], labellers: list[Labeller]) -> list[Labeller]:
    """Those of ``labellers`` whose needs ``have`` or, in turn, the outputs of the others meet."""
    have, reached, rest = set(have), [], list(labellers)
    while ready := [lab for lab in rest if set(lab.needs) <= have]:
        reached += ready
        rest = [lab for lab in rest if lab not in ready]
        have |= {m for lab in ready for m in lab.produces}
    return reached


def corpus_modalities(provides: tuple[str, ...], labellers: list[Labeller]) -> list[str]:
    made = set(provides) | {m for lab in labellers for m in lab.produces}
    return [m for m in CORPUS if m in made]  # registry order: stable across runs


# ----------------------------------------------------------------------------- one shard
class _Worker:
    """What one process needs to label shards: the source and the set-up labellers."""

    def __init__(self, cfg: PseudolabelConfig, threads: int | None = None):
        self.cfg = cfg
        self.source = build_source(cfg)
        self.labellers = plan_labellers(self.source.provides, cfg.labellers, cfg.options)
        self.modalities = corpus_modalities(self.source.provides, self.labellers)
        self.classes = dict(self.source.extra_classes())
        for lab in self.labellers:
            lab.setup(self.classes)
            self.classes.update(lab.classes())
        if threads is not None and "torch" in sys.modules:  # model labellers: one process per core beats shared threads
            sys.modules["torch"].set_num_threads(threads)

    def run(self, index: int) -> tuple[int, int]:
        """Label and write shard ``index``; return (samples written, inputs skipped)."""
        cfg, samples, skipped = self.cfg, [], []
        for item in self.source.shard(index, cfg.shard_size):
            if isinstance(item, Skipped):
                skipped.append({"item": item.item, "reason": item.reason})
            else:
                samples.append(item)
        for start in range(0, len(samples), cfg.batch_size):
            batch = samples[start:start + cfg.batch_size]
            for lab in self.labellers:
                for sample, out in zip(batch, lab.label(batch), strict=True):
                    sample.update(out)
        # the class names travel in every record, so the manifest never needs the models again
        storages = {m: CORPUS[m].storage for m in self.modalities}
        write_shard(cfg.out, index, samples, storages, {"skipped": skipped, "classes": self.classes})
        return len(samples), len(skipped)


_WORKER: _Worker | None = None


def _init_worker(cfg: PseudolabelConfig, threads: int) -> None:
    global _WORKER
    _WORKER = _Worker(cfg, threads)


def _run_in_worker(index: int) -> tuple[int, int]:
    return _WORKER.run(index)


# ----------------------------------------------------------------------------- the whole run
def _plan(cfg: PseudolabelConfig, source: Source, labellers: list[Labeller], modalities: list[str]) -> dict:
    made_by = {m: lab for lab in reversed(labellers) for m in lab.produces}  # the first producer wins
    return {
        "source": source.describe(),
        "labellers": [lab.describe() for lab in labellers],
        "modalities": {m: storage_entry(CORPUS[m].storage, labeller=made_by[m].name if m in made_by else "source",
                                        exact=made_by[m].exact if m in made_by else True)
                       for m in modalities},
        "shard_size": cfg.shard_size,
        "image_size": cfg.image_size,
        "num_shards_planned": source.num_shards(cfg.shard_size),
    }


def _results(cfg: PseudolabelConfig, todo: list[int]) -> Iterator[tuple[int, int]]:
    """Run the shards ``todo`` in this process or in ``cfg.workers`` processes, yielding as they finish."""
    if not todo:  # nothing to do: do not load any model
        return
    if cfg.workers == 1:
        worker = _Worker(cfg)
        yield from (worker.run(i) for i in todo)
        return
    threads = max(1, (os.cpu_count() or 1) // cfg.workers)
    # spawn, not fork: a forked copy of a parent's torch thread pool can deadlock
    with ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("spawn"),
                             initializer=_init_worker, initargs=(cfg, threads)) as pool:
        yield from (f.result() for f in as_completed([pool.submit(_run_in_worker, i) for i in todo]))


def run_pipeline(cfg: PseudolabelConfig, progress: bool = True) -> dict:
    """Write (or finish) the corpus ``cfg.out``; return its manifest."""
    from tqdm import tqdm

    _check_out(cfg.out)
    source = build_source(cfg)
    not_run: dict[str, str] = {}
    labellers = plan_labellers(source.provides, cfg.labellers, cfg.options, not_run)  # planned, not yet loaded
    plan = _plan(cfg, source, labellers, corpus_modalities(source.provides, labellers))
    for name, why in not_run.items():  # here, not in every worker: once per run
        log.warning("default labeller %s not run: %s", name, why)

    with planned(cfg.out, plan):
        done = finished_shards(cfg.out)
        todo = [i for i in range(plan["num_shards_planned"]) if i % cfg.world_size == cfg.rank and i not in done]
        start, written = time.perf_counter(), 0
        with tqdm(total=source.num_samples(), unit="sample", disable=not progress or not todo,
                  desc="pseudolabel") as bar:
            bar.update(sum(r["num_samples"] + len(r.get("skipped", [])) for r in done.values()))
            for samples, skipped in _results(cfg, todo):
                written += samples
                bar.update(samples + skipped)
    if todo:
        elapsed = time.perf_counter() - start
        log.info("labelled %d samples in %.1f s (%.1f samples/s)", written, elapsed, written / max(elapsed, 1e-9))
    records = finished_shards(cfg.out)
    return write_manifest(cfg.out, {
        **plan,
        "classes": next((r["classes"] for r in records.values() if "classes" in r), {}),
        "complete": len(records) == plan["num_shards_planned"],
        # beside the plan, not in it: the plan's labellers already imply it, and older plans lack it
        "not_run": not_run,
    })


def _build_labeller(cls: type[Labeller], options) -> Labeller:
    """``cls(**options)``, with unknown or ill-typed settings named (``options.NAME.KEY=...``)."""
    if not isinstance(options, dict):
        raise ValueError(f"options.{cls.name} must be a mapping of settings, not {options!r}")
    known = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else None
    unknown = [k for k in options if known is not None and k not in known]
    if unknown:
        raise ValueError(f"labeller {cls.name!r} has no setting {unknown[0]!r}; "
                         f"its settings: {', '.join(known) or 'none'}")
    try:
        return cls(**options)
    except TypeError as e:
        raise ValueError(f"labeller {cls.name!r}: {e}") from None


def _check_out(out: str) -> None:
    """Refuse an ``out`` that is, or lies below, an existing file, before anything is written there."""
    path = Path(out)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"out {out!r} cannot be a corpus folder: {str(existing)!r} is an existing file")
