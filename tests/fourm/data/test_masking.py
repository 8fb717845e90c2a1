"""Masking: budgets, id validity, disjoint image splits, span-masking round trip, teacher forcing,
Dirichlet concentration, missing modalities. Synthetic token samples, no corpus."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from fourm.data.masking import (
    IGNORE_INDEX,
    DirichletComponent,
    Masker,
    MaskingConfig,
    TextSpecials,
    allocate,
    collate,
    sample_dirichlet,
    span_mask,
    specials_from_tokenizer,
)
from fourm.modalities import Kind, ModalityScale

SPECIALS = TextSpecials()  # pad 0, sos 2, eos 3, sentinels 4..203
VOCAB = 300  # text ids >= 204 are words


def table():
    """image 16 tokens, global 4, caption, rgb 16 patches, t5_caption: the model's modality order."""
    scale = ModalityScale(image_size=16, patch_size=4, vocab_sizes={"tok_depth": 32, "tok_dinov2_global": 16,
                                                                    "caption": VOCAB})
    mods = scale.resolve_all(["tok_depth", "tok_dinov2_global", "caption", "rgb", "t5_caption"])
    mods["tok_dinov2_global"] = replace(mods["tok_dinov2_global"], max_tokens=4)
    return mods


def make_sample(rng, caption_len=None, drop=()):
    length = int(rng.integers(3, 20)) if caption_len is None else caption_len
    sample = {
        "tok_depth": rng.integers(0, 32, 16).astype(np.int16),
        "tok_dinov2_global": rng.integers(0, 16, 4).astype(np.int16),
        "caption": np.concatenate([rng.integers(204, VOCAB, length), [SPECIALS.eos]]).astype(np.int32),
        "rgb": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
        "t5_caption": rng.standard_normal((int(rng.integers(2, 10)), 384)).astype(np.float16),
    }
    return {k: v for k, v in sample.items() if k not in drop}


def groups(out, key="dec_group"):
    return [np.flatnonzero(out[key] == g) for g in np.unique(out[key])]


def merge(inputs, targets, eos=SPECIALS.eos):
    """Undo span masking: each sentinel of the input replaced by its span from the target."""
    sentinels = set(SPECIALS.sentinels)
    spans, current = {}, None
    for t in targets[:-1] if len(targets) and targets[-1] == eos else targets:
        if t in sentinels:
            current = spans.setdefault(int(t), [])
        else:
            current.append(int(t))
    if not len(inputs):  # the whole sequence was a target: [S_0] body [EOS]
        return [*spans.get(SPECIALS.sentinels[0], []), eos]
    return [x for t in inputs for x in (spans[int(t)] if int(t) in sentinels else [int(t)])]


# ----------------------------------------------------------------------------- budgets
def test_allocate_caps_and_respreads():
    np.testing.assert_array_equal(allocate(10, np.array([0.5, 0.5, 0.0]), np.array([2, 20, 5])), [2, 8, 0])
    # a weight-0 modality with room is filled last, evenly; the total is exact whenever caps allow
    np.testing.assert_array_equal(allocate(30, np.array([0.5, 0.5, 0.0]), np.array([2, 20, 5])), [2, 20, 5])
    np.testing.assert_array_equal(allocate(9, np.array([1.0, 1.0, 1.0]), np.array([0, 4, 9])), [0, 4, 5])
    rng = np.random.default_rng(0)
    for _ in range(200):
        w, caps, total = rng.dirichlet(np.ones(6) * 0.3), rng.integers(0, 40, 6), int(rng.integers(0, 150))
        counts = allocate(total, w, caps)
        assert (counts >= 0).all() and (counts <= caps).all() and counts.sum() == min(total, caps.sum())


def test_tiny_alpha_draws_are_finite_and_concentrated():
    rng = np.random.default_rng(0)
    draws = np.stack([sample_dirichlet(np.array([0.01, 0.01, 0.0, 0.01]), rng) for _ in range(200)])
    assert np.isfinite(draws).all() and np.allclose(draws.sum(1), 1) and (draws[:, 2] == 0).all()
    assert draws.max(1).mean() > 0.99


