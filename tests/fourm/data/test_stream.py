"""Shard streams: every sample once per epoch, disjoint ranks, exact restarts with any worker count,
bounded windows, held-out split, weighted mixtures, remote corpora (pipe: and http), damaged shards."""

import functools
import http.server
import pickle
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from fourm.data.corpus import CorpusError, shard_path, storage_entry, write_manifest, write_shard
from fourm.data.loader import StepBatches, TokenDataset, train_batches
from fourm.data.masking import Masker, MaskingConfig, TextSpecials
from fourm.data.stream import MIX_BLOCK, ShardStream, StreamMixture, open_token_data
from fourm.modalities import ModalityScale, Storage

SCALE = ModalityScale(image_size=16, patch_size=4, vocab_sizes={"tok_depth": 32, "caption": 300})
SIZES = [5, 5, 5, 5, 5, 5, 3]  # 33 samples in 7 shards, the last one short


def table():
    return SCALE.resolve_all(["tok_depth", "caption"])


def write_corpus(root, sizes=SIZES, name="c"):
    rng = np.random.default_rng(len(name))
    storages = {m: Storage("npy", "int16") for m in ("tok_depth", "caption")}
    for shard, size in enumerate(sizes):
        write_shard(root, shard, [{"__key__": f"{name}{shard}-{j}", "tok_depth": rng.integers(0, 32, 16),
                                   "caption": np.array([*rng.integers(204, 300, 3), 3])} for j in range(size)],
                    storages)
    write_manifest(root, {"modalities": {
        "tok_depth": storage_entry(storages["tok_depth"], vocab_size=32, num_tokens=16),
        "caption": storage_entry(storages["caption"], vocab_size=300, max_tokens=8)}, "image_size": 16})
    return str(root)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("tokens"))


def keys(samples):
    return [s["__key__"] for s in samples]


def test_an_epoch_is_every_sample_once_and_ranks_read_disjoint_shards(corpus):
    stream = ShardStream(corpus, table(), window=2)
    epoch = keys(stream.sample(0, 0, 1, p) for p in range(len(stream)))
    assert sorted(epoch) == sorted(f"c{i}-{j}" for i, n in enumerate(SIZES) for j in range(n))
    second = keys(stream.sample(0, 0, 1, len(stream) + p) for p in range(len(stream)))
    assert sorted(second) == sorted(epoch) and second != epoch  # a new order each epoch
    # in an epoch, rank 0 and rank 1 read different shards (3 or 4 of the 7: at least 13 samples each)
    shards = [{k.split("-")[0] for k in keys(stream.sample(0, r, 2, p) for p in range(13))} for r in range(2)]
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) >= 6
    # a window's samples are shuffled together: consecutive positions mix its two shards
    assert len({k.split("-")[0] for k in epoch[:10]}) == 2


def test_the_stream_is_a_function_of_the_step_and_restarts_exactly(corpus):
    masker = Masker(table(), MaskingConfig(input_budget=10, target_budget=8), TextSpecials())
    fields = ("enc_ids", "enc_mod", "dec_ids", "dec_target", "dec_mod", "dec_valid")

    def same(a, b):
        return all(torch.equal(getattr(a, f), getattr(b, f)) for f in fields)

    for workers in (0, 2):  # 12 steps of 4 cross the epochs of every reader
        stream = ShardStream(corpus, table(), window=2)
        expected = [StepBatches(stream, masker, batch_size=4, seed=3, workers=workers)[s] for s in range(12)]
        unbroken = train_batches(ShardStream(corpus, table(), window=2), masker, batch_size=4, seed=3,
                                 num_workers=workers)
        assert all(same(next(unbroken), expected[s]) for s in range(12)), workers
        restarted = train_batches(ShardStream(corpus, table(), window=2), masker, start_step=9, batch_size=4,
                                  seed=3, num_workers=workers)
        assert all(same(next(restarted), expected[s]) for s in range(9, 12)), workers
        assert len(stream._windows) <= 2 * max(1, workers)  # decoded windows held, whatever the corpus size
    # a worker's copy carries the plan and the batch shapes, not the decoded head of the corpus
    stream.token_counts("tok_depth")
    copy = pickle.loads(pickle.dumps(stream))
    assert "head" in stream.__dict__ and "head" not in copy.__dict__ and not copy._windows
    assert copy.continuous_shapes == stream.continuous_shapes


