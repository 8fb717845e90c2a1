"""The encoder cache of MaskGIT and ROAR (``Target.encode_every``, ``FourM.encode_step``): exact on its first
step, a step's tokens see the cached ones as a whole encode's would, each decided token is encoded once and
the condition again, in its place, at every step."""

import pytest
import torch

from fourm.generation import GenerationState, Guidance, Target, build_schedule, generate
from fourm.generation.sampler import guided_logits
from fourm.generation.state import with_queries

from .conftest import nano_model
from .test_sampler import conditioned, queries


@pytest.fixture(scope="module")
def model():
    return nano_model()


@torch.no_grad()
@pytest.mark.parametrize("guidance", [Guidance.plain(), Guidance.classifier_free(2.0)])
def test_encoding_everything_into_an_empty_cache_gives_the_whole_encodes_logits(model, guidance):
    state = conditioned(model)
    _, whole = guided_logits(model, state, "tok_depth", guidance, *queries(state))
    cache = model.start_encoding(len(guidance.variants) * state.batch_size)
    _, cached = guided_logits(model, state, "tok_depth", guidance, *queries(state), cache)
    torch.testing.assert_close(cached, whole, rtol=1e-5, atol=1e-5)
    assert torch.equal(cache.valid.sum(1), state.encoder_batch(guidance.variants, "tok_depth").enc_valid.sum(1))