@pytest.mark.parametrize("mixture", [None, [DirichletComponent(1.0, {"*": 1.0}, {"*": 1.0})]])
def test_budgets_are_exact_when_tokens_suffice(mixture):
    cfg = MaskingConfig(input_budget=12, target_budget=12, use_input_fill=True,
                        **({"mixture": mixture} if mixture else {}))
    masker, rng = Masker(table(), cfg, SPECIALS), np.random.default_rng(0)
    outs = [masker(make_sample(rng), rng) for _ in range(80)]
    assert all(len(o["enc_ids"]) == 12 and len(o["dec_target"]) == 12 for o in outs)
    batch = masker.collate(outs[:8])
    batch.check()
    assert batch.enc_ids.shape == (8, 12) and batch.enc_valid.all() and batch.dec_valid.all()
    # unfilled, inputs are at most their budget; targets still exact
    masker = Masker(table(), replace(cfg, use_input_fill=False), SPECIALS)
    outs = [masker(make_sample(rng), rng) for _ in range(80)]
    assert all(0 < len(o["enc_ids"]) <= 12 and len(o["dec_target"]) == 12 for o in outs)


def test_short_samples_are_padded():
    masker = Masker(table(), MaskingConfig(input_budget=12, target_budget=12), SPECIALS)
    rng = np.random.default_rng(1)
    only_image = {"tok_depth": np.arange(16, dtype=np.int16)}
    outs = [masker(only_image, rng) for _ in range(4)]
    batch = masker.collate(outs)
    assert batch.enc_valid.sum(1).tolist() == [12] * 4 and batch.dec_valid.sum(1).tolist() == [4] * 4
    padding = ~batch.dec_valid
    assert (batch.dec_target[padding] == IGNORE_INDEX).all() and (batch.dec_group[padding] == -1).all()
    assert (batch.dec_target[batch.dec_valid] >= 0).all()


# ----------------------------------------------------------------------------- token contents
def test_ids_positions_and_disjoint_image_splits():
    mods = table()
    names = list(mods)
    masker, rng = Masker(mods, MaskingConfig(input_budget=20, target_budget=20), SPECIALS), np.random.default_rng(2)
    for _ in range(100):
        sample = make_sample(rng)
        out = masker(sample, rng)
        for i, (name, m) in enumerate(mods.items()):
            enc, dec = out["enc_mod"] == i, out["dec_mod"] == i
            ids, pos = out["enc_ids"][enc], out["enc_pos"][enc]
            if m.kind == Kind.SEQUENCE:
                assert ((ids >= 0) & (ids < m.vocab_size)).all()
                np.testing.assert_array_equal(pos, np.arange(len(pos)))
            elif m.kind in (Kind.PIXELS, Kind.EMBEDDING_SEQUENCE):  # the id is the patch / vector index
                np.testing.assert_array_equal(ids, pos)
                assert (pos < (m.tokens if m.kind == Kind.PIXELS else len(sample[name]))).all()
                assert not dec.any(), f"{name} is input-only"
            else:
                np.testing.assert_array_equal(ids, sample[name][pos])
                np.testing.assert_array_equal(out["dec_target"][dec], sample[name][out["dec_pos"][dec]])
                assert not set(pos) & set(out["dec_pos"][dec]), f"{name}: an input position is also a target"
                assert len(set(pos)) == len(pos) and (pos < m.tokens).all()
        assert set(np.unique(out["enc_mod"])) <= set(range(len(names)))


def test_span_masking_round_trip():
    rng = np.random.default_rng(3)
    for _ in range(300):
        length = int(rng.integers(1, 40))
        body = rng.integers(204, VOCAB, length)
        masked = int(rng.integers(1, length + 1))
        spans = int(rng.integers(1, min(masked, length - masked + 1) + 1))
        inputs, targets = span_mask(body, masked, spans, np.array(SPECIALS.sentinels), np.array([3]), 3, rng)
        assert len(inputs) == length - masked + spans + 1 and len(targets) == masked + spans + 1
        assert np.isin(inputs, SPECIALS.sentinels).sum() == spans and targets[-1] == 3
        assert merge(inputs, targets) == [*body.tolist(), 3]


