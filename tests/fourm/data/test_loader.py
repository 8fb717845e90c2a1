"""Token datasets and the batch stream: layout, presence, determinism across workers and restarts,
ranks, held-out split, mixtures, loading a written token corpus, the unigram baseline."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from fourm.data.loader import (
    MixtureDataset,
    StepBatches,
    TokenDataset,
    eval_batches,
    modalities_from_manifest,
    train_batches,
    unigram_baseline,
)
from fourm.data.masking import Masker, MaskingConfig, TextSpecials
from fourm.modalities import CORPUS, MODALITIES, ModalityScale, Storage

SPECIALS = TextSpecials()
SCALE = ModalityScale(image_size=16, patch_size=4, vocab_sizes={"tok_depth": 32, "tok_dinov2_global": 16,
                                                                "caption": 300})


def table():
    mods = SCALE.resolve_all(["tok_depth", "tok_dinov2_global", "caption", "rgb", "t5_caption"])
    mods["tok_dinov2_global"] = replace(mods["tok_dinov2_global"], max_tokens=4)
    return mods


def samples(n, seed=0, drop_every=3):
    """Synthetic token samples; every ``drop_every``-th lacks its caption and rgb."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        s = {"__key__": f"{seed}-{i:04d}",
             "tok_depth": rng.integers(0, 32, 16).astype(np.int16),
             "tok_dinov2_global": rng.integers(0, 16, 4).astype(np.int16),
             "caption": np.concatenate([rng.integers(204, 300, int(rng.integers(2, 12))), [3]]).astype(np.int16),
             "rgb": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
             "t5_caption": rng.standard_normal((int(rng.integers(2, 6)), 384)).astype(np.float16)}
        if drop_every and i % drop_every == 0:
            del s["caption"], s["rgb"]
        out.append(s)
    return out


@pytest.fixture(scope="module")
def data():
    return TokenDataset.from_samples(table(), samples(24), size=30)


@pytest.fixture(scope="module")
def masker():
    return Masker(table(), MaskingConfig(input_budget=12, target_budget=10), SPECIALS)


def same(a, b):
    fields = ("enc_ids", "enc_mod", "enc_pos", "enc_valid", "dec_ids", "dec_target", "dec_mod", "dec_pos",
              "dec_group", "dec_valid")
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in fields) and \
        a.continuous.keys() == b.continuous.keys() and all(torch.equal(a.continuous[k], b.continuous[k])
                                                          for k in a.continuous)


def take(stream, n):
    return [next(stream) for _ in range(n)]


# ----------------------------------------------------------------------------- dataset
def test_dataset_layout_and_presence(data):
    raw = samples(24)
    assert len(data) == 24 and data.arrays["tok_depth"]["ids"].dtype == np.int16
    assert data.arrays["caption"]["values"].dtype == np.int32 and data.arrays["rgb"]["pixels"].shape == (24, 16, 16, 3)
    assert data.arrays["t5_caption"]["values"].shape[1] == 384 and data.continuous_shapes["t5_caption"] == (77, 384)
    for i in (0, 1, 5):
        got = data[i]
        assert got["__key__"] == raw[i]["__key__"] and set(got) == set(raw[i])
        for name in set(raw[i]) - {"__key__"}:
            np.testing.assert_array_equal(got[name], raw[i][name])
    assert data.present[:, list(table()).index("caption")].sum() == 16


def test_split_and_views(data):
    train, held = data.split(4)
    assert len(train) == 20 and len(held) == 4 and held[0]["__key__"] == data[20]["__key__"]
    with pytest.raises(ValueError):
        data.split(24)


# ----------------------------------------------------------------------------- batches
def test_batches_are_fixed_shape_and_deterministic(data, masker):
    steps = StepBatches(data, masker, batch_size=4, seed=1)
    a, b = steps[3], steps[3]
    assert same(a, b) and not same(a, steps[4])
    a.check()
    assert a.enc_ids.shape == (4, 12) and a.dec_ids.shape == (4, 10)
    assert a.continuous["rgb"].shape == (4, 3, 16, 16) and a.continuous["t5_caption"].shape == (4, 77, 384)
    assert a.continuous["rgb"].min() >= -1 and a.continuous["rgb"].max() <= 1


