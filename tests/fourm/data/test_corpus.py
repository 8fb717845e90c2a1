import json

import numpy as np
import pytest

from fourm.data.codecs import encode
from fourm.data.corpus import CorpusError, CorpusReader, shard_path, storage_entry, write_manifest, write_shard
from fourm.modalities import CORPUS

rng = np.random.default_rng(0)


def value_for(name: str, size: int = 8):
    """A synthetic in-memory value of corpus modality ``name`` (see the registry's conventions)."""
    s = CORPUS[name].storage
    if s.ext == "png":
        shape = (size, size, 3) if s.channels == 3 else (size, size)
        if s.scale is not None:  # stored with a scale: any float the scale can hold
            stored = rng.integers(0, np.iinfo(s.dtype).max, shape)
            return stored / s.scale - s.offset
        return rng.integers(0, 200, shape).astype(s.dtype)
    if s.ext == "npy":
        return rng.standard_normal((3, 4)).astype(s.dtype)
    if s.ext == "json":
        return [{"box": [0.1, 0.2, 0.3, 0.4], "label": "cube", "score": 1.0}]
    return "a small red cube"


def storages(names):
    return {m: CORPUS[m].storage for m in names}


def make_corpus(root, modalities, shards=2, per_shard=3):
    samples = []
    for i in range(shards):
        batch = [{"__key__": f"k{i}-{j}", **{m: value_for(m) for m in modalities}} for j in range(per_shard)]
        write_shard(root, i, batch, storages(modalities))
        samples += batch
    write_manifest(root, {"modalities": {m: storage_entry(CORPUS[m].storage) for m in modalities}})
    return samples


def assert_same(a, b):
    if isinstance(a, np.ndarray):
        np.testing.assert_allclose(np.asarray(b, dtype=np.float64), a.astype(np.float64), atol=1e-3)
    else:
        assert a == b


def test_every_storage_round_trips(tmp_path):
    names = list(CORPUS)
    written = make_corpus(tmp_path, names)
    read = list(CorpusReader(tmp_path))
    assert [s["__key__"] for s in read] == [s["__key__"] for s in written]
    for w, r in zip(written, read, strict=True):
        for name in names:
            assert_same(w[name], r[name])


def test_subset_and_random_access(tmp_path):
    written = make_corpus(tmp_path, ["rgb", "depth", "caption"])
    reader = CorpusReader(tmp_path, "depth,caption")
    sample = reader.sample(4)
    assert set(sample) == {"__key__", "depth", "caption"} and sample["__key__"] == written[4]["__key__"]
    with pytest.raises(IndexError, match="holds 6"):
        reader.sample(6)
    with pytest.raises(CorpusError, match="has no normal; it holds: rgb, depth, caption"):
        CorpusReader(tmp_path, ["normal"])


def test_head_is_the_first_samples_in_corpus_order(tmp_path):
    written = make_corpus(tmp_path, ["rgb", "caption"])
    reader = CorpusReader(tmp_path)
    first = reader.head(4)  # crosses a shard boundary
    assert [s["__key__"] for s in first] == [s["__key__"] for s in written[:4]]
    assert first[3]["caption"] == reader.sample(3)["caption"]
    assert len(reader.head(100)) == len(reader.head(None)) == len(written)


def test_writing_is_deterministic(tmp_path):
    batch = [{"__key__": "a", "rgb": value_for("rgb"), "metadata": {"b": 1, "a": 2}}]
    write_shard(tmp_path / "x", 0, batch, storages(["rgb", "metadata"]))
    write_shard(tmp_path / "y", 0, batch, storages(["rgb", "metadata"]))
    for m in ["rgb", "metadata"]:
        assert shard_path(tmp_path / "x", m, 0).read_bytes() == shard_path(tmp_path / "y", m, 0).read_bytes()


def test_truncated_shard_loses_only_its_samples(tmp_path):
    make_corpus(tmp_path, ["rgb", "caption"], shards=2, per_shard=6)
    path = shard_path(tmp_path, "rgb", 0)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    reader = CorpusReader(tmp_path)
    keys = [s["__key__"] for s in reader]
    assert all(k.startswith("k1-") for k in keys[-6:]), "the next shard is read in full"
    lost = 12 - len(keys)
    assert 1 <= lost <= 6 and reader.skipped.counts["truncated shard"] == lost


def test_corrupt_sample_is_skipped_and_counted(tmp_path):
    import webdataset as wds

    make_corpus(tmp_path, ["rgb", "caption"], shards=1, per_shard=3)
    with wds.TarWriter(str(shard_path(tmp_path, "rgb", 0)), encoder=False) as tar:
        for j in range(3):
            data = b"\x89PNG not really" if j == 1 else encode(value_for("rgb"), CORPUS["rgb"].storage)
            tar.write({"__key__": f"k0-{j}", "png": data})
    reader = CorpusReader(tmp_path)
    assert [s["__key__"] for s in reader] == ["k0-0", "k0-2"]
    assert reader.skipped.counts == {"corrupt sample": 1}


def test_series_that_disagree_are_an_error(tmp_path):
    make_corpus(tmp_path, ["rgb", "caption"], shards=2)
    write_shard(tmp_path, 1, [{"__key__": "other", "caption": "x"}], storages(["caption"]))
    with pytest.raises(CorpusError, match="series disagree in shard 1"):
        list(CorpusReader(tmp_path))
    shard_path(tmp_path, "caption", 1).unlink()
    with pytest.raises(CorpusError, match="caption/shard-000001.tar is missing"):
        list(CorpusReader(tmp_path))


def test_not_a_corpus(tmp_path):
    with pytest.raises(CorpusError, match="manifest.json is missing"):
        CorpusReader(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(CorpusError, match="format_version 99"):
        CorpusReader(tmp_path)
