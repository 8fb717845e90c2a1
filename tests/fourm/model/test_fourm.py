"""FourM behaviour: loss and gradients, masking properties, save/load, errors (KV-cached decoding:
test_decoding.py)."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from fourm.modalities import UnknownModalityError
from fourm.model import FourM, FourMConfig
from fourm.model.batch import Batch

from .conftest import (
    SCALE,
    assert_same_gradients,
    dense,
    make_model,
    random_batch,
    replace,
    run,
    same,
    tiny_config,
)


@pytest.mark.parametrize("overrides", [
    {},
    {"norm": "rmsnorm", "use_qk_norm": True, "use_tied_heads": True},
    {"use_bias": True, "loss_weighting": "token", "dropout": 0.1},
    {"pixel_stem": "conv"},
])
def test_forward_backward(overrides):
    model = make_model(**overrides).train()
    out = model(random_batch(model.config))
    assert set(out.modality_losses) == {"tok_depth", "tok_dinov2_global", "caption", "det"}
    # at initialisation every target is close to a uniform guess over its vocabulary
    for name, value in out.modality_losses.items():
        assert abs(value.item() - math.log(model.specs[name].vocab_size)) < 0.5, name
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    stem = [n for n in grads if n.startswith("embed.projections.rgb.")]
    for name in (*stem, "embed.projections.t5_caption.weight", "embed.tables.tok_rgb.weight",
                 "embed.tables.caption.weight", "embed.mask_token", "encoder.0.attn.qkv.weight",
                 "decoder.1.cross_attn.kv.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name


def test_loss_weighting():
    batch = random_batch(tiny_config())
    by_mod = make_model()(batch)
    by_token = make_model(loss_weighting="token")(batch)
    counts = {n: len(idx) for n, (idx, _) in by_mod.logits.items()}
    mean = sum(by_mod.modality_losses.values()) / len(counts)
    weighted = sum(by_mod.modality_losses[n] * c for n, c in counts.items()) / sum(counts.values())
    assert torch.allclose(by_mod.loss, mean) and torch.allclose(by_token.loss, weighted)
    # a weight per modality: caption counts three times, det not at all
    weights = {"caption": 3.0, "det": 0.0}
    w = {n: weights.get(n, 1.0) for n in counts}
    by_mod = make_model(loss_weights=weights)(batch)
    by_token = make_model(loss_weighting="token", loss_weights=weights)(batch)
    mean = sum(by_mod.modality_losses[n] * w[n] for n in counts) / sum(w.values())
    weighted = sum(by_mod.modality_losses[n] * counts[n] * w[n] for n in counts) / sum(counts[n] * w[n] for n in counts)
    assert torch.allclose(by_mod.loss, mean) and torch.allclose(by_token.loss, weighted)
    # a registry modality the model lacks is ignored (one config for several models); an unknown name is not
    assert make_model(loss_weights={"tok_normal": 2.0}).config.loss_weights == {}
    with pytest.raises(UnknownModalityError):
        make_model(loss_weights={"captoin": 2.0})
    with pytest.raises(ValueError, match="negative"):
        make_model(loss_weights={"caption": -1.0})


def pad(batch, extra_enc, extra_dec, seed=1) -> Batch:
    """``batch`` with more padding at the end of both token lists (garbage tags, -100 targets)."""
    g = torch.Generator().manual_seed(seed)
    fields = {}
    for f in dataclasses.fields(batch):
        if f.name == "continuous":
            continue
        t, extra = getattr(batch, f.name), extra_enc if f.name.startswith("enc") else extra_dec
        if f.name.endswith("valid"):
            tail = torch.zeros(t.shape[0], extra, dtype=torch.bool)
        elif f.name == "dec_target":
            tail = torch.full((t.shape[0], extra), -100)
        else:
            tail = torch.randint(0, 3, (t.shape[0], extra), generator=g)
        fields[f.name] = torch.cat([t, tail], dim=1)
    return Batch(**fields, continuous=batch.continuous)


def test_padding_and_token_order_do_not_matter():
    model, batch = make_model(), random_batch(tiny_config())
    loss = run(model, batch)[2]
    out = run(model, pad(batch, 7, 5))[2]
    assert torch.allclose(out.loss, loss.loss, atol=1e-6)
    for name, value in loss.modality_losses.items():
        assert torch.allclose(out.modality_losses[name], value, atol=1e-6)
    # shuffling each token list (keeping the tags) is also invisible
    perm_e, perm_d = torch.randperm(40), torch.randperm(40)
    shuffled = Batch(**{f.name: getattr(batch, f.name)[:, perm_e if f.name.startswith("enc") else perm_d]
                        for f in dataclasses.fields(batch) if f.name != "continuous"}, continuous=batch.continuous)
    assert torch.allclose(run(model, shuffled)[2].loss, loss.loss, atol=1e-6)


def test_a_modalitys_rows_reach_its_head_and_stem_in_a_few_sizes_and_change_nothing(monkeypatch):
    """Heads and pixel stems see a modality's rows padded to a few sizes (oneDNN builds a kernel per row
    count on a CPU): the loss and every gradient are those of the unpadded rows."""
    from fourm.model import embeddings
    from fourm.model import fourm as fourm_module

    sizes = {2**k for k in range(7)} | {64 * k for k in range(1, 40)}
    for n in range(1, 2000):
        idx = torch.arange(n) * 3
        padded = embeddings.pad_rows(idx, torch.ones(1, requires_grad=True))
        assert padded.numel() in sizes and padded.numel() >= n and torch.equal(padded[:n], idx)
        assert set(padded[n:].tolist()) <= {0}
    assert embeddings.pad_rows(torch.arange(0), torch.ones(1)).numel() == 0
    with torch.no_grad():  # inference in fp32 (or int8) runs its rows only; in bf16 it pads them too
        assert torch.equal(embeddings.pad_rows(torch.arange(100), torch.ones(1)), torch.arange(100))
        assert embeddings.pad_rows(torch.arange(100), torch.ones(1, dtype=torch.bfloat16)).numel() == 128
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert embeddings.pad_rows(torch.arange(100), torch.ones(1)).numel() == 128

    batch = random_batch(tiny_config(), batch_size=5)
    seen = []
    padded_model = make_model()
    for head in padded_model.heads.values():
        head.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    padded_model(batch).loss.backward()
    assert seen and set(seen) <= sizes
    monkeypatch.setattr(fourm_module, "pad_rows", lambda idx, x: idx)
    monkeypatch.setattr(embeddings, "pad_rows", lambda idx, x: idx)
    plain = make_model()
    plain(batch).loss.backward()
    torch.testing.assert_close(padded_model(batch).loss, plain(batch).loss)
    assert_same_gradients(plain, padded_model)


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("overrides", [{}, {"use_rotary": True, "use_qk_norm": True, "use_bias": True}])
def test_packed_blocks_give_the_padded_loss_gradients_and_outputs(monkeypatch, grad, overrides):
    """The model with packed blocks (fourm.model.packing) against the same model with packing switched off:
    the loss, every gradient, the encoder output at valid tokens and the decoder's logits are the same."""
    from fourm.model.packing import Packing

    batch = random_batch(tiny_config(), batch_size=4)
    calls = []
    real = Packing.of.__func__
    monkeypatch.setattr(Packing, "of", classmethod(lambda cls, v, like, **kw: calls.append(real(cls, v, like, **kw))
                                                   or calls[-1]))
    packed = make_model(**overrides)
    with torch.set_grad_enabled(grad):
        out = packed(batch)
        memory, valid = packed.encode(batch)
    assert calls and all(c is not None for c in calls)  # the encoder, the decoder and the memory all packed
    monkeypatch.setattr(Packing, "of", classmethod(lambda cls, v, like, **kw: None))
    plain = make_model(**overrides)
    with torch.set_grad_enabled(grad):
        expected = plain(batch)
        expected_memory, _ = plain.encode(batch)
    torch.testing.assert_close(out.loss, expected.loss)
    torch.testing.assert_close(memory[valid], expected_memory[valid])
    for name, logits in expected.logits.items():
        torch.testing.assert_close(out.logits[name].logits, logits.logits, rtol=1e-5, atol=1e-5)
    if grad:
        out.loss.backward()
        expected.loss.backward()
        assert_same_gradients(plain, packed)


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for the backward while ``fn`` runs (each storage once)."""
    storages = {}

    def keep(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_activation_checkpointing_gives_the_same_loss_and_gradients_for_less_memory(dropout):
    """``checkpoint_activations()`` (``train.use_activation_checkpointing``): the blocks' forward runs again in
    the backward (with the same dropout draws), so the loss and every gradient are the plain model's, while
    the tensors kept for the backward shrink; without gradients nothing changes."""
    batch = random_batch(tiny_config(), batch_size=4)
    plain, recomputed = make_model(dropout=dropout).train(), make_model(dropout=dropout).train()
    recomputed.checkpoint_activations()
    losses, kept = [], []
    for model in (plain, recomputed):
        torch.manual_seed(1)  # the same dropout draws in both models' forwards
        kept.append(saved_bytes(lambda: losses.append(model(batch).loss)))  # noqa: B023 (called at once)
        losses[-1].backward()
    torch.testing.assert_close(losses[1], losses[0])
    assert_same_gradients(plain, recomputed)
    assert kept[1] < 0.6 * kept[0], kept
    with torch.no_grad():  # evaluation: the blocks run once, as without it
        torch.testing.assert_close(recomputed.eval()(batch).loss, plain.eval()(batch).loss)


def test_encoder_ignores_padding():
    model, batch = make_model(), random_batch(tiny_config())
    memory, logits, loss = run(model, batch)
    pad = ~batch.enc_valid
    garbage = replace(batch, enc_ids=batch.enc_ids.masked_fill(pad, 5), enc_mod=batch.enc_mod.masked_fill(pad, 1),
                      enc_pos=batch.enc_pos.masked_fill(pad, 3))
    memory2, logits2, loss2 = run(model, garbage)
    assert same(memory[batch.enc_valid], memory2[batch.enc_valid])
    assert torch.allclose(loss.loss, loss2.loss, atol=1e-6)


def test_decoder_groups_are_isolated():
    model, batch = make_model(), random_batch(tiny_config())
    caption = model.modality_index("caption")
    shape = batch.dec_ids.shape
    _, before, _ = run(model, batch)
    # new teacher-forced caption tokens for sample 0 only
    change = (batch.dec_mod == caption) & batch.dec_valid
    change[1:] = False
    _, after, _ = run(model, replace(batch, dec_ids=batch.dec_ids.masked_fill(change, 7)))
    for name in before:
        a, b = dense(before, name, shape), dense(after, name, shape)
        if name == "caption":
            assert same(a[1:], b[1:]) and not same(a[0], b[0])
        else:
            assert same(a, b), name


def test_sequence_targets_are_causal():
    model, batch = make_model(), random_batch(tiny_config())
    is_caption = (batch.dec_mod == model.modality_index("caption")) & batch.dec_valid
    shape = batch.dec_ids.shape
    _, before, _ = run(model, batch)
    changed = is_caption & (batch.dec_pos == 1)
    _, after, _ = run(model, replace(batch, dec_ids=batch.dec_ids.masked_fill(changed, 9)))
    a, b = dense(before, "caption", shape), dense(after, "caption", shape)
    earlier, later = is_caption & (batch.dec_pos < 1), is_caption & (batch.dec_pos >= 1)
    assert same(a[earlier], b[earlier])
    assert not same(a[changed], b[changed]) and not same(a[later], b[later])


def test_no_inputs_at_all_is_unconditional():
    model, batch = make_model(), random_batch(tiny_config())
    empty = replace(batch, enc_valid=torch.zeros_like(batch.enc_valid))
    loss = run(model, empty)[2]
    assert torch.isfinite(loss.loss)
    garbage = replace(empty, enc_ids=torch.zeros_like(batch.enc_ids))  # the (invalid) inputs change nothing
    assert torch.equal(run(model, garbage)[2].loss, loss.loss)


def test_save_load_roundtrip(tmp_path):
    for tie, stem in ((False, "linear"), (True, "conv")):
        model, batch = make_model(use_tied_heads=tie, pixel_stem=stem), random_batch(tiny_config())
        model.save_pretrained(tmp_path / f"m{tie}")
        loaded = FourM.from_pretrained(tmp_path / f"m{tie}")
        assert loaded.config == model.config
        assert torch.equal(run(loaded, batch)[2].loss, run(model, batch)[2].loss)


def test_a_config_json_from_before_the_scale_object_loads(tmp_path):
    """config.json as written before the scale was one object and before use_tied_heads: the scale's
    fields flat at the top, and tie_heads. It loads into the nested config, builds the same model, and
    a run's checkpoint of it is still one of the same model (resume)."""
    from fourm.train.checkpoint import check_fits

    model, batch = make_model(use_tied_heads=True), random_batch(tiny_config())
    model.save_pretrained(tmp_path / "run" / "model")
    path = tmp_path / "run" / "model" / "config.json"
    record = json.loads(path.read_text())
    new = record["config"]
    old = {k: v for k, v in new.items() if k not in ("scale", "use_tied_heads")}
    old |= {"image_size": 32, "patch_size": 8, "patch_sizes": {}, "vocab_sizes": new["scale"]["vocab_sizes"],
            "tie_heads": True}
    path.write_text(json.dumps({**record, "config": old}))

    loaded = FourM.from_pretrained(tmp_path / "run" / "model")
    assert loaded.config == model.config and loaded.config.scale == SCALE and loaded.config.use_tied_heads
    assert torch.equal(run(loaded, batch)[2].loss, run(model, batch)[2].loss)
    check_fits(tmp_path / "run", model)  # no CheckpointMismatch


