"""The aligned corpus: one webdataset shard series per modality, the same keys in the same order.

Layout::

    <root>/manifest.json                 what the corpus holds (modalities, counts, labellers, skips)
    <root>/<modality>/shard-000000.tar   one series per modality, members "<key>.<ext>"
    <root>/.shards/shard-000000.json     written last for each finished shard: a shard without it
                                         is unfinished and is redone by a resumed run

Reading is per shard: every requested modality's tar of shard ``i`` is read, the keys are checked to
agree, and samples are decoded. A corpus is read where it lies: a local folder, an ``http(s)://`` (or
``gs://``...) address, or a ``pipe:`` command with ``{}`` where a file's path inside the corpus goes,
e.g. ``pipe:aws s3 cp s3://bucket/tokens/{} -`` (files are opened with webdataset's ``gopen``, so
every scheme it knows works; nothing needs to be on local disk). A truncated tar or an undecodable
value loses only the samples it touches; they are reported and counted in
:attr:`CorpusReader.skipped`. Series that disagree (different keys, a shard missing from one series)
are an error, since that is a broken corpus and not a damaged file.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fourm.data.codecs import CorruptSampleError, decode, encode
from fourm.io import atomic_path, check_schema, read_json, write_json
from fourm.kinds import token_count_key
from fourm.modalities import CORPUS, MODALITIES, Storage

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class CorpusError(ValueError):
    """A corpus that cannot be read as asked: missing, or with series that disagree."""


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def shard_path(root: str | os.PathLike, modality: str, index: int) -> Path:
    return Path(root) / modality / shard_name(index)


def record_path(root: str | os.PathLike, index: int) -> Path:
    return Path(root) / ".shards" / f"shard-{index:06d}.json"


def is_remote(root: str | os.PathLike) -> bool:
    """Whether a corpus location is an address or a ``pipe:`` command rather than a local folder."""
    return isinstance(root, str) and (root.startswith("pipe:") or "://" in root)


def corpus_file(root: str | os.PathLike, relative: str) -> str:
    """Where the corpus file ``relative`` (e.g. ``tok_rgb/shard-000003.tar``) of ``root`` lies."""
    if not is_remote(root):
        return str(Path(root) / relative)
    return root.replace("{}", relative) if "{}" in root else f"{root.rstrip('/')}/{relative}"


def open_corpus_file(root: str | os.PathLike, relative: str):
    """A binary file object for a corpus file, local or remote (a missing remote file raises on
    reading or closing, as its fetch command fails)."""
    if not is_remote(root):
        return open(Path(root) / relative, "rb")
    from webdataset.gopen import gopen

    return gopen(corpus_file(root, relative))


# ----------------------------------------------------------------------------- writing
def write_shard(root: str | os.PathLike, index: int, samples: list[dict], storages: dict[str, Storage],
                record: dict | None = None) -> dict:
    """Write shard ``index`` of every series in ``storages`` (name -> how values are kept), then its record.

    ``samples`` are dicts with ``__key__`` and one value per modality. Each tar is written under a
    temporary name and renamed; the record goes last, so a kill leaves the shard visibly unfinished.
    Returns the record (``record`` plus the sample count and keys).
    """
    import webdataset as wds

    keys = [s["__key__"] for s in samples]
    for name, storage in storages.items():
        # mtime=0 and fixed ownership: the same samples give the same bytes, run after run
        with atomic_path(shard_path(root, name, index)) as tmp, \
                wds.TarWriter(str(tmp), encoder=False, mtime=0, user="fourm", group="fourm") as tar:
            for sample in samples:
                if name not in sample:
                    raise ValueError(f"sample {sample['__key__']!r} has no {name!r}")
                tar.write({"__key__": sample["__key__"], storage.ext: encode(sample[name], storage)})
    record = {**(record or {}), "index": index, "num_samples": len(samples), "keys": keys,
              "modalities": sorted(storages)}
    write_json(record_path(root, index), record)
    return record


def finished_shards(root: str | os.PathLike) -> dict[int, dict]:
    """Completion records of the shards written so far, by index."""
    folder = Path(root) / ".shards"
    if not folder.is_dir():
        return {}
    records = (read_json(p) for p in sorted(folder.glob("shard-*.json")))
    return {r["index"]: r for r in records}


def write_manifest(root: str | os.PathLike, info: dict) -> dict:
    """Summarise the finished shards and ``info`` (source, labellers, settings) into manifest.json."""
    records = finished_shards(root)
    skipped = [s for r in records.values() for s in r.get("skipped", [])]
    reasons = collections.Counter(s["reason"].split(":")[0] for s in skipped)
    manifest = {
        "format_version": FORMAT_VERSION,
        **info,
        "num_shards": len(records),
        "num_samples": sum(r["num_samples"] for r in records.values()),
        "shard_samples": [records[i]["num_samples"] for i in sorted(records)],
        "skipped": {"count": len(skipped), "by_reason": dict(reasons), "items": skipped},
    }
    write_json(Path(root) / MANIFEST, manifest)
    return manifest


def storage_entry(storage: Storage, **extra) -> dict:
    """A manifest's description of one series: how to decode it, plus ``extra`` (who made it)."""
    return {"storage": dataclasses.asdict(storage), **extra}