def test_loader_workers_read_disjoint_shards(corpus):
    stream = ShardStream(corpus, table(), window=1)
    # two workers of one rank: steps 0, 2, 4... and 1, 3, 5... come from different shards in an epoch
    even = {k.split("-")[0] for s in (0, 2, 4) for k in keys(stream.draw(s, 0, 0, 1, 4, workers=2))}
    odd = {k.split("-")[0] for s in (1, 3, 5) for k in keys(stream.draw(s, 0, 0, 1, 4, workers=2))}
    assert even and odd and not even & odd


def test_split_holds_out_the_last_samples(corpus):
    train, held = ShardStream(corpus, table(), window=3).split(7)
    assert isinstance(held, TokenDataset)
    assert keys(held[i] for i in range(7)) == ["c5-1", "c5-2", "c5-3", "c5-4", "c6-0", "c6-1", "c6-2"]
    seen = keys(train.sample(0, 0, 1, p) for p in range(len(train)))
    assert len(train) == 26 and sorted(seen) == sorted({*seen}) and not set(seen) & set(keys(held))
    assert train.token_counts("tok_depth").sum() == 26 * 16  # frequencies from its first samples (all 26 here)
    with pytest.raises(ValueError, match="cannot hold out 33 of 33"):
        ShardStream(corpus, table()).split(33)


def test_a_mixture_draws_each_corpus_by_its_weight(tmp_path, corpus):
    other = write_corpus(tmp_path / "other", [4, 4, 4], name="o")
    mix = StreamMixture([ShardStream(corpus, table()), ShardStream(other, table())], [3.0, 1.0])
    drawn = Counter(k[0] for step in range(2 * MIX_BLOCK // 64) for k in keys(mix.draw(step, 0, 0, 1, 64)))
    assert drawn == {"c": 2 * 3 * MIX_BLOCK // 4, "o": 2 * MIX_BLOCK // 4}  # exact per block
    assert keys(mix.draw(5, 0, 0, 1, 8)) == keys(StreamMixture(mix.streams, [3.0, 1.0]).draw(5, 0, 0, 1, 8))
    train, held = mix.split(2)
    assert len(held) == 4 and len(train) == len(mix) - 4
    copy = pickle.loads(pickle.dumps(train))  # a loader worker's: batch shapes known, no corpus head to re-read
    assert copy.continuous_shapes == train.continuous_shapes
    assert not any("head" in stream.__dict__ for stream in copy.streams)


def test_remote_corpora_read_the_same_samples(corpus):
    local = keys(ShardStream(corpus, table()).draw(3, 0, 0, 1, 8))
    piped = ShardStream(f"pipe:cat {corpus}/{{}}", table())
    assert keys(piped.draw(3, 0, 0, 1, 8)) == local

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=corpus)
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert keys(ShardStream(url, table()).draw(3, 0, 0, 1, 8)) == local
        data = open_token_data([url], table())  # auto: a remote corpus is streamed
        assert isinstance(data, ShardStream)
        with pytest.raises(CorpusError, match="cannot read http://.*/missing/manifest.json"):
            ShardStream(f"{url}/missing", table())
    finally:
        server.shutdown()


def test_open_token_data_keeps_small_local_corpora_in_memory(corpus):
    assert isinstance(open_token_data([corpus], table()), TokenDataset)
    assert isinstance(open_token_data([corpus], table(), loader="stream"), ShardStream)
    with pytest.raises(ValueError, match="data.loader must be auto, memory, stream, not 'disk'"):
        open_token_data([corpus], table(), loader="disk")
    with pytest.raises(ValueError, match=r"7 shards for 8 readers \(ranks x loader workers\)"):
        ShardStream(corpus, table()).draw(0, 0, 0, 4, 1, workers=2)


def test_a_damaged_shard_loses_its_samples_not_the_stream(tmp_path):
    root = write_corpus(tmp_path / "c")
    path = Path(shard_path(root, "caption", 2))
    path.write_bytes(path.read_bytes()[:1024])  # cut inside the second member
    stream = ShardStream(root, table(), window=7)
    epoch = keys(stream.sample(0, 0, 1, p) for p in range(len(stream)))
    assert len(epoch) == 33 and stream.skipped.total >= 3  # the lost samples' places are kept
    assert not any(k in epoch for k in ("c2-2", "c2-3", "c2-4"))
