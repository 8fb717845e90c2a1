"""The sampler on a nano FourM: guidance algebra, KV cache = uncached path, exact step counts, seeds,
chaining, partial inputs."""

import dataclasses

import pytest
import torch

from fourm.generation import GenerationState, Guidance, Target, build_schedule, generate, sampler
from fourm.generation.sampler import guided_logits, merge_spans
from fourm.modalities import ModalityScale
from fourm.model.sizes import create_model

from .conftest import CODES, MODALITIES, PATCH, SIDE, TEXT_VOCAB, nano_model

EOS, SOS = 3, 2
S0, S1 = 4, 5


@pytest.fixture(scope="module")
def model():
    return nano_model()


def conditioned(model, batch=3, seed=0) -> GenerationState:
    """rgb pixels for all but the last sample, a caption (one with a masked span), half of tok_rgb given."""
    g = torch.Generator().manual_seed(seed)
    state = GenerationState(model.specs, batch)
    state.set_continuous("rgb", torch.rand(batch, 3, 32, 32, generator=g) * 2 - 1,
                         torch.tensor([True] * (batch - 1) + [False]))
    captions = [[300 + i, 301, S0, 302, EOS] if i == 0 else [300 + i, 310, 311, EOS] for i in range(batch)]
    state.set_sequence("caption", captions)
    ids = torch.randint(0, 64, (batch, 16), generator=g)
    ids[:, ::2] = -1
    state.set_grid("tok_rgb", ids)
    return state


def queries(state, name="tok_depth"):
    n = state.specs[name].tokens
    pos = torch.arange(n).expand(state.batch_size, n)
    return pos, torch.ones_like(pos, dtype=torch.bool)