def check_plan(root: str | os.PathLike, plan: dict) -> bool:
    """Refuse to mix two different corpora in one folder; record the plan in a fresh one (-> True).

    ``plan`` is everything that decides the corpus' content (source, labellers or tokenizers and
    their settings, shard size): a resumed run must have the same, or its shards would not fit.
    """
    plan = json.loads(json.dumps(plan))  # as it reads back from plan.json (tuples become lists)
    path = Path(root) / ".shards" / "plan.json"
    if path.is_file():
        old = upgrade_manifest(read_json(path, {}))  # a plan of an older version: its names as today's
        if old != plan:
            changed = sorted(k for k in {*plan, *old} if old.get(k) != plan.get(k))
            raise ValueError(f"{root} holds a corpus made with other settings ({', '.join(changed)} differ); "
                             "use another --out or delete it")
        return False
    write_json(path, plan)
    return True


@contextlib.contextmanager
def planned(root: str | os.PathLike, plan: dict):
    """:func:`check_plan` around the work that fills ``root``. If this run wrote the plan and fails
    before any shard is finished (a model path that does not load, a labeller that cannot start), the
    plan is taken back: it recorded settings that never made a shard, and it would refuse the
    corrected re-run as "a corpus made with other settings"."""
    fresh = check_plan(root, plan)
    try:
        yield
    except BaseException:
        if fresh and not finished_shards(root):
            (Path(root) / ".shards" / "plan.json").unlink(missing_ok=True)
        raise


# what every reader of a manifest relies on (write_manifest writes more)
_MANIFEST_SCHEMA = {"format_version": int, "modalities": dict, "num_samples": int, "num_shards": int,
                    "shard_samples": list}


def read_manifest(root: str | os.PathLike) -> dict:
    path = corpus_file(root, MANIFEST)
    if is_remote(root):
        manifest = _read_remote_json(root, MANIFEST)
        check_schema(manifest, {"format_version": int}, path)
    elif not Path(path).is_file():
        raise CorpusError(f"{root} is not a corpus: {MANIFEST} is missing (run `fourm pseudolabel` first)")
    else:
        manifest = read_json(path, {"format_version": int})
    if manifest["format_version"] != FORMAT_VERSION:
        raise CorpusError(f"{path}: format_version {manifest['format_version']} is not {FORMAT_VERSION}")
    check_schema(manifest, _MANIFEST_SCHEMA, path)
    bad = [k for k, v in manifest["modalities"].items()
           if not isinstance(v, dict) or not isinstance(v.get("storage"), dict)]
    if bad:
        raise CorpusError(f"{path} is damaged: modality {bad[0]!r} has no storage description")
    if len(manifest["shard_samples"]) != manifest["num_shards"]:
        raise CorpusError(f"{path} is damaged: {len(manifest['shard_samples'])} shard sizes for "
                          f"{manifest['num_shards']} shards")
    return upgrade_manifest(manifest)


def upgrade_manifest(info: dict) -> dict:
    """A manifest (or a plan) in today's names; ``info`` itself is left as it is.

    Token corpora written before the token counts had one vocabulary state a series' tokens per sample
    as ``tokens_per_sample``; it is now ``num_tokens`` (exactly that many) or, for ragged kinds,
    ``max_tokens`` (at most that many): :func:`fourm.kinds.token_count_key`.
    """
    out = dict(info)
    for section in ("modalities", "tokenizers"):  # series entries, and the tokenizers a token corpus records
        if isinstance(out.get(section), dict):
            out[section] = {name: _upgrade_entry(name, entry) for name, entry in out[section].items()}
    return out


def _upgrade_entry(name: str, entry):
    if not isinstance(entry, dict) or "tokens_per_sample" not in entry:
        return entry
    entry = dict(entry)
    key = token_count_key(MODALITIES[name]) if name in MODALITIES else "num_tokens"
    entry.setdefault(key, entry.pop("tokens_per_sample"))
    return entry