@pytest.mark.parametrize("target_mods", [["caption", "tok_depth"], ["tok_depth"]])
def test_masker_sequences_round_trip_and_teacher_forcing(target_mods):
    mods = table()
    cfg = MaskingConfig(input_budget=64, target_budget=64, inputs=["caption"], targets=target_mods)
    masker, rng = Masker(mods, cfg, SPECIALS), np.random.default_rng(4)
    caption, seen = list(mods).index("caption"), set()
    for _ in range(200):
        sample = make_sample(rng)
        out = masker(sample, rng)
        assert set(np.unique(out["enc_mod"])) <= {caption}
        inputs, dec = out["enc_ids"], out["dec_mod"] == caption
        targets = out["dec_target"][dec]
        if len(targets):
            np.testing.assert_array_equal(out["dec_ids"][dec], np.concatenate([[SPECIALS.sos], targets[:-1]]))
            np.testing.assert_array_equal(out["dec_pos"][dec], np.arange(len(targets)))
            assert merge(inputs, targets) == sample["caption"].tolist()
            seen.add("masked" if len(inputs) else "whole target")
        else:
            np.testing.assert_array_equal(inputs, sample["caption"])
            seen.add("whole input")
        # one group per target modality, each holding exactly that modality's tokens
        for members in groups(out):
            assert len(np.unique(out["dec_mod"][members])) == 1
        assert len(groups(out)) == len(np.unique(out["dec_mod"]))
        image = out["dec_mod"] == list(mods).index("tok_depth")
        assert (out["dec_ids"][image] == 0).all() and image.sum() == 16
    assert seen == ({"masked", "whole target"} if "caption" in target_mods else {"whole input"})


def test_long_sequences_fit_their_budgets():
    mods = {"caption": table()["caption"]}
    masker = Masker(mods, MaskingConfig(input_budget=6, target_budget=5), SPECIALS)
    rng = np.random.default_rng(5)
    for _ in range(100):
        out = masker(make_sample(rng, caption_len=50), rng)
        assert len(out["enc_ids"]) <= 6 and len(out["dec_target"]) <= 5
        if len(out["dec_target"]):
            assert out["dec_target"][0] in SPECIALS.sentinels  # a window starts at a sentinel
            assert out["dec_ids"][0] == SPECIALS.sos


def test_dirichlet_alpha_controls_concentration():
    scale = ModalityScale(image_size=16, patch_size=4)
    mods = scale.resolve_all(["tok_depth", "tok_normal", "tok_semseg"])
    sample_rng = np.random.default_rng(6)
    sample = {n: sample_rng.integers(0, 100, 16).astype(np.int16) for n in mods}

    def top_share(alpha):
        cfg = MaskingConfig(input_budget=8, target_budget=8, mixture=[DirichletComponent(1.0, {"*": alpha},
                                                                                         {"*": alpha})])
        masker, rng = Masker(mods, cfg, SPECIALS), np.random.default_rng(7)
        shares = [np.bincount(masker(sample, rng)["enc_mod"], minlength=3).max() / 8 for _ in range(120)]
        return float(np.mean(shares))

    assert top_share(0.01) > 0.95
    assert top_share(10.0) < 0.65


# ----------------------------------------------------------------------------- presence, config
def test_missing_modalities_are_never_chosen():
    mods = table()
    masker, rng = Masker(mods, MaskingConfig(input_budget=12, target_budget=12), SPECIALS), np.random.default_rng(8)
    absent = [list(mods).index(n) for n in ("caption", "rgb")]
    for _ in range(100):
        out = masker(make_sample(rng, drop=("caption", "rgb")), rng)
        assert not np.isin(out["enc_mod"], absent).any() and not np.isin(out["dec_mod"], absent).any()
        # targets can only come from the image and global tokens (20) that the inputs left
        left = 20 - np.isin(out["enc_mod"], [0, 1]).sum()
        assert len(out["enc_ids"]) == 12 and len(out["dec_target"]) == min(12, left)


