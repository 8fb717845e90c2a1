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

import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from fourm.data.corpus import check_plan, finished_shards, storage_entry, write_manifest, write_shard
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
    rank: int = int(os.environ.get("RANK", 0))
    world_size: int = int(os.environ.get("WORLD_SIZE", 1))

    def __post_init__(self):
        if self.shard_size < 1 or self.workers < 1 or self.batch_size < 1:
            raise ValueError("shard_size, workers and batch_size must be at least 1")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")


# ----------------------------------------------------------------------------- planning
def build_source(cfg: PseudolabelConfig) -> Source:
    return parse_source(cfg.source, image_size=cfg.image_size, seed=cfg.seed)


def plan_labellers(provides: tuple[str, ...], names: list[str] | None,
                   options: dict[str, dict]) -> list[Labeller]:
    """The labellers to run, in dependency order.

    Asked-for labellers must be available and have their inputs; default ones are dropped when the
    source or an asked-for labeller already makes their outputs (ground truth beats a model) or when
    their inputs cannot be had.
    """
    unknown = [n for n in options if n not in table("labeller")]
    if unknown:
        lookup("labeller", unknown[0])  # raises with the list of known names
    explicit = names is not None
    if explicit:
        classes = [lookup("labeller", n) for n in names]
    else:
        classes = [c for c in table("labeller").values() if c.default and c.available()[0]]
    chosen = [cls(**options.get(cls.name, {})) for cls in classes]
    for lab in chosen:
        ok, why = lab.available() if explicit else (True, "")
        if not ok:
            raise ValueError(f"labeller {lab.name!r} cannot run: {why}")
    if not explicit:
        chosen = [lab for lab in chosen if not set(lab.produces) <= set(provides)]

    have, ordered, pending = set(provides), [], list(chosen)
    while pending:
        # a labeller is ready when its needs are met and no pending labeller still makes what it uses
        makes_later = {m for lab in pending for m in lab.produces}
        ready = [lab for lab in pending if set(lab.needs) <= have
                 and not (set(lab.uses) & makes_later - set(lab.produces))]
        if not ready:
            break
        for lab in ready:
            ordered.append(lab)
            have |= set(lab.produces)
            pending.remove(lab)
    for lab in pending:
        if explicit:
            raise ValueError(f"labeller {lab.name!r} needs {', '.join(sorted(set(lab.needs) - have))}, "
                             f"which neither the source nor another labeller makes")
        log.info("default labeller %s dropped: no %s", lab.name, ", ".join(sorted(set(lab.needs) - have)))
    return ordered


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
        if threads is not None:
            import sys

            if "torch" in sys.modules:  # model labellers: one process per core beats shared threads
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
    import multiprocessing as mp

    threads = max(1, (os.cpu_count() or 1) // cfg.workers)
    # spawn, not fork: a forked copy of a parent's torch thread pool can deadlock
    with ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("spawn"),
                             initializer=_init_worker, initargs=(cfg, threads)) as pool:
        yield from (f.result() for f in as_completed([pool.submit(_run_in_worker, i) for i in todo]))


def run_pipeline(cfg: PseudolabelConfig, progress: bool = True) -> dict:
    """Write (or finish) the corpus ``cfg.out``; return its manifest."""
    from tqdm import tqdm

    source = build_source(cfg)
    labellers = plan_labellers(source.provides, cfg.labellers, cfg.options)  # planned, not yet loaded
    plan = _plan(cfg, source, labellers, corpus_modalities(source.provides, labellers))
    check_plan(cfg.out, plan)

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
    })