def test_stream_is_the_same_for_any_worker_count_and_restart(data, masker):
    unbroken = take(train_batches(data, masker, batch_size=4, seed=2), 7)
    workers = take(train_batches(data, masker, batch_size=4, seed=2, num_workers=2), 7)
    restarted = take(train_batches(data, masker, start_step=4, batch_size=4, seed=2), 3)
    assert all(same(x, y) for x, y in zip(unbroken, workers, strict=True))
    assert all(same(x, y) for x, y in zip(unbroken[4:], restarted, strict=True))


def test_ranks_split_each_global_batch(data, masker):
    ranks = [StepBatches(data, masker, batch_size=3, seed=0, rank=r, world_size=2) for r in range(2)]
    for step in range(10):  # crosses epochs: 24 samples, global batch 6
        a, b = (set(r.positions(step).tolist()) for r in ranks)
        assert len(a) == 3 and not a & b
    epoch = np.concatenate([r.positions(s) for s in range(4) for r in ranks])
    assert sorted(epoch.tolist()) == list(range(24))  # every sample once per epoch


def test_eval_batches_cover_the_held_out_part_the_same_way(data, masker):
    _, held = data.split(5)
    first, second = eval_batches(held, masker, batch_size=2), eval_batches(held, masker, batch_size=2)
    assert [b.enc_ids.shape[0] for b in first] == [2, 2, 1]
    assert all(same(x, y) for x, y in zip(first, second, strict=True))


def test_mixture_weights_and_missing_series(masker):
    mods = table()
    a = TokenDataset.from_samples(mods, samples(10, seed=1, drop_every=0))
    b = TokenDataset.from_samples(mods, [{k: v for k, v in s.items() if k not in ("caption", "rgb")}
                                         for s in samples(30, seed=2, drop_every=0)])
    assert "caption" not in b.arrays and not b.present[:, list(mods).index("caption")].any()
    mix = MixtureDataset([a, b], weights=[3, 1])
    order = mix.epoch_order(seed=0, epoch=0)
    assert (order < 10).sum() == 30 and (order >= 10).sum() == 10  # 40 draws split 3:1
    assert np.array_equal(order, mix.epoch_order(seed=0, epoch=0))
    assert mix[12]["__key__"] == b[2]["__key__"]
    batch = next(train_batches(mix, masker, batch_size=8, seed=0))
    batch.check()
    assert batch.continuous["rgb"].shape == (8, 3, 16, 16)


# ----------------------------------------------------------------------------- corpus, baseline
def test_from_corpus_reads_a_token_corpus(tmp_path):
    from fourm.data.corpus import storage_entry, write_manifest, write_shard

    raw = samples(6, drop_every=0)
    storages = {m: Storage("npy", MODALITIES[m].token_dtype) for m in ("tok_depth", "caption")}
    storages |= {"rgb": CORPUS["rgb"].storage, "t5_caption": CORPUS["t5_caption"].storage}
    for shard in range(2):
        write_shard(tmp_path, shard, [{k: s[k] for k in ["__key__", *storages]} for s in raw[3 * shard: 3 * shard + 3]],
                    storages)
    info = {"tok_depth": {"vocab_size": 32, "num_tokens": 16}, "caption": {"vocab_size": 300, "max_tokens": 64}}
    write_manifest(tmp_path, {"modalities": {m: storage_entry(s, **info.get(m, {})) for m, s in storages.items()}})

    loaded = TokenDataset.from_corpus(tmp_path, table())  # the model's table: tok_dinov2_global is absent
    assert len(loaded) == 6 and "tok_dinov2_global" not in loaded.arrays
    for i in range(6):
        for name in storages:
            np.testing.assert_array_equal(loaded[i][name], raw[i][name])
    derived = TokenDataset.from_corpus(tmp_path)  # no table: from the manifest (rgb patches follow tok_depth's grid)
    assert derived.modalities["rgb"].tokens == 16 and derived.modalities["caption"].vocab_size == 300
    assert list(modalities_from_manifest({"modalities": info}, scale=SCALE)) == ["tok_depth", "caption"]