def test_bf16_autocast():
    model, batch = make_model().train(), random_batch(tiny_config())
    fp32 = model(batch).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and abs(out.loss.item() - fp32.item()) < 0.05
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ---------------------------------------------------------------------------------- errors
def test_out_of_vocabulary_ids_are_named():
    model, batch = make_model(), random_batch(tiny_config())
    bad = batch.enc_ids.clone()
    where = ((batch.enc_mod == model.modality_index("tok_rgb")) & batch.enc_valid).nonzero()[0]
    bad[tuple(where)] = 64
    with pytest.raises(ValueError, match=r"modality 'tok_rgb': id 64 is out of range \[0, 64\)"):
        model(replace(batch, enc_ids=bad))
    target = batch.dec_target.clone()
    where = ((batch.dec_mod == model.modality_index("caption")) & batch.dec_valid).nonzero()[0]
    target[tuple(where)] = 100
    with pytest.raises(ValueError, match=r"target.*'caption': id 100 is out of range"):
        model(replace(batch, dec_target=target))
    pos = batch.dec_pos.masked_fill(batch.dec_mod == model.modality_index("det"), 24)
    with pytest.raises(ValueError, match=r"'det': position 24 is out of range \[0, 24\).*max_tokens"):
        model(replace(batch, dec_pos=pos))