def test_rgb_to_all_offers_only_rgb_inputs():
    mods = table()
    cfg = MaskingConfig(input_budget=20, target_budget=8, mixture=[DirichletComponent(1.0, {"rgb": 1.0, "*": 0.0})])
    masker, rng = Masker(mods, cfg, SPECIALS), np.random.default_rng(9)
    out = masker(make_sample(rng), rng)
    assert (out["enc_mod"] == list(mods).index("rgb")).all() and len(out["enc_ids"]) == 16  # capped, not leaked


def test_unfilled_inputs_keep_a_caption_draw_caption_only():
    """use_input_fill=False: what a short caption cannot use of its share stays empty instead of going to
    the image tokens, so caption-heavy draws train caption -> X; filled, the same draws hide it."""
    mods = table()
    mix = [DirichletComponent(1.0, {"caption": 50.0, "*": 0.01}, {"tok_depth": 1.0, "*": 0.0})]
    caption = list(mods).index("caption")
    for fill, most_caption_only in ((False, True), (True, False)):
        cfg = MaskingConfig(input_budget=24, target_budget=8, mixture=mix, use_input_fill=fill)
        masker, rng = Masker(mods, cfg, SPECIALS), np.random.default_rng(11)
        outs = [masker(make_sample(rng, caption_len=6), rng) for _ in range(50)]
        caption_only = np.mean([(o["enc_mod"] == caption).all() for o in outs])
        assert (caption_only > 0.9) == most_caption_only, (fill, caption_only)
        if not fill:
            assert all(len(o["dec_target"]) == 8 for o in outs)  # the depth target keeps its budget


def test_unfilled_targets_leave_a_short_captions_share_empty():
    """use_target_fill=False (with use_input_fill=False: 4M's masking): the target share a short caption
    cannot use is padding, not given to the image; filled (the default), the target budget is exact."""
    mods = table()
    mix = [DirichletComponent(1.0, {"tok_dinov2_global": 1.0, "*": 0.0}, {"caption": 50.0, "tok_depth": 0.5, "*": 0.0})]
    caption = list(mods).index("caption")
    for fill in (False, True):
        cfg = MaskingConfig(input_budget=4, target_budget=24, mixture=mix, use_target_fill=fill)
        masker, rng = Masker(mods, cfg, SPECIALS), np.random.default_rng(12)
        outs = [masker(make_sample(rng, caption_len=6), rng) for _ in range(50)]
        sizes = [len(o["dec_target"]) for o in outs]
        assert all((o["dec_mod"] == caption).sum() <= 8 for o in outs)  # [S_0], 6 words, [EOS]
        if fill:
            assert set(sizes) == {24}
        else:
            assert max(sizes) < 24 and np.mean(sizes) < 12, sizes


def test_allocate_without_respread_gives_capped_shares():
    np.testing.assert_array_equal(allocate(10, np.array([0.5, 0.5, 0.0]), np.array([2, 20, 5]), respread=False),
                                  [2, 5, 0])
    np.testing.assert_array_equal(allocate(9, np.array([1.0, 1.0, 1.0]), np.array([0, 4, 9]), respread=False),
                                  [0, 4, 4])  # the token the cap cut is not given out


def test_alphas_by_corpus_series_cover_its_tokens():
    """{"rgb": 1} also selects tok_rgb: a model that reads RGB only as tokens keeps its RGB-to-all draws."""
    scale = ModalityScale(image_size=16, patch_size=4, vocab_sizes={"tok_rgb": 32, "tok_depth": 32})
    mods = scale.resolve_all(["tok_rgb", "tok_depth"])
    cfg = MaskingConfig(input_budget=16, target_budget=8, mixture=[DirichletComponent(1.0, {"rgb": 1.0, "*": 0.0})])
    masker, rng = Masker(mods, cfg, SPECIALS), np.random.default_rng(10)
    sample = {name: rng.integers(0, 32, 16).astype(np.int16) for name in mods}
    out = masker(sample, rng)
    assert (out["enc_mod"] == 0).all() and len(out["enc_ids"]) == 16
    assert (out["dec_mod"] == 1).all() and len(out["dec_target"]) == 8


