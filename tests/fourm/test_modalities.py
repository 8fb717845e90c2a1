import pytest

from fourm.modalities import CORPUS, MODALITIES, Kind, ModalityScale, get_modality, parse_modalities

# the 4M-21 modalities (REFERENCE.md), each must have an entry
REFERENCE_KEYS = [
    "rgb", "tok_rgb", "tok_depth", "tok_normal", "tok_semseg", "tok_clip", "tok_dinov2", "tok_imagebind",
    "tok_dinov2_global", "tok_imagebind_global", "tok_canny_edge", "tok_sam_edge", "sam_instance",
    "human_poses", "caption", "t5_caption", "det", "color_palette", "metadata",
]


def test_every_reference_modality_has_an_entry():
    assert set(REFERENCE_KEYS) <= set(MODALITIES)


@pytest.mark.parametrize("key", sorted(MODALITIES))
def test_entry_is_complete(key):
    m = MODALITIES[key]
    assert m.source in CORPUS, "every model modality reads a corpus entry"
    if m.kind in (Kind.PIXELS, Kind.EMBEDDING_SEQUENCE):
        assert m.input_only and m.tokenizer is None
    else:
        assert m.tokenizer and m.vocab_size > 0
        assert m.token_dtype == ("int16" if m.vocab_size <= 2**15 else "int32")
    assert ModalityScale().resolve(key).tokens > 0


def test_full_scale_follows_the_reference():
    scale = ModalityScale()
    assert scale.resolve("tok_rgb").tokens == 196 and scale.resolve("tok_rgb").vocab_size == 16384
    assert scale.resolve("tok_semseg").vocab_size == 4096
    assert scale.resolve("tok_dinov2_global").tokens == 16
    assert ModalityScale(patch_sizes={"tok_dinov2": 14}).resolve("tok_dinov2").tokens == 256


def test_cpu_scale_and_vocab_overrides():
    scale = ModalityScale(image_size=64, patch_size=8, vocab_sizes={"tok_rgb": 1024})
    assert scale.resolve("tok_depth").tokens == 64
    assert scale.resolve("tok_rgb").vocab_size == 1024
    assert scale.resolve("caption").tokens == 256  # sequences keep their maximum
    assert get_modality("tok_rgb").vocab_size == 16384  # the registry itself is untouched


def test_bad_scale_is_refused():
    with pytest.raises(ValueError, match="not a multiple"):
        ModalityScale(image_size=64, patch_size=7)
    with pytest.raises(LookupError, match="unknown modality 'tok_nope'"):
        ModalityScale(vocab_sizes={"tok_nope": 10})


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(LookupError) as e:
        get_modality("tok_dpeth")
    msg = str(e.value)
    assert "tok_dpeth" in msg and "tok_depth" in msg and "\n" not in msg
    with pytest.raises(LookupError, match="unknown corpus modality 'dpeth'.*depth"):
        parse_modalities("rgb,dpeth")


def test_labellers_of_the_registry_exist_and_make_their_modality():
    from pseudolabel.registry import table

    labellers = table("labeller")
    for m in CORPUS.values():
        if m.labeller is not None:
            assert m.labeller in labellers, f"{m.key}: no labeller {m.labeller!r}"
            assert m.key in labellers[m.labeller].produces


def test_renderers_of_the_registry_exist():
    from fourm.viz.render import RENDERERS

    assert {m.render for m in CORPUS.values()} <= set(RENDERERS)