@torch.no_grad()
def test_guidance_weight_zero_equals_the_unguided_logits(model):
    state = conditioned(model)
    _, plain = guided_logits(model, state, "tok_depth", Guidance.plain(), *queries(state))
    _, zero = guided_logits(model, state, "tok_depth", Guidance.classifier_free(0.0), *queries(state))
    torch.testing.assert_close(zero, plain, rtol=1e-5, atol=1e-5)
    # one weight on the only condition that changes anything: uncond + 1 * (cond - uncond) = cond
    rgb_only = conditioned(model)
    del rgb_only.seqs["caption"], rgb_only.grids["tok_rgb"]
    _, cond = guided_logits(model, rgb_only, "tok_depth", Guidance.plain(), *queries(rgb_only))
    _, multi = guided_logits(model, rgb_only, "tok_depth", Guidance.multi_condition({"rgb": 1.0}), *queries(rgb_only))
    torch.testing.assert_close(multi, cond, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_guided_logits_are_the_weighted_combination_in_one_pass(model):
    state = conditioned(model)
    _, cond = guided_logits(model, state, "tok_depth", Guidance.plain(), *queries(state))
    _, uncond = guided_logits(model, state, "tok_depth", Guidance([()], [1.0]), *queries(state))
    assert not torch.allclose(cond, uncond, atol=1e-3)  # the conditions do reach the model
    _, guided = guided_logits(model, state, "tok_depth", Guidance.classifier_free(2.5), *queries(state))
    torch.testing.assert_close(guided, cond + 2.5 * (cond - uncond), rtol=1e-4, atol=1e-4)
    _, only_caption = guided_logits(model, state, "tok_depth", Guidance([("caption",)], [1.0]), *queries(state))
    weights = {"caption": 0.7, "rgb": 1.5}
    _, only_rgb = guided_logits(model, state, "tok_depth", Guidance([("rgb",)], [1.0]), *queries(state))
    _, multi = guided_logits(model, state, "tok_depth", Guidance.multi_condition(weights), *queries(state))
    expected = uncond + 0.7 * (only_caption - uncond) + 1.5 * (only_rgb - uncond)
    torch.testing.assert_close(multi, expected, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_guidance_through_biased_and_codebook_heads_is_the_combination_of_their_logits():
    # guidance combines decoder states before the head: exact for any affine head, bias and codebook included
    torch.manual_seed(1)
    vocab = {name: size for name, (_, size) in CODES.items()} | {"caption": TEXT_VOCAB}
    model = create_model("nano", MODALITIES, ModalityScale(SIDE, PATCH, vocab_sizes=vocab), max_tokens={"caption": 24},
                         use_bias=True, head_codebooks={"tok_depth": 8}).eval()
    head = model.heads["tok_depth"]
    head.load_codebook(torch.randn(head.codebook.shape))
    torch.nn.init.normal_(head.linear.bias)
    state = conditioned(model)
    _, cond = guided_logits(model, state, "tok_depth", Guidance.plain(), *queries(state))
    _, uncond = guided_logits(model, state, "tok_depth", Guidance([()], [1.0]), *queries(state))
    _, guided = guided_logits(model, state, "tok_depth", Guidance.classifier_free(3.0), *queries(state))
    torch.testing.assert_close(guided, cond + 3.0 * (cond - uncond), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="summing to 1"):
        Guidance([None, ()], [1.0, 1.0])


@pytest.mark.parametrize("settings", [dict(temperature=0.0), dict(temperature=1.0, top_p=0.9), dict(guidance=2.0)])
def test_kv_cache_gives_the_same_tokens_as_the_uncached_path(model, settings):
    target = build_schedule([Target("caption", max_tokens=16, min_tokens=10, **settings)], model.specs,
                            ["rgb", "tok_rgb"])[0]
    out = {}
    for use_cache in (True, False):
        state = conditioned(model)
        del state.seqs["caption"]
        with torch.no_grad():
            sampler.autoregressive(model, state, target, torch.Generator().manual_seed(5), use_cache)
        out[use_cache] = state.seqs["caption"]
    assert out[True] == out[False]
    assert all(s[-1] == EOS and EOS not in s[:-1] for s in out[True])
    if settings["temperature" if "temperature" in settings else "guidance"] == 0.0:  # greedy: no sentinel drawn
        assert all(len(s) >= 11 for s in out[True])  # min_tokens held [EOS] back


@pytest.mark.parametrize("scheme", ["maskgit", "roar"])
@pytest.mark.parametrize("schedule", ["cosine", "cosine_annealing", "linear"])
def test_each_step_decides_exactly_the_scheduled_number_of_tokens(model, scheme, schedule, monkeypatch):
    state = conditioned(model)
    state.grids["tok_rgb"][1][1, :] = False  # sample 1: every tok_rgb token to generate; the others: half
    before = state.grids["tok_rgb"][1].sum(1).clone()
    seen = []
    real = sampler.guided_logits

    def spy(model_, state_, name, guidance, pos, valid, *cached):
        seen.append(state_.grids[name][1].sum(1).clone())
        return real(model_, state_, name, guidance, pos, valid, *cached)

    monkeypatch.setattr(sampler, "guided_logits", spy)
    target = Target("tok_rgb", scheme=scheme, steps=5, schedule=schedule)
    generate(model, state, build_schedule([target], model.specs), seed=0)
    ids, known = state.grids["tok_rgb"]
    assert known.all() and len(seen) == 5
    seen.append(known.sum(1))
    per_step = torch.stack(seen).diff(dim=0)
    for b in range(state.batch_size):
        expected = sampler.tokens_per_step(int(16 - before[b]), 5, schedule)
        assert per_step[:, b].tolist() == expected


def test_images_anneal_their_temperature_unless_told_and_captions_keep_it(model, monkeypatch):
    """MaskGIT's last steps decide many tokens at once: by default they are drawn near greedy."""
    drawn = []
    real = sampler.sample

    def spy(logits, temperature, *args):
        drawn.append(temperature)
        return real(logits, temperature, *args)

    monkeypatch.setattr(sampler, "sample", spy)
    for targets, expected in (
            (["tok_rgb"], [1.0, 0.75, 0.5, 0.25]),
            ([Target("tok_rgb", steps=4, temperature_schedule="constant")], [1.0] * 4),
            ([Target("tok_rgb", scheme="roar", steps=4)], [1.0, 0.75, 0.5, 0.25])):
        drawn.clear()
        generate(model, conditioned(model), build_schedule(targets, model.specs, steps=4), seed=0)
        assert drawn == expected
    drawn.clear()
    (target,) = build_schedule([Target("caption", max_tokens=4)], model.specs)
    generate(model, conditioned(model), [target], seed=0)
    assert target.temperature_schedule == "constant" and set(drawn) == {1.0}
    drawn.clear()  # a Target given straight to a scheme, not through build_schedule, takes its default
    with torch.no_grad():
        sampler.SCHEMES["maskgit"](model, conditioned(model), Target("tok_rgb", steps=4), torch.Generator())
    assert drawn == [1.0, 0.75, 0.5, 0.25]


def test_given_tokens_never_change_and_masked_caption_spans_are_filled(model):
    state = conditioned(model)
    given_ids, given_known = (t.clone() for t in state.grids["tok_rgb"])
    schedule = build_schedule(["tok_rgb", Target("caption", min_tokens=3, max_tokens=8)], model.specs, ["rgb"])
    generate(model, state, schedule, seed=0)
    ids, known = state.grids["tok_rgb"]
    assert known.all() and torch.equal(ids[given_known], given_ids[given_known])
    first = state.seqs["caption"][0]
    assert first[:2] == [300, 301] and first[-2:] == [302, EOS] and len(first) > 5 and S0 not in first
    assert state.seqs["caption"][1] == [301, 310, 311, EOS]  # fully given in that sample: kept


def test_same_seed_same_tokens_other_seed_other_tokens(model):
    schedule = build_schedule(["tok_depth", Target("caption", max_tokens=6), Target("tok_rgb", scheme="roar")],
                              model.specs, ["rgb"])

    def run(seed):
        state = generate(model, conditioned(model), schedule, seed=seed)
        return state.grids["tok_depth"][0], state.seqs["caption"], state.grids["tok_rgb"][0]

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and torch.equal(a[2], b[2])
    assert not torch.equal(a[0], c[0])


def test_bf16_runs_the_parallel_schemes_in_bf16_and_autoregression_in_fp32(model, monkeypatch):
    """precision=bf16: MaskGIT and ROAR forwards under bf16 autocast, the cached caption steps in fp32;
    a seed still gives the same tokens, and they are valid ids."""
    seen = {}

    def recording(name, run):
        def wrapped(*args):
            seen.setdefault(name, set()).add(torch.is_autocast_enabled("cpu"))
            return run(*args)
        return wrapped

    for name, run in list(sampler.SCHEMES.items()):
        monkeypatch.setitem(sampler.SCHEMES, name, recording(name, run))
    schedule = build_schedule(["tok_depth", Target("caption", max_tokens=6), Target("tok_rgb", scheme="roar")],
                              model.specs, ["rgb"])
    states = [generate(model, conditioned(model), schedule, seed=3, precision="bf16") for _ in range(2)]
    assert seen == {"maskgit": {True}, "ar": {False}, "roar": {True}}
    assert torch.equal(states[0].grids["tok_depth"][0], states[1].grids["tok_depth"][0])
    depth = states[0].grids["tok_depth"][0]
    assert depth.min() >= 0 and depth.max() < model.specs["tok_depth"].vocab_size
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32"):
        generate(model, conditioned(model), schedule, precision="fp16")


def test_chained_targets_read_the_earlier_targets_as_inputs(model, monkeypatch):
    state = conditioned(model, batch=2)
    del state.grids["tok_rgb"]
    encoded = []
    real = model.encode

    def spy(batch):
        encoded.append(batch)
        return real(batch)

    monkeypatch.setattr(model, "encode", spy)
    schedule = build_schedule([Target("tok_depth", steps=2), Target("caption", max_tokens=4)], model.specs, ["rgb"])
    generate(model, state, schedule, seed=0)
    depth_mod = model.names.index("tok_depth")
    last = encoded[-1]  # the caption's encoder pass
    depth_ids = state.grids["tok_depth"][0]
    for b in range(2):
        rows = (last.enc_mod[b] == depth_mod) & last.enc_valid[b]
        assert rows.sum() == 16
        assert torch.equal(last.enc_ids[b][rows], depth_ids[b][last.enc_pos[b][rows]])
    first = encoded[0]  # tok_depth's first step: nothing of tok_depth known yet
    assert not ((first.enc_mod == depth_mod) & first.enc_valid).any()


def test_merge_spans_fills_sentinels_in_order_and_respects_the_limit():
    assert merge_spans([7, S0, 8, S1, EOS], [S0, 20, 21, S1, 22, EOS, 99], [S0, S1], EOS, 24) == [7, 20, 21, 8, 22, EOS]
    assert merge_spans([S0, EOS], [20, 21, EOS], [S0, S1], EOS, 24) == [20, 21, EOS]  # no leading sentinel
    assert merge_spans([S0, EOS], [S0, 20, 21, 22], [S0, S1], EOS, 3) == [20, 21, EOS]


def test_schedule_errors_name_the_problem(model):
    with pytest.raises(ValueError, match="not one of the model's modalities"):
        build_schedule(["tok_normal"], model.specs)
    with pytest.raises(ValueError, match="input-only"):
        build_schedule(["rgb"], model.specs)
    with pytest.raises(ValueError, match="takes scheme ar"):
        build_schedule([Target("caption", scheme="maskgit")], model.specs)
    with pytest.raises(ValueError, match="listed twice"):
        build_schedule(["caption", "caption"], model.specs)
    with pytest.raises(ValueError, match="not inputs at that point"):
        build_schedule([Target("tok_depth", condition_weights={"caption": 1.0})], model.specs, ["rgb"])
    with pytest.raises(ValueError, match="unknown scheme"):
        dataclasses.replace(Target("tok_depth"), scheme="diffusion")


@torch.no_grad()
def test_int8_weights_keep_the_outputs_close_and_a_pipeline_uses_them(model):
    """quantize_int8: every linear of the trunk and heads holds int8 weights (a scale per output channel) in
    a copy, the fp32 model is left as it is, and what the encoder writes stays within a few percent of
    fp32's. Pipeline(precision="int8") generates with such a copy (valid ids); an unknown precision is
    named."""
    from fourm.generation import Pipeline
    from fourm.model.precision import quantize_int8

    q = quantize_int8(model)
    assert not any(type(m) is torch.nn.Linear for m in [*q.encoder.modules(), *q.decoder.modules(), *q.heads.modules()])
    weight, _ = torch.ops.quantized.linear_unpack(q.heads["caption"].packed)
    assert weight.qscheme() == torch.per_channel_affine and weight.shape[0] == model.specs["caption"].vocab_size
    assert any(type(m) is torch.nn.Linear for m in model.decoder.modules())  # the original is untouched

    batch = conditioned(model).encoder_batch()
    fp32, int8 = model.encode(batch)[0], q.encode(batch)[0]
    assert (int8 - fp32).abs().max() / fp32.abs().max() < 0.05

    schedule = build_schedule(["tok_depth", Target("caption", max_tokens=6)], model.specs, ["rgb"])
    pipe = Pipeline(model, precision="int8")
    assert pipe.model is not model
    out = generate(pipe.model, conditioned(model), schedule, seed=1)
    assert all(0 <= i < model.specs["caption"].vocab_size for row in out.seqs["caption"] for i in row)
    assert out.grids["tok_depth"][0].min() >= 0
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32, int8"):
        Pipeline(model, precision="int4")