def test_bad_inputs_have_clear_errors():
    model, batch = make_model(), random_batch(tiny_config())
    with pytest.raises(UnknownModalityError, match="'tok_nope'.*known:"):
        FourMConfig(modalities=["tok_rgb", "tok_nope"])
    with pytest.raises(ValueError, match=r"continuous\['rgb'\] has shape \(3, 3, 16, 16\), expected \(3, 3, 32, 32\)"):
        model(replace(batch, continuous={**batch.continuous, "rgb": torch.zeros(3, 3, 16, 16)}))
    with pytest.raises(ValueError, match=r"continuous\['t5_caption'\].*expected \(3, L, 384\)"):
        model(replace(batch, continuous={**batch.continuous, "t5_caption": torch.zeros(3, 5, 100)}))
    with pytest.raises(ValueError, match="no batch.continuous"):
        model(replace(batch, continuous={}))
    with pytest.raises(ValueError, match="'rgb' is input-only"):
        model(replace(batch, dec_mod=batch.dec_mod.masked_fill(batch.dec_valid, model.modality_index("rgb"))))
    with pytest.raises(ValueError, match="modality index 7 is out of range"):
        model(replace(batch, enc_mod=batch.enc_mod.masked_fill(batch.enc_valid, 7)))
    with pytest.raises(ValueError, match="batch.dec_mod has shape"):
        model(replace(batch, dec_mod=batch.dec_mod[:, :5]))
    with pytest.raises(ValueError, match="not one of this model's"):
        model.modality_index("tok_normal")