def _read_remote_json(root: str, relative: str):
    try:
        with open_corpus_file(root, relative) as f:
            data = f.read()
    except Exception as e:  # the fetch command's failure: curl, aws, gsutil... each raise their own
        raise CorpusError(f"cannot read {corpus_file(root, relative)}: {type(e).__name__}: {e}") from None
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorpusError(f"{corpus_file(root, relative)} is damaged: not valid JSON "
                          f"({getattr(e, 'msg', e)})") from None


# ----------------------------------------------------------------------------- reading
@dataclass
class SkipLog:
    """Samples a reader left out, and why."""

    counts: collections.Counter = field(default_factory=collections.Counter)
    items: list[dict] = field(default_factory=list)  # {"item": detail, "reason": reason}, in order

    def add(self, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        self.items.append({"item": detail, "reason": reason})
        log.warning("skipped %s: %s", reason, detail)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _read_tar(root: str | os.PathLike, relative: str) -> tuple[list[tuple[str, bytes]], str | None]:
    """Members of one tar as (key, bytes) in order, and the error that cut the read short, if any."""
    from webdataset.tariterators import base_plus_ext, tar_file_iterator

    members: list[tuple[str, bytes]] = []
    try:
        with open_corpus_file(root, relative) as f:
            for item in tar_file_iterator(f):
                key, _ = base_plus_ext(item["fname"])
                members.append((key, item["data"]))
    except Exception as e:  # tarfile raises ReadError, EOFError, OSError... for damaged files
        return members, f"{type(e).__name__}: {e}"
    return members, None


class CorpusReader:
    """Aligned samples of any subset of a corpus' modalities.

    Args:
        root: corpus folder (with manifest.json): a labelled corpus or a token corpus, since each
            series' storage is read from the manifest.
        modalities: names or ``"a,b"``; default every series of the manifest.

    Iterating yields ``{"__key__": str, "<modality>": value, ...}``; :attr:`skipped` counts what was
    left out. ``reader.shard(i)`` reads one shard (the unit to split over workers and ranks).
    """

    def __init__(self, root: str | os.PathLike, modalities: str | Iterable[str] | None = None):
        self.root = root if is_remote(root) else Path(root)
        self.manifest = read_manifest(root)
        order = [*CORPUS, *MODALITIES]  # registry order, the same from run to run
        available = sorted(self.manifest["modalities"], key=lambda m: order.index(m) if m in order else len(order))
        if modalities is None:
            names = available
        else:
            names = [n.strip() for n in modalities.split(",")] if isinstance(modalities, str) else list(modalities)
        missing = [n for n in names if n not in available]
        if missing:
            raise CorpusError(f"{root} has no {', '.join(missing)}; it holds: {', '.join(available)}")
        self.modalities = names
        self.storages = {n: Storage(**self.manifest["modalities"][n]["storage"]) for n in names}
        self.skipped = SkipLog()
        # a remote corpus is read without its completion records (a fetch per shard): its shards'
        # longest series stands in for the key order, as for a corpus copied without .shards/
        self._records = {} if is_remote(root) else finished_shards(root)

    @property
    def num_shards(self) -> int:
        return self.manifest["num_shards"]

    def __len__(self) -> int:
        return self.manifest["num_samples"]

    def __iter__(self) -> Iterator[dict]:
        for index in range(self.num_shards):
            yield from self.shard(index)

    def shard(self, index: int) -> Iterator[dict]:
        series = {}
        for name in self.modalities:
            relative = f"{name}/{shard_name(index)}"
            if not is_remote(self.root) and not shard_path(self.root, name, index).is_file():
                raise CorpusError(f"series disagree: {shard_path(self.root, name, index)} is missing "
                                  f"(the manifest lists {self.num_shards} shards)")
            series[name] = _read_tar(self.root, relative)
        keys = self._aligned_keys(index, series)
        values = {name: dict(members) for name, (members, _) in series.items()}
        for key in keys:
            sample = {"__key__": key}
            for name in self.modalities:
                if key not in values[name]:
                    where = corpus_file(self.root, f"{name}/{shard_name(index)}")
                    self.skipped.add("truncated shard", f"{where} lost {key}")
                    break
                try:
                    sample[name] = decode(values[name][key], self.storages[name])
                except CorruptSampleError as e:
                    self.skipped.add("corrupt sample", f"{name}/{key}: {e}")
                    break
            else:
                yield sample

    def _aligned_keys(self, index: int, series: dict) -> list[str]:
        """The shard's key order (from its completion record); a series may be a truncated prefix of it.

        A cut tar does not always raise (a cut on a block boundary reads as a shorter archive), so
        truncation is judged against the record's keys, not by read errors alone.
        """
        record = self._records.get(index)
        if record is not None:
            reference = record["keys"]
        else:  # a corpus copied without .shards/: the longest series stands in for the record
            reference = max(([k for k, _ in members] for members, _ in series.values()), key=len)
        for name, (members, err) in series.items():
            keys = [k for k, _ in members]
            if err is not None or len(keys) < len(reference):
                log.warning("shard %s of %s is damaged (%s)", index, name, err or "shorter than its record")
            if keys != reference[: len(keys)]:
                first = next((i for i, (a, b) in enumerate(zip(keys, reference, strict=False)) if a != b),
                             len(reference))
                raise CorpusError(
                    f"series disagree in shard {index}: {name} has {len(keys)} samples, the shard "
                    f"{len(reference)}; first difference at position {first}")
        return reference

    def head(self, n: int | None) -> list[dict]:
        """The first ``n`` samples in corpus order (None: all of them); damaged ones are skipped and
        counted in :attr:`skipped`.

        One pass over the shards they lie in: asking :meth:`sample` for each reads a whole shard per
        sample (128 held-out scenes: 14 s instead of 0.4 s).
        """
        return list(itertools.islice(self, n))

    def sample(self, position: int) -> dict:
        """The sample at ``position`` (0-based, over all shards, in corpus order); reads its whole shard."""
        if not 0 <= position < len(self):
            raise IndexError(f"sample {position} is out of range: the corpus holds {len(self)}")
        for index, count in enumerate(self.manifest["shard_samples"]):
            if position < count:
                key = self._records[index]["keys"][position]
                found = next((s for s in self.shard(index) if s["__key__"] == key), None)
                if found is None:
                    raise CorpusError(f"sample {key} is damaged: {self.skipped.items[-1]['item']}")
                return found
            position -= count
        raise IndexError(position)


# ----------------------------------------------------------------------------- reproducibility
# How far a neural labeller's outputs may move between runs that differ in thread count, worker count
# or batch shape: two half-precision steps (float16 keeps 11 significant bits), plus one storage step
# for quantised series. Float kernels (oneDNN, MKL) block and sum by thread count and batch shape, so
# the last bits of a network's output are a property of the run, not of the input.
MODEL_RTOL = 2.0**-9
MODEL_ATOL = 1e-5


def compare_corpora(a: str | os.PathLike, b: str | os.PathLike) -> list[str]:
    """What keeps corpus ``b`` from being corpus ``a``, as fourm promises it: empty when they are the same.

    Every file must match byte for byte, except the shards of series whose manifest entry says
    ``exact: false`` (made by a neural network): those must hold the same keys, and values equal
    within ``MODEL_RTOL`` relative plus one storage step (discrete outputs, text and ids, exactly).
    """
    a, b = Path(a), Path(b)
    files = {root: {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".tmp" not in p.name}
             for root in (a, b)}
    problems = [f"only in {root}: {name}" for root, other in ((a, b), (b, a))
                for name in sorted(files[root] - files[other])]
    series = read_manifest(a)["modalities"]
    for name in sorted(files[a] & files[b]):
        if (a / name).read_bytes() == (b / name).read_bytes():
            continue
        modality = name.split("/")[0]
        if modality not in series or series[modality].get("exact", True):
            problems.append(f"{name} differs (an exact series: its bytes must match)")
        else:
            problems += _compare_model_shard(a / name, b / name, Storage(**series[modality]["storage"]))
    return problems


def _compare_model_shard(a: Path, b: Path, storage: Storage) -> list[str]:
    (left, _), (right, _) = _read_tar(a.parent, a.name), _read_tar(b.parent, b.name)
    if [k for k, _ in left] != [k for k, _ in right]:
        return [f"{b} holds other keys than {a}"]
    atol = MODEL_ATOL + (1 / storage.scale if storage.scale else 0.0)
    problems = []
    for (key, x), (_, y) in zip(left, right, strict=True):
        x, y = decode(x, storage), decode(y, storage)
        if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating):
            x, y = x.astype(np.float64), np.asarray(y, np.float64)
            same = x.shape == y.shape and np.allclose(y, x, rtol=MODEL_RTOL, atol=atol)
        else:
            same = np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
        if not same:
            problems.append(f"{b}: {key} differs beyond the model tolerance")
    return problems