@torch.no_grad()
@pytest.mark.parametrize("extras", [{}, {"use_rotary": True, "use_qk_norm": True}])
def test_a_step_encodes_new_tokens_and_the_condition_again_as_a_whole_encode_would(extras):
    """With one encoder layer the cached tokens' keys and values do not depend on what comes later, so a step's
    tokens (the target's new ones and the condition again, in the condition's slots) get the encodings of one
    whole encode (here: their cross-attention keys and values), and the cache holds every input once; the rows
    add 1, 2 and 4 target tokens, and the last has no rgb, so the step's batch is padded."""
    model = nano_model(encoder_depth=1, **extras)
    state = conditioned(model)
    whole_batch = state.encoder_batch(target="tok_rgb")
    memory, valid = model.encode(whole_batch)
    whole_k, whole_v = model.decoder[0].cross_attn.project_kv(memory)

    ids, known = state.grids["tok_rgb"]
    odd = torch.arange(16) % 2 == 1  # the given tok_rgb tokens; rows hold back their last 1, 2 and 4
    later = known & odd & (torch.arange(16) >= torch.tensor([15, 13, 9])[:, None])
    state.grids["tok_rgb"] = (ids, known & ~later)
    cache = model.start_encoding(state.batch_size)
    model.encode_step(cache, state.encoder_batch(target="tok_rgb"))
    first = cache.valid.sum(1)
    state.grids["tok_rgb"] = (ids, known)
    step = state.encoder_batch(target="tok_rgb", target_tokens=later)
    m = model.modality_index("tok_rgb")
    n_target = torch.tensor([1, 2, 4])
    assert torch.equal((step.enc_valid & (step.enc_mod == m)).sum(1), n_target)
    model.encode_step(cache, step)
    assert torch.equal(cache.valid.sum(1), first + n_target)  # the condition kept its slots
    assert torch.equal(cache.valid.sum(1), valid.sum(1))  # every input once
    cached_k, cached_v = cache.cross[0].contents()
    for b in range(state.batch_size):
        stepped = (step.enc_mod[b] * 1000 + step.enc_pos[b])[step.enc_valid[b]]
        held = (cache.valid[b] & torch.isin(cache.mod[b] * 1000 + cache.pos[b], stepped)).nonzero().squeeze(1)
        assert len(held) == len(stepped) > n_target[b]  # the new target tokens and the condition
        whole_keys = (whole_batch.enc_mod[b] * 1000 + whole_batch.enc_pos[b]).masked_fill(~valid[b], -1).tolist()
        rows = [whole_keys.index(k) for k in (cache.mod[b, held] * 1000 + cache.pos[b, held]).tolist()]
        torch.testing.assert_close(cached_k[b, :, held], whole_k[b, :, rows], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(cached_v[b, :, held], whole_v[b, :, rows], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scheme", ["maskgit", "roar"])
@pytest.mark.parametrize("every", [2, 8])
def test_inputs_are_encoded_whole_every_so_many_steps_and_each_decided_token_once_between(model, scheme, every,
                                                                                          monkeypatch):
    state = conditioned(model)
    variants = Guidance.classifier_free(1.5).variants
    # per encode_step: the tokens it encodes per row, the whole input's then, what is known, and how many tokens
    # the cache holds after it per row
    calls = []
    real = model.encode_step

    def spy(cache, batch):
        whole = state.encoder_batch(variants, "tok_rgb").enc_valid.sum(1)
        real(cache, batch)
        calls.append((batch.enc_valid.sum(1), whole, state.grids["tok_rgb"][1].clone(), cache.valid.sum(1)))

    monkeypatch.setattr(model, "encode_step", spy)
    target = Target("tok_rgb", scheme=scheme, steps=4, guidance=1.5, encode_every=every)
    generate(model, state, build_schedule([target], model.specs, ["rgb", "caption"]), seed=0)
    assert state.grids["tok_rgb"][1].all() and len(calls) == 4
    for step, (count, whole, known, held) in enumerate(calls):
        assert torch.equal(held, whole)  # the cache holds every input once
        if step % every == 0:  # every input: the conditioned rows, then the unconditioned
            assert torch.equal(count, whole)
        else:  # the tokens the step before decided and the condition again (none in the unconditioned rows)
            decided = (known & ~calls[step - 1][2]).sum(1)
            condition = whole - known.sum(1).repeat(2)
            assert (decided > 0).all() and (condition[:3] > 0).all() and not condition[3:].any()
            assert torch.equal(count, decided.repeat(2) + condition)


def test_encoding_every_step_is_the_whole_encode(model, monkeypatch):
    """encode_every=1 never builds a cache: every step runs FourM.encode on every input."""
    monkeypatch.setattr(model, "encode_step", lambda *a: pytest.fail("encode_step called"))
    state = conditioned(model)
    generate(model, state, build_schedule([Target("tok_depth", steps=3)], model.specs, ["rgb"]), seed=0)
    assert state.grids["tok_depth"][1].all()
    with pytest.raises(ValueError, match="encode_every must be >= 1, not 0"):
        Target("tok_depth", encode_every=0)


def test_one_step_gives_the_exact_paths_tokens_and_a_seed_repeats(model):
    def run(cache: bool, steps: int, seed: int = 0):
        state = conditioned(model)
        target = Target("tok_depth", steps=steps, temperature=1.0, guidance=1.0, encode_every=8 if cache else 1)
        return generate(model, state, build_schedule([target], model.specs, ["rgb", "caption", "tok_rgb"]),
                        seed=seed).grids["tok_depth"][0]

    assert torch.equal(run(True, 1), run(False, 1))
    assert torch.equal(run(True, 4), run(True, 4))
    assert not torch.equal(run(True, 4), run(True, 4, seed=1))


def test_a_cache_of_other_rows_is_refused(model):
    state = conditioned(model)
    with pytest.raises(ValueError, match="a batch of 3 rows for a cache of 6"):
        model.encode_step(model.start_encoding(6), state.encoder_batch(target="tok_rgb"))


def test_queries_decode_from_a_cache_as_from_its_memory(model):
    """decode(encoded=cache) reads the cross-attention keys/values the cache holds, not a memory."""
    state = conditioned(model)
    enc = state.encoder_batch(target="tok_depth")
    cache = model.start_encoding(state.batch_size)
    with torch.no_grad():
        model.encode_step(cache, enc)
        batch = with_queries(enc, model.modality_index("tok_depth"), *queries(state))
        from_cache = model.decode(batch, None, None, encoded=cache)
        from_memory = model.decode(batch, *model.encode(enc))
    torch.testing.assert_close(from_cache, from_memory, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_a_cache_runs_in_bf16_and_from_no_input_at_all(model, precision):
    """No condition and nothing known: the first step encodes nothing; later ones only what was decided."""
    state = GenerationState(model.specs, 2)
    target = Target("tok_rgb", steps=4, temperature=1.0, guidance=1.0, encode_every=8)
    out = generate(model, state, build_schedule([target], model.specs), seed=0, precision=precision)
    assert out.grids["tok_rgb"][1].all()


def test_decode_reads_a_memory_or_a_cache_and_says_which_is_missing(model):
    state = conditioned(model)
    enc = state.encoder_batch(target="tok_depth")
    batch = with_queries(enc, model.modality_index("tok_depth"), *queries(state))
    with pytest.raises(ValueError, match="a memory or an encode cache"):
        model.decode(batch, None, None)
    with pytest.raises(ValueError, match="holds nothing yet"):
        model.decode(batch, None, None, encoded=model.start_encoding(state.batch_size))