def test_a_token_corpus_from_before_num_tokens_is_read(tmp_path):
    """Manifests (and plans) written before the one vocabulary state every series' tokens per sample
    as ``tokens_per_sample``: read as ``num_tokens`` (images, globals) or ``max_tokens`` (sequences)."""
    from fourm.data.corpus import check_plan, read_manifest, storage_entry, write_manifest, write_shard
    from fourm.data.loader import read_token_manifest

    raw = samples(4, drop_every=0)
    names = ("tok_depth", "tok_dinov2_global", "caption")
    storages = {m: Storage("npy", MODALITIES[m].token_dtype) for m in names}
    write_shard(tmp_path, 0, [{k: s[k] for k in ["__key__", *names]} for s in raw], storages)
    old = {"tok_depth": {"vocab_size": 32, "tokens_per_sample": 16},
           "tok_dinov2_global": {"vocab_size": 16, "tokens_per_sample": 4},
           "caption": {"vocab_size": 300, "tokens_per_sample": 64}}
    plan = {"tokenizers": {m: {"class": "X", **e} for m, e in old.items()}}
    write_manifest(tmp_path, {**plan, "modalities": {m: storage_entry(s, **old[m]) for m, s in storages.items()},
                              "image_size": 16})

    new = {"tok_depth": {"vocab_size": 32, "num_tokens": 16}, "tok_dinov2_global": {"vocab_size": 16, "num_tokens": 4},
           "caption": {"vocab_size": 300, "max_tokens": 64}}
    manifest = read_token_manifest(tmp_path)  # a token corpus, not a raw one
    assert {m: {k: v for k, v in e.items() if k != "storage"} for m, e in manifest["modalities"].items()} == new
    assert manifest["tokenizers"] == {m: {"class": "X", **e} for m, e in new.items()}
    assert "tokens_per_sample" in json.loads((tmp_path / "manifest.json").read_text())["modalities"]["caption"]
    assert read_manifest(tmp_path) == manifest
    derived = modalities_from_manifest(manifest)
    assert [derived[m].tokens for m in names] == [16, 4, 64] and derived["caption"].max_tokens == 64
    assert derived == modalities_from_manifest({"modalities": new, "image_size": 16})
    loaded = TokenDataset.from_corpus(tmp_path)
    for i in range(4):
        for name in names:
            np.testing.assert_array_equal(loaded[i][name], raw[i][name])
    # a tokenize run of an older version resumed: its plan is the same plan in today's names
    (tmp_path / ".shards" / "plan.json").write_text(json.dumps(plan))
    assert check_plan(tmp_path, {"tokenizers": {m: {"class": "X", **e} for m, e in new.items()}}) is False


def test_unigram_baseline_is_the_entropy_of_the_token_distribution():
    mods = table()
    # every sample: global tokens [0, 0, 1, 2] -> p = (1/2, 1/4, 1/4); captions [5, 6, EOS]... p = 1/3 each
    rows = [{"tok_dinov2_global": np.array([0, 0, 1, 2], dtype=np.int16), "caption": np.array([205, 206, 3])}
            for _ in range(5)]
    data = TokenDataset.from_samples(mods, rows)
    baseline = unigram_baseline(data)
    assert baseline["tok_dinov2_global"] == pytest.approx(-(0.5 * np.log(0.5) + 0.5 * np.log(0.25)))
    assert baseline["caption"] == pytest.approx(np.log(3))
    assert set(baseline) == {"tok_dinov2_global", "caption"}
    held = TokenDataset.from_samples(mods, [{"tok_dinov2_global": np.array([1, 1, 1, 1], dtype=np.int16)}])
    assert unigram_baseline(data, held, smoothing=0.0)["tok_dinov2_global"] == pytest.approx(np.log(4))
    assert np.isfinite(unigram_baseline(held, data)["tok_dinov2_global"])  # unseen ids: smoothed, not infinite