@pytest.mark.slow
@pytest.mark.parametrize("recompute", [False, True])
def test_compiled_blocks_give_the_eager_loss_and_gradients(recompute):
    """``compile()`` (what ``train.use_compile=true`` calls) compiles the blocks in place: same numbers,
    same parameter names (checkpoints are interchangeable), no graph per layer; also with activation
    checkpointing, whose backward runs the compiled blocks again."""
    from torch._dynamo.utils import counters

    batch = random_batch(tiny_config())
    eager, compiled = make_model(), make_model()
    compiled.compile()
    compiled.checkpoint_activations(recompute)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    counters.clear()
    for model in (eager, compiled):
        model(batch).loss.backward()
    torch.testing.assert_close(compiled(batch).loss, eager(batch).loss)
    assert_same_gradients(eager, compiled, rtol=1e-4, atol=1e-6)
    assert counters["stats"]["unique_graphs"] <= 3  # one encoder block, one decoder block, the loss


@pytest.mark.slow
def test_compiled_blocks_compile_once_whatever_the_batches_row_counts():
    """Training batches of one shape hold different numbers of valid tokens: each stack's compiled block
    takes them all in one graph (before, the first batch's counts got a graph, then any counts another)."""
    from torch._dynamo.utils import counters

    model = make_model().train()
    model.compile()
    rows = set()
    for seed in range(4):
        batch = random_batch(tiny_config(), seed=seed)
        rows.add((int(batch.enc_valid.sum()), int(batch.dec_valid.sum())))
        loss = model(batch).loss
        loss.backward()
        assert loss.isfinite()
        if seed == 0:  # what the first batch compiled serves the others
            counters.clear()
    assert len(rows) == 4
    assert counters["stats"]["unique_graphs"] == 0


