"""Token corpora read shard by shard: training data of any size in flat memory, with exact resume.

The in-memory loader (:mod:`fourm.data.loader`) holds a whole token corpus, which stops fitting
somewhere past 10^6 samples. A :class:`ShardStream` reads the same corpus a window of shards at a
time, from a local folder or from wherever its address points (``https://``, ``pipe:aws s3 cp
s3://bucket/tokens/{} -``: see :mod:`fourm.data.corpus`), so nothing is node-local but the address.

How rank ``r`` of ``W`` sees a corpus:

* the shards are split over *readers*: every (rank, DataLoader worker) pair, ``R = ranks x workers``
  of them. Epoch ``e`` orders the shards by a seeded permutation and reader ``r`` takes every
  ``R``-th, so each shard is decoded once per epoch, by one process;
* a reader decodes its shards ``window`` at a time and shuffles each window's samples together (a
  shuffle buffer of ``window`` shards, seeded as a whole: a permutation, not a reservoir);
* its stream is its epochs one after another; a worker's steps take consecutive batches of it
  (:func:`step_reader` says which reader and positions a step gets).

So every sample's place is a pure function of (seed, epoch, reader, readers) and the manifest's
shard sizes. A run killed at step ``s`` resumes exactly there by loading the one window that holds
that step's position (no replay, no buffer state in the checkpoint), with the same number of ranks
and workers (another worker count is another, equally valid, order; the in-memory loader alone is
the same for any worker count). Memory holds at most two decoded windows per worker, whatever the
corpus size. (A damaged sample keeps its place: the window's next readable one stands in, and the
reader counts it.)

Several corpora mix by weight in blocks of :data:`MIX_BLOCK` draws: each block takes exactly its quota
of each corpus (the largest-remainder rounding of weight x block) in a seeded order, so the mixture,
too, is a function of the position.
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections import OrderedDict
from functools import cached_property

import numpy as np

from fourm.data.corpus import CorpusReader, is_remote
from fourm.data.loader import (
    _ORDER,
    MixtureDataset,
    TokenDataset,
    _check_manifest,
    merge_shapes,
    read_token_manifest,
)
from fourm.modalities import Modality

MIX_BLOCK = 4096  # draws per mixture block: weights are kept to 1/MIX_BLOCK
BASELINE_SAMPLES = 4096  # token frequencies (the unigram baseline) are counted on the corpus' first samples
_MIX = 3  # seed word of the mixture's block orders (loader uses 0-2)


def step_reader(step: int, rank: int, world_size: int, batch_size: int, workers: int) -> tuple[int, int, int]:
    """Who reads step ``step``, and from where: (reader, readers, first position in that reader's stream).

    The shards are split over every (rank, loader worker) pair, so each shard is decoded once per
    epoch, by one process. A DataLoader hands its workers the steps in turn, so worker ``k`` of ``W``
    gets the steps ``s`` with ``s % W`` fixed (from any start): step ``s`` is read by reader
    ``rank * W + s % W``, at positions ``[(s // W) B, (s // W + 1) B)`` of that reader's stream.
    """
    w = max(1, workers)
    return rank * w + step % w, world_size * w, (step // w) * batch_size


class ShardStream:
    """One token corpus, read ``window`` shards at a time (see the module notes).

    Args:
        root: the token corpus: a folder, an address or a ``pipe:`` command.
        modalities: the model's table (resolved); series the corpus lacks are absent from its samples.
        window: shards decoded and shuffled together.
        shards: (index, samples to use) of the shards to read; default every shard, whole.
    """

    def __init__(self, root: str | os.PathLike, modalities: dict[str, Modality], window: int = 8,
                 shards: list[tuple[int, int]] | None = None):
        if window < 1:
            raise ValueError(f"a stream's window must be at least 1 shard, not {window}")
        self.root, self.modalities, self.window = root, modalities, window
        manifest = read_token_manifest(root)
        _check_manifest(root, manifest, modalities)
        self.series = [n for n in modalities if n in manifest["modalities"]]
        if not self.series:
            raise ValueError(f"{root} holds none of {', '.join(modalities)}")
        if shards is None:
            shards = [(i, n) for i, n in enumerate(manifest["shard_samples"]) if n > 0]
        self.shards = np.array(shards, dtype=np.int64).reshape(-1, 2)
        self._reader: CorpusReader | None = None
        # (seed, part, parts, epoch, window) -> (decoded samples, their order, the rows of shards they are)
        self._windows: OrderedDict = OrderedDict()
        self._epochs: dict = {}  # (seed, part, parts) -> (epoch plans in order, where each epoch ends)

    def __len__(self) -> int:
        return int(self.shards[:, 1].sum())

    def __getstate__(self):
        """What DataLoader workers get: the plan and the batch shapes, not the decoded windows, the open
        reader or the head (up to BASELINE_SAMPLES decoded samples, which a worker does not need)."""
        shapes = self.continuous_shapes
        state = {**self.__dict__, "_reader": None, "_windows": OrderedDict(), "_epochs": {}}
        state.pop("head", None)
        return {**state, "continuous_shapes": shapes}

    @property
    def reader(self) -> CorpusReader:
        if self._reader is None:
            self._reader = CorpusReader(self.root, self.series)
        return self._reader

    @property
    def skipped(self):
        """What the reads so far left out (damaged samples), as :class:`fourm.data.corpus.SkipLog`."""
        return self.reader.skipped

    def _read(self, shards: np.ndarray) -> TokenDataset:
        samples = []
        for index, count in shards:
            samples.extend(itertools.islice(self.reader.shard(int(index)), int(count)))
        return TokenDataset.from_samples(self.modalities, samples)

    # ------------------------------------------------------------------ a reader's stream
    def _plans(self, seed: int, part: int, parts: int, position: int) -> tuple[list[dict], list[int]]:
        """Reader ``part``'s epoch plans (windows as rows of ``shards``, where each window starts), made
        up to the epoch that holds ``position``, and where each epoch ends."""
        if len(self.shards) < parts:
            raise ValueError(f"{self.root} has {len(self.shards)} shards for {parts} readers (ranks x loader "
                             "workers): each needs at least one (use fewer workers, or a smaller shard size)")
        plans, ends = self._epochs.setdefault((seed, part, parts), ([], []))
        while not ends or ends[-1] <= position:
            order = np.random.default_rng([seed, _ORDER, len(plans)]).permutation(len(self.shards))[part::parts]
            windows = [order[i:i + self.window] for i in range(0, len(order), self.window)]
            sizes = [int(self.shards[w, 1].sum()) for w in windows]
            start = ends[-1] if ends else 0
            plans.append({"windows": windows, "starts": start + np.cumsum([0, *sizes[:-1]])})
            ends.append(start + sum(sizes))
        return plans, ends

    def _locate(self, seed: int, part: int, parts: int, position: int) -> tuple[int, int, int]:
        """(epoch, window, offset) of reader ``part``'s stream position ``position``."""
        plans, ends = self._plans(seed, part, parts, position)
        epoch = bisect.bisect_right(ends, position)
        starts = plans[epoch]["starts"]
        window = int(np.searchsorted(starts, position, side="right")) - 1
        return epoch, window, position - int(starts[window])

    def _window(self, seed: int, part: int, parts: int, epoch: int, window: int):
        key = (seed, part, parts, epoch, window)
        if key not in self._windows:
            rows = np.sort(self._epochs[(seed, part, parts)][0][epoch]["windows"][window])
            # the same shards again (a reader whose share fits one window: every epoch) are not decoded again
            data = next((d for d, _, r in self._windows.values() if np.array_equal(r, rows)), None)
            data = self._read(self.shards[rows]) if data is None else data
            if len(data) == 0:
                shards = ", ".join(str(int(i)) for i in self.shards[rows, 0])
                raise ValueError(f"{self.root}: no readable sample in shards {shards} ({self.skipped.total} skipped)")
            expected = int(self.shards[rows, 1].sum())
            order = np.random.default_rng([seed, _ORDER, epoch, part, parts, window]).permutation(expected)
            self._windows[key] = data, order, rows
            while len(self._windows) > 2:  # a step may straddle two windows; never more
                self._windows.popitem(last=False)
        return self._windows[key][:2]

    def sample(self, seed: int, part: int, parts: int, position: int) -> dict:
        """The sample at ``position`` of reader ``part``'s stream (of ``parts``)."""
        epoch, window, offset = self._locate(seed, part, parts, position)
        data, order = self._window(seed, part, parts, epoch, window)
        return data[int(order[offset]) % len(data)]  # damaged samples: a readable one keeps the place

    def draw(self, step: int, seed: int, rank: int, world_size: int, batch_size: int, workers: int = 0
             ) -> list[dict]:
        """The raw samples of rank ``rank``'s part of step ``step`` (read by ``workers`` loader workers)."""
        part, parts, first = step_reader(step, rank, world_size, batch_size, workers)
        return [self.sample(seed, part, parts, first + j) for j in range(batch_size)]

    # ------------------------------------------------------------------ held out, shapes, counts
    def split(self, heldout: int) -> tuple[ShardStream, TokenDataset]:
        """(this stream without its last ``heldout`` samples, those samples in memory)."""
        if not 0 < heldout < len(self):
            raise ValueError(f"cannot hold out {heldout} of {len(self)} samples")
        ends = np.cumsum(self.shards[:, 1])
        keep = len(self) - heldout
        first = int(np.searchsorted(ends, keep, side="right"))  # first shard (row) reaching into held-out
        kept_in_first = keep - (int(ends[first - 1]) if first else 0)
        train = [tuple(r) for r in self.shards[:first].tolist()]
        if kept_in_first:
            train.append((int(self.shards[first, 0]), kept_in_first))
        held = self._read(self.shards[first:])
        held = held.take(slice(kept_in_first, None)) if kept_in_first else held
        return ShardStream(self.root, self.modalities, self.window, train), held

    @cached_property
    def head(self) -> TokenDataset:
        """The corpus' first samples (at most BASELINE_SAMPLES): what shapes and frequencies are read from."""
        rows, total = [], 0
        for index, count in self.shards:
            rows.append((index, min(count, BASELINE_SAMPLES - total)))
            total += rows[-1][1]
            if total >= BASELINE_SAMPLES:
                break
        return self._read(np.array(rows))

    @cached_property
    def continuous_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.head.continuous_shapes

    def token_counts(self, name: str) -> np.ndarray | None:
        """Token frequencies estimated on the corpus' first samples (``head``)."""
        return self.head.token_counts(name)


class StreamMixture:
    """Several shard streams sharing one modality table, drawn by weight in blocks (module notes)."""

    def __init__(self, streams: list[ShardStream], weights: list[float] | None = None):
        if not streams or any(len(s) == 0 for s in streams):
            raise ValueError("a mixture needs at least one stream, and no empty one")
        if any(list(s.modalities) != list(streams[0].modalities) for s in streams):
            raise ValueError("streams of a mixture must share the modality table")
        weights = np.ones(len(streams)) if weights is None else np.asarray(weights, dtype=np.float64)
        if len(weights) != len(streams) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"need one non-negative weight per corpus, got {weights.tolist()}")
        self.streams, self.weights = streams, weights / weights.sum()
        self.modalities = streams[0].modalities
        raw = self.weights * MIX_BLOCK
        quotas = np.floor(raw).astype(np.int64)
        quotas[np.argsort(quotas - raw)[: MIX_BLOCK - quotas.sum()]] += 1  # largest remainders
        self.quotas = quotas
        self._block: tuple | None = None

    def __len__(self) -> int:
        return sum(len(s) for s in self.streams)

    def __getstate__(self):  # the shapes first: each batch needs them, and a worker's streams have no head
        return {**self.__dict__, "_block": None, "continuous_shapes": self.continuous_shapes}

    def _source(self, seed: int, part: int, position: int) -> tuple[int, int]:
        """(stream, position in that stream) of reader ``part``'s mixture position ``position``."""
        block, offset = divmod(position, MIX_BLOCK)
        if self._block is None or self._block[0] != (seed, part, block):
            sources = np.repeat(np.arange(len(self.streams)), self.quotas)
            sources = sources[np.random.default_rng([seed, _MIX, part, block]).permutation(MIX_BLOCK)]
            before = np.zeros(MIX_BLOCK, dtype=np.int64)  # draws of the same stream earlier in the block
            for i in range(len(self.streams)):
                mine = sources == i
                before[mine] = np.arange(mine.sum())
            self._block = (seed, part, block), sources, before
        _, sources, before = self._block
        source = int(sources[offset])
        return source, block * int(self.quotas[source]) + int(before[offset])

    def draw(self, step: int, seed: int, rank: int, world_size: int, batch_size: int, workers: int = 0
             ) -> list[dict]:
        part, parts, first = step_reader(step, rank, world_size, batch_size, workers)
        out = []
        for j in range(batch_size):
            i, position = self._source(seed, part, first + j)
            out.append(self.streams[i].sample(seed + 7919 * (i + 1), part, parts, position))
        return out

    def split(self, heldout: int) -> tuple[StreamMixture, MixtureDataset]:
        pairs = [s.split(heldout) for s in self.streams]
        return StreamMixture([p[0] for p in pairs], self.weights), MixtureDataset([p[1] for p in pairs])

    @cached_property
    def continuous_shapes(self) -> dict[str, tuple[int, ...]]:
        return merge_shapes(s.continuous_shapes for s in self.streams)

    def token_counts(self, name: str) -> np.ndarray | None:
        """Each stream's estimated frequencies, weighted by its share of the draws."""
        total = None
        for s, w in zip(self.streams, self.weights, strict=True):
            counts = s.token_counts(name)
            if counts is not None and len(s.head):
                scaled = counts * (w / len(s.head))
                total = scaled if total is None else total + scaled
        return total


LOADERS = ("auto", "memory", "stream")
STREAM_ABOVE = 200_000  # loader="auto" streams corpora with more samples (or any remote one)


def resolve_loader(loader: str, samples: int, roots: list[str | os.PathLike]) -> str:
    """How ``loader`` reads corpora ``roots`` of ``samples`` samples together: ``auto`` streams remote ones and
    more than :data:`STREAM_ABOVE` samples, and holds the rest in memory."""
    if loader != "auto":
        return loader
    return "stream" if samples > STREAM_ABOVE or any(is_remote(r) for r in roots) else "memory"


def open_token_data(roots: list[str | os.PathLike], modalities: dict[str, Modality],
                    weights: list[float] | None = None, loader: str = "auto", window: int = 8):
    """Token corpora as training data: in memory (the fast path for small corpora) or streamed.

    ``loader``: ``memory``, ``stream``, or ``auto``: stream when a corpus is remote or the corpora hold
    more than :data:`STREAM_ABOVE` samples together. Either way the result draws the batches of any
    (step, rank), splits off held-out samples and counts token frequencies alike.
    """
    if loader not in LOADERS:
        raise ValueError(f"data.loader must be {', '.join(LOADERS)}, not {loader!r}")
    samples = sum(read_token_manifest(r)["num_samples"] for r in roots) if loader == "auto" else 0
    if resolve_loader(loader, samples, roots) == "memory":
        datasets = [TokenDataset.from_corpus(r, modalities) for r in roots]
        return datasets[0] if len(datasets) == 1 and weights is None else MixtureDataset(datasets, weights)
    streams = [ShardStream(r, modalities, window) for r in roots]
    return streams[0] if len(streams) == 1 and weights is None else StreamMixture(streams, weights)
