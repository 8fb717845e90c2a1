"""FourM training data: token corpora held in memory, mixed by weight, masked and batched in workers.

Up to ~10^5-10^6 samples (64-224 px) a whole token corpus fits in memory as a
few compact arrays, which makes random access cheap and exact resume trivial: the batch of step
``s`` is a pure function of ``(seed, s, rank)``. Samples are drawn from a seeded permutation per
epoch; each sample's masking draws from its own generator seeded by ``(seed, step, position in the
global batch)``, so the stream is the same for any worker count and restarts at any step. Larger or
remote corpora are streamed shard by shard (:mod:`fourm.data.stream`) behind the same ``draw``.

Layout of a :class:`TokenDataset` (N samples), by modality kind:

==================  ==============================================================================
image, global       ``ids`` (N, n) int16/int32
sequence            ``values`` (total,) int32, ``offsets`` (N + 1,) int64: sample i is
                    ``values[offsets[i]:offsets[i + 1]]`` (ends with [EOS])
pixels (rgb)        ``pixels`` (N, H, W, 3) uint8
embedding sequence  ``values`` (total, C) float16, ``offsets`` (N + 1,): concatenated like sequences,
                    not padded (a 20-vector caption padded to 77 would take 4x the memory)
==================  ==============================================================================

plus ``present`` (N, num_modalities) bool: a sample may lack a modality (a corpus without that
series, or a mixture of corpora with different series); the masking then does not offer it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import replace

import numpy as np
import torch

from fourm.data.corpus import CorpusError, CorpusReader, read_manifest
from fourm.data.masking import Masker
from fourm.io import check_schema
from fourm.kinds import handler
from fourm.modalities import MODALITIES, Modality, ModalityScale
from fourm.model.batch import Batch

# first words of the seed sequences, so index order and masking never share a random stream
_ORDER, _MASK, _EVAL = 0, 1, 2


# ----------------------------------------------------------------------------- datasets
class _InMemory:
    """Batches of an in-memory dataset: step ``s`` of rank ``r`` is a slice of a seeded epoch order."""

    _order: tuple[int, int, np.ndarray] | None = None  # (seed, epoch, order): one epoch cached per worker

    def positions(self, step: int, seed: int, rank: int, world_size: int, batch_size: int) -> np.ndarray:
        """Dataset positions of rank ``rank``'s part of global batch ``step``."""
        global_batch = batch_size * world_size
        size = self.epoch_size
        epoch, offset = divmod(step, max(1, size // global_batch))
        if self._order is None or self._order[:2] != (seed, epoch):
            self._order = seed, epoch, self.epoch_order(seed, epoch)
        start = offset * global_batch + rank * batch_size
        return self._order[2][(start + np.arange(batch_size)) % size]

    def draw(self, step: int, seed: int, rank: int, world_size: int, batch_size: int, workers: int = 0
             ) -> list[dict]:
        """The raw samples of rank ``rank``'s part of step ``step`` (what a shard stream also answers;
        in memory, the same for any number of loader ``workers``)."""
        return [self[int(p)] for p in self.positions(step, seed, rank, world_size, batch_size)]


class TokenDataset(_InMemory):
    """One token corpus in memory (see the module notes for the layout).

    Args:
        modalities: the model's modalities (resolved; order = modality index). Modalities the data
            lacks are kept, marked absent, so that every dataset of a mixture shares the table.
        arrays: per modality key, its arrays (layout above); absent modalities have no entry.
        present: (N, len(modalities)) bool.
        keys: (N,) sample keys.
        rows: the rows this view exposes (default: all); :meth:`take` makes views without copying.
    """

    def __init__(self, modalities: dict[str, Modality], arrays: dict[str, dict[str, np.ndarray]],
                 present: np.ndarray, keys: np.ndarray, rows: np.ndarray | None = None):
        self.modalities, self.arrays, self.present, self.keys = modalities, arrays, present, keys
        self.rows = np.arange(len(present)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.names = list(modalities)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_samples(cls, modalities: dict[str, Modality], samples: Iterable[dict], size: int | None = None
                     ) -> TokenDataset:
        """From dicts ``{"__key__": ..., modality: value}`` (a missing or None value: absent).

        ``size`` (an upper bound on the count) lets fixed-size arrays be allocated once instead of
        stacked, halving peak memory on large corpora.
        """
        builder = _Builder(modalities, size)
        for sample in samples:
            builder.add(sample)
        return builder.build()

    @classmethod
    def from_corpus(cls, root: str | os.PathLike, modalities: dict[str, Modality] | list[str] | None = None,
                    scale: ModalityScale | None = None, limit: int | None = None) -> TokenDataset:
        """Load a token corpus (``fourm tokenize``'s output) whole.

        ``modalities``: the model's table (a dict of resolved modalities: series the corpus lacks
        are absent), or names / None (every model modality in the corpus) resolved with ``scale``,
        or, without a scale, from the manifest (vocabularies and token counts of its tokenizers).
        """
        manifest = read_manifest(root)
        table = modalities if isinstance(modalities, dict) else modalities_from_manifest(manifest, modalities, scale)
        _check_manifest(root, manifest, table)
        series = [n for n in table if n in manifest["modalities"]]
        if not series:
            raise ValueError(f"{root} holds none of {', '.join(table)}")
        reader = CorpusReader(root, series)
        total = len(reader) if limit is None else min(limit, len(reader))
        return cls.from_samples(table, itertools.islice(reader, total), size=total)

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = int(self.rows[index])
        sample = {"__key__": str(self.keys[row])}
        for i, (name, m) in enumerate(self.modalities.items()):
            if not self.present[row, i]:
                continue
            a, kind = self.arrays[name], handler(m)
            if kind.ragged:
                sample[name] = a[kind.array_key][a["offsets"][row]: a["offsets"][row + 1]]
            else:
                sample[name] = a[kind.array_key][row]
        return sample

    def take(self, positions: np.ndarray | slice) -> TokenDataset:
        """A view of some of this view's samples (no copy)."""
        return TokenDataset(self.modalities, self.arrays, self.present, self.keys, self.rows[positions])

    def split(self, heldout: int) -> tuple[TokenDataset, TokenDataset]:
        """(train, held-out = the last ``heldout`` samples)."""
        if not 0 < heldout < len(self):
            raise ValueError(f"cannot hold out {heldout} of {len(self)} samples")
        return self.take(slice(None, len(self) - heldout)), self.take(slice(len(self) - heldout, None))

    @property
    def epoch_size(self) -> int:
        return len(self)

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        """The positions of epoch ``epoch``: a seeded permutation."""
        return np.random.default_rng([seed, _ORDER, epoch]).permutation(len(self))

    @property
    def continuous_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample shape of each raw input the batch carries (fixed: t5 vectors padded to max_tokens)."""
        shapes = {}
        for name, m in self.modalities.items():
            if name in self.arrays and handler(m).continuous:
                shapes[name] = handler(m).continuous_shape(m, self.arrays[name])
        return shapes

    def token_counts(self, name: str) -> np.ndarray | None:
        """Histogram of ``name``'s token ids over this view (None for continuous or absent modalities)."""
        m, kind = self.modalities[name], handler(self.modalities[name])
        if not kind.discrete or name not in self.arrays:
            return None
        rows = self.rows[self.present[self.rows, self.names.index(name)]]
        a = self.arrays[name]
        if kind.ragged:
            starts, lengths = a["offsets"][rows], np.diff(a["offsets"])[rows]
            index = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
            ids = a[kind.array_key][index]
        else:
            ids = a[kind.array_key][rows].ravel()
        return np.bincount(ids.astype(np.int64), minlength=m.vocab_size or 0)


class MixtureDataset(_InMemory):
    """Several token datasets sharing one modality table, sampled by ``weights``.

    An epoch is ``sum(len(d))`` draws; dataset ``i`` supplies ``round(E * w_i)`` of them (its own
    permutation, repeated as needed), shuffled together: the same for a given (seed, epoch).
    """

    def __init__(self, datasets: list[TokenDataset], weights: list[float] | None = None):
        if not datasets or any(len(d) == 0 for d in datasets):
            raise ValueError("a mixture needs at least one dataset, and no empty one")
        tables = [list(d.modalities) for d in datasets]
        if any(t != tables[0] for t in tables):
            raise ValueError(f"datasets of a mixture must share the modality table, got {tables}")
        weights = np.ones(len(datasets)) if weights is None else np.asarray(weights, dtype=np.float64)
        if len(weights) != len(datasets) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"need one non-negative weight per dataset, got {weights}")
        self.datasets, self.weights = datasets, weights / weights.sum()
        self.modalities = datasets[0].modalities
        self.starts = np.cumsum([0, *(len(d) for d in datasets)])
        self.quotas = np.rint(self.weights * len(self)).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> dict:
        source = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.datasets[source][index - int(self.starts[source])]

    @property
    def epoch_size(self) -> int:
        return int(self.quotas.sum())

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        parts = [start + np.resize(d.epoch_order(seed + 7919 * (i + 1), epoch), quota)
                 for i, (d, start, quota) in enumerate(zip(self.datasets, self.starts[:-1], self.quotas, strict=True))]
        order = np.concatenate(parts)
        return order[np.random.default_rng([seed, _ORDER, epoch, len(self.datasets)]).permutation(len(order))]

    def split(self, heldout: int) -> tuple[MixtureDataset, MixtureDataset]:
        """Each dataset's last ``heldout`` samples held out; the held-out part weighs them alike."""
        pairs = [d.split(heldout) for d in self.datasets]
        return MixtureDataset([p[0] for p in pairs], self.weights), MixtureDataset([p[1] for p in pairs])

    @property
    def continuous_shapes(self) -> dict[str, tuple[int, ...]]:
        return merge_shapes(d.continuous_shapes for d in self.datasets)

    def token_counts(self, name: str) -> np.ndarray | None:
        """Histograms weighted by how often each dataset's samples are drawn."""
        total = None
        for d, quota in zip(self.datasets, self.quotas, strict=True):
            counts = d.token_counts(name)
            if counts is not None and len(d):
                scaled = counts * (quota / len(d))
                total = scaled if total is None else total + scaled
        return total


Dataset = TokenDataset | MixtureDataset


def merge_shapes(parts: Iterable[dict[str, tuple[int, ...]]]) -> dict[str, tuple[int, ...]]:
    """The raw-input shapes of a mixture: each part's, which must agree where they overlap."""
    shapes: dict[str, tuple[int, ...]] = {}
    for part in parts:
        for name, shape in part.items():
            if shapes.setdefault(name, shape) != shape:
                raise ValueError(f"{name} has shape {shape} in one dataset, {shapes[name]} in another")
    return shapes


class _Builder:
    """Accumulates samples into the compact layout (fixed-size arrays allocated once when size is known)."""

    def __init__(self, modalities: dict[str, Modality], size: int | None):
        self.modalities, self.size = modalities, size
        self.fixed: dict[str, list | np.ndarray] = {}
        self.seqs: dict[str, list] = {n: [] for n, m in modalities.items() if handler(m).ragged}
        self.index = {n: i for i, n in enumerate(modalities)}
        self.present: list[np.ndarray] = []
        self.keys: list[str] = []

    def _slot(self, name: str, shape: tuple, dtype, row: int) -> np.ndarray:
        if name not in self.fixed:
            self.fixed[name] = np.zeros((self.size, *shape), dtype=dtype) if self.size is not None else []
        store = self.fixed[name]
        if isinstance(store, list):
            store.extend(np.zeros(shape, dtype=dtype) for _ in range(row + 1 - len(store)))
            return store[row]
        if row >= len(store):
            raise ValueError(f"more samples than the size given ({self.size})")
        return store[row, ...]  # a view, even of a 0-d element

    def add(self, sample: dict) -> None:
        row = len(self.keys)
        self.keys.append(str(sample.get("__key__", row)))
        present = np.zeros(len(self.modalities), dtype=bool)
        for i, (name, m) in enumerate(self.modalities.items()):
            value = sample.get(name)
            if value is None:
                continue
            present[i] = True
            value = handler(m).store(m, np.asarray(value), self.keys[-1])
            if name in self.seqs:
                self.seqs[name].append(value)
            else:
                self._slot(name, value.shape, value.dtype, row)[...] = value
        for name in self.seqs:  # keep sequences aligned with rows: absent ones are empty
            if not present[self.index[name]]:
                self.seqs[name].append(None)
        self.present.append(present)

    def build(self) -> TokenDataset:
        n = len(self.keys)
        present = np.array(self.present, dtype=bool).reshape(n, len(self.modalities))

        def column(name):
            store = self.fixed[name]
            if isinstance(store, list):
                return np.stack(store + [np.zeros_like(store[0])] * (n - len(store)))
            return store[:n]

        arrays: dict[str, dict[str, np.ndarray]] = {}
        for i, (name, m) in enumerate(self.modalities.items()):
            if not present[:, i].any():
                continue
            kind = handler(m)
            if kind.ragged:
                seqs = self.seqs[name]
                first = next(s for s in seqs if s is not None)  # the column has a present sample
                seqs = [first[:0] if s is None else s for s in seqs]
                arrays[name] = {kind.array_key: np.concatenate(seqs),
                                "offsets": np.cumsum([0, *(len(s) for s in seqs)]).astype(np.int64)}
            else:
                values = column(name)
                if kind.discrete and m.vocab_size is not None and values.size and (
                        values.min() < 0 or values.max() >= m.vocab_size):
                    raise ValueError(f"{name} holds ids outside [0, {m.vocab_size})")
                arrays[name] = {kind.array_key: values}
        return TokenDataset(self.modalities, arrays, present, np.array(self.keys))


def read_token_manifest(root: str | os.PathLike) -> dict:
    """The manifest of a token corpus; a raw corpus (what ``fourm pseudolabel`` writes) is refused
    with the command that turns it into one."""
    manifest = read_manifest(root)
    if not any(_token_count(entry) is not None for entry in manifest["modalities"].values()):
        raise CorpusError(f"{root} is a raw corpus, not a token corpus: make one with `fourm tokenize "
                          f"--corpus {root} --tokenizers TOKENIZERS --out TOKENS` and train on TOKENS")
    return manifest


def manifest_scale(manifest: dict) -> ModalityScale | None:
    """The scale a token corpus was made at (None: it has no image modality, or no image size). Corpora
    written before the manifest recorded its ``scale`` get it from their image tokenizers' token counts."""
    recorded = manifest.get("scale")
    if recorded is None:
        entries = manifest["modalities"]
        tokens = {n: e["num_tokens"] for n, e in entries.items()
                  if n in MODALITIES and MODALITIES[n].is_image and "num_tokens" in e}
        if not tokens or manifest.get("image_size") is None:
            return None
        return ModalityScale.from_grids(manifest["image_size"], tokens)
    check_schema(recorded, {"image_size": int, "patch_size": int, "patch_sizes": dict},
                 "the token corpus manifest's scale")
    patch_sizes = {n: p for n, p in recorded["patch_sizes"].items() if n in MODALITIES}
    return ModalityScale(recorded["image_size"], recorded["patch_size"], patch_sizes)


def modalities_from_manifest(manifest: dict, names: list[str] | None = None,
                             scale: ModalityScale | None = None) -> dict[str, Modality]:
    """The model modalities of a token corpus, resolved with ``scale`` or from its manifest.

    Without a scale: image sizes and patches are the corpus' (``manifest_scale``), vocabularies and
    sequence lengths those of the tokenizers it records; raw rgb patches take tok_rgb's grid.
    """
    entries = manifest["modalities"]
    names = [n for n in MODALITIES if n in entries] if names is None else list(names)  # registry order
    if scale is not None:
        return scale.resolve_all(names)
    scale = manifest_scale(manifest)
    grids = [e["num_tokens"] for n, e in entries.items()
             if n in MODALITIES and MODALITIES[n].is_image and "num_tokens" in e]
    out = {}
    for name in names:
        m, entry = MODALITIES[name], entries.get(name, {})
        if m.is_image and scale is None:  # no image size: the grid is known, the patch is not
            if not grids:
                raise ValueError(f"cannot tell the patch grid of {name} from the manifest: pass a ModalityScale")
            m = replace(m, num_tokens=entry.get("num_tokens", grids[0]))
        elif m.is_image:
            source = next((n for n, e in MODALITIES.items() if e.source == m.source and n in scale.patch_sizes), None)
            if name not in scale.patch_sizes and source is not None:  # raw pixels: their tokens' patches
                scale = replace(scale, patch_sizes={**scale.patch_sizes, name: scale.patch_sizes[source]})
            m = scale.resolve(name)
        changes = {}
        if "vocab_size" in entry:
            changes["vocab_size"] = entry["vocab_size"]
        if _token_count(entry) is not None and not m.is_image:  # a global's count too: the registry's bound
            changes["max_tokens"] = _token_count(entry)
        out[name] = replace(m, **changes)
    return out


def _token_count(entry: dict) -> int | None:
    """A token corpus series' tokens per sample as its tokenizer states them (fourm.kinds.token_count_key);
    None for a series copied as it is."""
    return entry.get("num_tokens", entry.get("max_tokens"))


def _check_manifest(root, manifest: dict, table: dict[str, Modality]) -> None:
    for name, m in table.items():
        entry = manifest["modalities"].get(name, {})
        if entry.get("vocab_size") and m.vocab_size and entry["vocab_size"] > m.vocab_size:
            raise ValueError(f"{root}: {name} was tokenized with {entry['vocab_size']} codes, "
                             f"the model's modality has {m.vocab_size}")
        if handler(m).grid and handler(m).discrete and entry.get("num_tokens", m.tokens) != m.tokens:
            raise ValueError(f"{root}: {name} has {entry['num_tokens']} tokens per sample, "
                             f"the model's modality {m.tokens}")


# ----------------------------------------------------------------------------- batches
def continuous_inputs(raw: list[dict], modalities: dict[str, Modality],
                      shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The raw inputs of a batch: rgb (B, 3, H, W) in [-1, 1], t5_caption (B, L, C) zero-padded."""
    return {name: handler(modalities[name]).batch_input(modalities[name], [s.get(name) for s in raw], shape)
            for name, shape in shapes.items()}


def mask_batch(raw: list[dict], dataset, masker: Masker, seeds: list[list[int]]) -> Batch:
    """Mask each raw sample with ``np.random.default_rng(seeds[j])``, and collate."""
    masked = [masker(sample, np.random.default_rng(seed)) for sample, seed in zip(raw, seeds, strict=True)]
    return masker.collate(masked, continuous_inputs(raw, dataset.modalities, dataset.continuous_shapes))


def make_batch(dataset: Dataset, masker: Masker, positions: np.ndarray, seeds: list[list[int]]) -> Batch:
    """Mask ``dataset[p]`` with ``np.random.default_rng(seeds[j])`` for each position, and collate."""
    return mask_batch([dataset[int(p)] for p in positions], dataset, masker, seeds)


class StepBatches(torch.utils.data.Dataset):
    """Map-style: step -> that step's Batch for one rank. What DataLoader workers run.

    ``dataset`` is anything that draws the raw samples of a (step, rank): an in-memory dataset here
    or a shard stream (:mod:`fourm.data.stream`).
    """

    def __init__(self, dataset, masker: Masker, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, workers: int = 0):
        if len(dataset) == 0:
            raise ValueError("the dataset is empty")
        self.dataset, self.masker = dataset, masker
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.workers = workers  # the DataLoader workers that will run it (a shard stream splits its shards so)

    def positions(self, step: int) -> np.ndarray:
        """Dataset positions of this rank's part of global batch ``step`` (in-memory datasets)."""
        return self.dataset.positions(step, self.seed, self.rank, self.world_size, self.batch_size)

    def __getitem__(self, step: int) -> Batch:
        first = self.rank * self.batch_size
        seeds = [[self.seed, _MASK, step, first + j] for j in range(self.batch_size)]
        raw = self.dataset.draw(step, self.seed, self.rank, self.world_size, self.batch_size, self.workers)
        return mask_batch(raw, self.dataset, self.masker, seeds)


class _Steps(torch.utils.data.Sampler):
    def __init__(self, start: int):
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)


def _unwrap(batch):
    return batch


def train_batches(dataset, masker: Masker, start_step: int = 0, rank: int = 0, world_size: int = 1,
                  batch_size: int = 8, seed: int = 0, num_workers: int = 0, prefetch_factor: int = 2
                  ) -> Iterator[Batch]:
    """The endless batch stream of one rank from ``start_step`` on (masking runs in the workers).

    Batch ``s`` depends only on (dataset, masker config, seed, s, rank, world_size, batch_size), not
    on where the stream was started; in memory not on ``num_workers`` either (a shard stream splits
    its shards over the workers, so there it does).
    """
    steps = StepBatches(dataset, masker, batch_size, seed, rank, world_size, num_workers)
    loader = torch.utils.data.DataLoader(steps, batch_size=None, sampler=_Steps(start_step), collate_fn=_unwrap,
                                         num_workers=num_workers,
                                         prefetch_factor=prefetch_factor if num_workers else None)
    yield from loader


def eval_batches(dataset: Dataset, masker: Masker, batch_size: int, seed: int = 0) -> list[Batch]:
    """Every sample of ``dataset`` once, in order, masked the same way on every call."""
    out = []
    for start in range(0, len(dataset), batch_size):
        positions = np.arange(start, min(start + batch_size, len(dataset)))
        out.append(make_batch(dataset, masker, positions, [[seed, _EVAL, int(p)] for p in positions]))
    return out


# ----------------------------------------------------------------------------- baseline
def unigram_baseline(dataset: Dataset, heldout: Dataset | None = None, smoothing: float | None = None
                     ) -> dict[str, float]:
    """Per modality, the cross-entropy (nats) of a model that knows only token frequencies.

    Frequencies are counted on ``dataset``; the loss is measured on ``heldout`` (default: the same
    data, where it is the entropy of the unigram distribution). ``smoothing`` is added to every
    count (default: 0 on the same data, 0.5 on held-out data, where unseen ids would cost infinity).
    Sequences count their stored tokens (with [EOS], without the sentinels the targets add).
    """
    smoothing = (0.0 if heldout is None else 0.5) if smoothing is None else smoothing
    out = {}
    for name in dataset.modalities:
        counts = dataset.token_counts(name)
        if counts is None or counts.sum() == 0:
            continue
        probs = (counts + smoothing) / (counts.sum() + smoothing * len(counts))
        test = counts if heldout is None else heldout.token_counts(name)
        if test is None or test.sum() == 0:
            continue
        test = np.asarray(test, dtype=np.float64)
        seen = test > 0
        with np.errstate(divide="ignore"):
            out[name] = float(-(test[seen] * np.log(probs[seen])).sum() / test.sum())
    return out