@pytest.mark.slow
def test_compiled_blocks_with_matmul_attention_give_the_eager_loss_and_gradients_in_bf16(use_attention_kernel):
    """The CPU's matmul attention compiled inside the blocks, under bf16 autocast, with padded decoder
    tokens and garbage padding: the eager loss and gradients to bf16's rounding. (Handed views of the
    fused qkv projection, inductor compiled a decoder block to NaN; the kernel now copies them.)"""
    use_attention_kernel("matmul", torch.bfloat16, with_dropout="sdpa")
    batch = random_batch(tiny_config())
    eager, compiled = make_model().train(), make_model().train()
    compiled.compile()
    losses = []
    for model in (eager, compiled):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses.append(model(batch).loss)
        losses[-1].backward()
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-2, atol=1e-2)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        if a.grad is None:  # a modality this batch has no target of
            assert b.grad is None, name
            continue
        assert b.grad.isfinite().all(), name
        torch.testing.assert_close(b.grad, a.grad, rtol=0.1, atol=0.05 * a.grad.abs().max().item() + 1e-6, msg=name)


def test_compile_decides_attention_precision_before_anything_is_traced(attention_timings):
    """Timed inside a compiled block, the clock would break the block's graph (and torch 2.13 crashed
    replaying the split frame from a warm cache): ``compile()`` decides it first, for training and inference."""
    from fourm.model import attention

    make_model().compile()
    assert sorted(attention_timings) == [(torch.bfloat16, False), (torch.bfloat16, True)]
    # fp32 is not timed, but decided too: a key first added inside a traced block recompiled every block
    assert {("cpu", torch.float32, True), ("cpu", torch.float32, False)} <= set(attention._KERNEL)


@pytest.mark.slow
def test_compiled_cross_entropy_is_torchs_in_fp32():
    """The loss ``compile()`` swaps in (its backward written out, cast and softmax fused) gives
    ``F.cross_entropy`` of the fp32 logits, value and gradient, for bf16 logits, ignored targets and
    token counts that change (dynamic)."""
    from fourm.model.cross_entropy import IGNORE, cross_entropy_sum, fused_cross_entropy_sum

    compiled = torch.compile(fused_cross_entropy_sum, dynamic=True)
    for n in (5, 9, 17):
        logits = (4 * torch.randn(n, 1000)).bfloat16().requires_grad_()
        target = torch.randint(0, 1000, (n,))
        target[1] = IGNORE
        expected = F.cross_entropy(logits.float(), target, ignore_index=IGNORE, reduction="sum")
        (expected_grad,) = torch.autograd.grad(expected, logits)
        for loss in (compiled, cross_entropy_sum):
            got = loss(logits, target)
            (grad,) = torch.autograd.grad(got, logits)
            assert got.dtype == torch.float32 and grad.dtype == torch.bfloat16
            torch.testing.assert_close(got, expected)
            torch.testing.assert_close(grad, expected_grad)
            assert (grad[1] == 0).all()


