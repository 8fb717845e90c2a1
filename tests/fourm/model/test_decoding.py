"""Step-by-step decoding with a KV cache: what a full decode computes, one step at a time."""

import math

import pytest
import torch

from .conftest import dense, make_model, random_batch, tiny_config


def _steps(batch, name, model, chunk):
    """A modality's target tokens of each sample, in position order, cut into chunks of ``chunk``
    positions: (ids, pos, group, valid) per step, each (B, chunk)."""
    m = model.modality_index(name)
    rows = []
    for b in range(batch.dec_ids.shape[0]):
        sel = ((batch.dec_mod[b] == m) & batch.dec_valid[b]).nonzero().squeeze(1)
        sel = sel[batch.dec_pos[b, sel].argsort()]
        rows.append(sel)
    length = math.ceil(max(len(r) for r in rows) / chunk) * chunk
    cols = torch.zeros(len(rows), length, dtype=torch.long)
    valid = torch.zeros(len(rows), length, dtype=torch.bool)
    for b, r in enumerate(rows):
        cols[b, : len(r)], valid[b, : len(r)] = r, True
    take = lambda t: t.gather(1, cols)  # noqa: E731
    ids, pos, group = take(batch.dec_ids), take(batch.dec_pos), take(batch.dec_group)
    cut = lambda t, s: t[:, s:s + chunk]  # noqa: E731
    return [(cut(ids, s), cut(pos, s), cut(group, s), cut(valid, s), cut(cols, s)) for s in range(0, length, chunk)]


def test_kv_cached_decoding_equals_full_decode():
    model, batch = make_model(), random_batch(tiny_config(), batch_size=3)
    shape = batch.dec_ids.shape
    with torch.no_grad():
        memory, memory_valid = model.encode(batch)
        full = model.logits(model.decode(batch, memory, memory_valid), batch.dec_mod, batch.dec_valid)
        cache, fed = model.start_decoding(memory, memory_valid), 0
        # image and global targets in one step each, captions one token at a time, det three at a time;
        # every later step attends over a cache holding the other groups' tokens, which it must ignore
        for name, chunk in (("tok_depth", 16), ("tok_dinov2_global", 16), ("caption", 1), ("det", 3)):
            for ids, pos, group, valid, cols in _steps(batch, name, model, chunk):
                step, fed = model.decode_step(cache, ids, name, pos, group, valid), fed + ids.shape[1]
                idx, logits = step[name]
                expected = dense(full, name, shape)[torch.arange(shape[0])[:, None].expand_as(cols)[valid], cols[valid]]
                assert torch.allclose(logits, expected, atol=1e-5), name
    assert len(cache) == len(cache.layers[0]) == fed


@pytest.mark.parametrize("tie", [False, True])
def test_decode_step_of_one_named_modality_equals_the_tagged_step(tie):
    """A step given one modality name and no ``valid`` (autoregressive decoding's) takes a path that skips
    grouping tokens by modality; it computes what the same step tagged token by token computes, for
    sequence targets (the previous token embedded) and image targets (the mask token)."""
    model, batch = make_model(use_tied_heads=tie), random_batch(tiny_config(), batch_size=2)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        memory, memory_valid = model.encode(batch)
        named, tagged = model.start_decoding(memory, memory_valid), model.start_decoding(memory, memory_valid)
        for name, width, steps in (("caption", 1, 5), ("caption", 3, 2), ("tok_depth", 16, 1)):
            vocab = model.specs[name].vocab_size
            for s in range(steps):
                ids = torch.randint(vocab, (2, width), generator=g)
                pos = torch.arange(s * width, (s + 1) * width).expand(2, -1)
                mod = torch.full_like(ids, model.modality_index(name))
                a = model.decode_step(named, ids, name, pos)[name]
                b = model.decode_step(tagged, ids, mod, pos, valid=torch.ones_like(ids, dtype=torch.bool))[name]
                assert torch.equal(a.index, b.index) and torch.equal(a.logits, b.logits), (name, s)
            # the cache holds both paths' tokens alike: the next step of either sees the same
    assert torch.equal(named.group, tagged.group) and torch.equal(named.pos, tagged.pos)


def test_decode_step_of_one_named_modality_rejects_what_the_tagged_step_rejects():
    model, batch = make_model(), random_batch(tiny_config(), batch_size=2)
    with torch.no_grad():
        memory, memory_valid = model.encode(batch)
        cache = model.start_decoding(memory, memory_valid)
        ok = torch.zeros(2, 1, dtype=torch.long)
        with pytest.raises(ValueError, match=r"decoder token \[1, 0\] of modality 'caption': id 100 is out of range"):
            model.decode_step(cache, torch.tensor([[3], [100]]), "caption", ok)
        with pytest.raises(ValueError, match=r"decoder token \[0, 0\] of modality 'caption': position -1 is out"):
            model.decode_step(cache, ok, "caption", torch.tensor([[-1], [0]]))
        with pytest.raises(ValueError, match="'rgb' is input-only"):
            model.decode_step(cache, ok, "rgb", ok)
        with pytest.raises(ValueError, match="not one of this model's"):
            model.decode_step(cache, ok, "depth", ok)