@pytest.mark.parametrize("fill", [True, False])
def test_pixels_and_tokens_of_one_series_share_their_positions(fill):
    """rgb pixels and tok_rgb are one series: a patch given as pixels is never a target as tokens (it would be
    copied, not predicted), budgets stay exact, and RGB-to-all still gives every patch both ways."""
    scale = ModalityScale(image_size=16, patch_size=4, vocab_sizes={"tok_rgb": 32, "tok_depth": 32})
    mods = scale.resolve_all(["rgb", "tok_rgb", "tok_depth"])
    everything = DirichletComponent(1.0, {"*": 0.3}, {"*": 0.3})
    rgb_to_all = DirichletComponent(1.0, {"rgb": 1.0, "*": 0.0}, {"*": 1.0})
    cfg = MaskingConfig(input_budget=20, target_budget=12, mixture=[everything], use_input_fill=fill)
    masker, rng = Masker(mods, cfg, SPECIALS), np.random.default_rng(11)
    sample = {"rgb": np.zeros((16, 16, 3), np.uint8), "tok_rgb": rng.integers(0, 32, 16).astype(np.int16),
              "tok_depth": rng.integers(0, 32, 16).astype(np.int16)}
    overlapping = shared = 0
    for _ in range(300):
        out = masker(sample, rng)
        pixels = set(out["enc_pos"][out["enc_mod"] == 0])
        targets = set(out["dec_pos"][out["dec_mod"] == 1])
        overlapping += len(pixels & targets)
        shared += bool(pixels and targets)
        assert len(out["dec_target"]) == 12 and (not fill or len(out["enc_ids"]) == 20)
    assert overlapping == 0 and shared > 30  # both in one sample often, never on one patch
    out = Masker(mods, replace(cfg, input_budget=32, mixture=[rgb_to_all], use_input_fill=True), SPECIALS)(sample, rng)
    assert np.bincount(out["enc_mod"], minlength=3).tolist() == [16, 16, 0]


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="input-only"):
        Masker(table(), MaskingConfig(targets=["rgb"]), SPECIALS)
    with pytest.raises(ValueError, match="text specials"):
        Masker(table(), MaskingConfig())
    with pytest.raises(ValueError, match="mask_rate"):
        MaskingConfig(mask_rate=[0.5, 0.2])


def test_collate_pads_to_the_longest_without_budgets():
    a = {k: np.arange(3) for k in ("enc_ids", "enc_mod", "enc_pos")} | \
        {k: np.arange(2) for k in ("dec_ids", "dec_target", "dec_mod", "dec_pos", "dec_group")}
    b = {k: v[:1] for k, v in a.items()}
    batch = collate([a, b], {"rgb": torch.zeros(2, 3, 4, 4)})
    assert batch.enc_ids.shape == (2, 3) and batch.dec_ids.shape == (2, 2) and batch.enc_ids.dtype == torch.int64
    assert batch.enc_valid.tolist() == [[True] * 3, [True, False, False]] and "rgb" in batch.continuous


def test_specials_are_read_from_a_sequence_tokenizer_only(monkeypatch):
    import fourm.data.masking as masking

    class Text:
        pad_id, sos_id, eos_id, sentinel_ids = 0, 2, 3, [4, 5]

    monkeypatch.setattr(masking, "load_tokenizer", lambda path: Text())
    assert specials_from_tokenizer("folder") == TextSpecials(0, 2, 3, [4, 5])
    monkeypatch.setattr(masking, "load_tokenizer", lambda path: object())
    with pytest.raises(ValueError, match="not a sequence tokenizer"):
        specials_from_tokenizer("folder")


def test_config_loads_from_overrides():
    from fourm.config import load_config

    cfg = load_config(MaskingConfig, overrides=["input_budget=64", "mask_rate=[0.2,0.8]", "targets=[caption]"])
    assert cfg.input_budget == 64 and cfg.mask_rate == [0.2, 0.8] and isinstance(cfg.mixture[0], DirichletComponent)


def test_allocate_never_exceeds_the_total_with_underflowed_weights():
    from fourm.data.masking import allocate

    # a Dirichlet draw with alpha 0.01 can leave weights of ~1e-320 beside 1.0
    counts = allocate(24, np.array([1e-320, 1e-320, 1.0]), np.array([16, 16, 4]))
    assert counts.sum() == 24 and counts[2] == 4 and list(counts[:2]) == [10, 10]