def test_init_std_and_position_scale_are_the_models_and_survive_a_save(tmp_path):
    """init_std sets the weights' spread at init; position_scale multiplies the fixed positions, and a
    model saved with it loads to the same outputs (it is part of the forward pass, not of the init)."""
    base, wide = make_model(), make_model(init_std=0.05, position_scale=4.0)
    ratio = wide.encoder[0].mlp.w12.weight.std() / base.encoder[0].mlp.w12.weight.std()
    assert 2.2 < ratio < 2.8
    assert torch.allclose(wide.embed.positions, 4.0 * base.embed.positions)
    batch = random_batch(tiny_config())
    wide.save_pretrained(tmp_path / "m")
    loaded = FourM.from_pretrained(tmp_path / "m")
    assert loaded.config.position_scale == 4.0
    assert torch.equal(run(loaded, batch)[2].loss, run(wide, batch)[2].loss)


def test_rotary_attention_sees_where_tokens_lie_relative_to_each_other(tmp_path):
    """With use_rotary and no absolute positions, the encoder's outputs change when two tokens trade
    places on the grid, not when all of them move by the same offset; a saved model keeps it."""
    model = make_model(use_rotary=True, position_scale=0.0)
    tok_rgb, empty = model.modality_index("tok_rgb"), torch.zeros(1, 0, dtype=torch.long)

    def encode(model, positions):  # tok_rgb ids 5, 9, 13 on a 4 x 4 grid, at raster positions ``positions``
        pos = torch.tensor([positions])
        batch = Batch(torch.tensor([[5, 9, 13]]), torch.full_like(pos, tok_rgb), pos, torch.ones_like(pos).bool(),
                      dec_ids=empty, dec_target=empty, dec_mod=empty, dec_pos=empty, dec_group=empty,
                      dec_valid=empty.bool())
        return model.encode(batch)[0]

    with torch.no_grad():
        base = encode(model, [0, 1, 4])  # (0, 0), (0, 1), (1, 0)
        assert torch.allclose(encode(model, [5, 6, 9]), base, atol=1e-5)  # one row down, one column right
        assert not torch.allclose(encode(model, [1, 0, 4]), base, atol=1e-3)  # the first two trade places
        model.save_pretrained(tmp_path / "m")
        assert torch.allclose(encode(FourM.from_pretrained(tmp_path / "m").eval(), [0, 1, 4]), base, atol=1e-6)


@pytest.mark.parametrize("override, message", [({"use_rotary": "maybe"}, "use_rotary must be true or false"),
                                               ({"init_std": "wide"}, "init_std must be a number"),
                                               ({"dim": True}, "dim must be a number")])
def test_a_setting_of_the_wrong_type_is_named(override, message):
    """Overrides come untyped from YAML and key=value: a string must not pass for a flag or a number."""
    with pytest.raises(ValueError, match=message):
        tiny_config(**override)


def test_position_scales_set_one_kinds_positions_and_name_a_wrong_kind(tmp_path):
    """position_scales overrides position_scale for the modalities of one kind only, and is saved."""
    base, mixed = make_model(position_scale=4.0), make_model(position_scale=4.0, position_scales={"sequence": 1.0})
    for i, name in enumerate(mixed.names):
        rows = slice(mixed.embed.pos_offset[i], mixed.embed.pos_offset[i] + mixed.embed.pos_count[i])
        factor = 0.25 if mixed.specs[name].kind_name == "sequence" else 1.0
        assert torch.allclose(mixed.embed.positions[rows], factor * base.embed.positions[rows]), name
    mixed.save_pretrained(tmp_path / "m")
    assert FourM.from_pretrained(tmp_path / "m").config.position_scales == {"sequence": 1.0}
    with pytest.raises(ValueError, match="position_scales: unknown kinds \\['sentence'\\]"):
        tiny_config(position_scales={"sentence": 1.0})
