"""SequenceTokenizer: the shared vocabulary's layout, id round trips, truncation, save/load, bad ids."""

import json

import numpy as np
import pytest
import torch

from fourm.modalities import ModalityScale, get_modality
from fourm.pretrained import load_pretrained
from fourm.tokenization.base import ModalityTokenizer, check_tokenizer, load_tokenizers
from fourm.tokenization.bins import NUM_BINS, parse_token
from fourm.tokenization.serializers import METADATA_FIELDS, SERIALIZERS
from fourm.tokenization.text import (
    NUM_SENTINELS,
    SequenceTokenizer,
    TextConfig,
    build_vocabulary,
    new_tokenizer,
    reserved_tokens,
)
from fourm.tokenization.words import split_words

VOCAB = 8192
CAPTIONS = [
    "a large red cube to the left of a small blue sphere on a plain floor.",
    "there is a small cyan cylinder behind a large gray cone, and a large white sphere.",
    "A dog's toy (a red ball) on the grass; it's 3.5 m away!",
    'He said "hello" to the t-shirt vendor at 10:30, near the 1,000 flowers.',
]
METADATA = {"brightness": 0.4844, "caption_chars": 130, "caption_sentences": 1, "caption_words": 25,
            "colourfulness": 44.7594, "contrast": 0.1824, "entropy": 4.4831, "geometric_complexity": 0.0807,
            "instance_diversity": 0.5, "num_coco_instances": 4, "num_humans": 0, "num_sam_instances": 4,
            "objectness": 0.1455, "occlusion_score": 0.1996, "original_height": 480, "original_width": 640,
            "saturation": 0.131, "semantic_diversity": 4, "walkability": 0.8472}


def make_det(rng, n):
    labels = ["cube", "sphere", "traffic light", "t-shirt", "teddy bear"]
    x0, y0, w, h = rng.uniform(0, 0.8, n), rng.uniform(0, 0.8, n), rng.uniform(0.02, 0.2, n), rng.uniform(0.02, 0.2, n)
    return [{"box": [float(x0[i]), float(y0[i]), float(x0[i] + w[i]), float(y0[i] + h[i])],
             "label": labels[i % len(labels)], "score": float(rng.uniform(0.3, 1))} for i in range(n)]


def make_instances(rng, n, size=64):
    """Ellipses drawn over each other (occlusion)."""
    ids = np.zeros((size, size), np.uint16)
    yy, xx = np.mgrid[:size, :size]
    for k in range(1, n + 1):
        (cy, cx), (ry, rx) = rng.uniform(10, size - 10, 2), rng.uniform(5, 14, 2)
        ids[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = k
    return ids


def make_person(rng):
    x0, y0, w, h = *rng.uniform(0, 0.5, 2), rng.uniform(0.1, 0.5), rng.uniform(0.2, 0.5)
    xy = rng.uniform(0, 1, (33, 2)) * [w, h] + [x0, y0]
    return {"box": [x0, y0, x0 + w, y0 + h],
            "keypoints": np.concatenate([xy, rng.uniform(0, 1, (33, 1))], 1).round(4).tolist()}


def instance_ious(ids, decoded):
    """Per instance of ``ids``, its best IoU with an instance of ``decoded``."""
    out = []
    for label in np.unique(ids)[1:]:
        mask = ids == label
        out.append(max(((mask & (decoded == k)).sum() / (mask | (decoded == k)).sum()
                        for k in np.unique(decoded[mask]) if k), default=0.0))
    return out


@pytest.fixture(scope="module")
def hf_vocab():
    """One Hugging Face tokenizer shared by every modality (as in a trained tokenizers folder)."""
    learned = sorted({p for c in CAPTIONS for w in split_words(c) for p in w} | {"cube", "sphere", "teddy", "##s"})
    return new_tokenizer(build_vocabulary(learned, VOCAB), reserved_tokens())


@pytest.fixture(scope="module")
def toks(hf_vocab):
    return {m: SequenceTokenizer(TextConfig(m, VOCAB), hf_vocab) for m in SERIALIZERS}


def realistic(modality: str, rng) -> list:
    return {
        "caption": lambda: list(CAPTIONS),
        "det": lambda: [make_det(rng, n) for n in (0, 1, 5, 12)],
        "color_palette": lambda: [[[int(c) for c in rng.integers(0, 256, 3)] for _ in range(n)] for n in (1, 3, 7)],
        "metadata": lambda: [METADATA, {"brightness": 0.2, "num_humans": 3}, {}],
        "sam_instance": lambda: [make_instances(rng, n=n) for n in (0, 2, 6)],
        "human_poses": lambda: [[], [make_person(rng)], [make_person(rng), make_person(rng)]],
        "scene_graph": lambda: [{"nodes": [], "edges": []}, GRAPH],
        "table": lambda: [[], [{"class": "cube", "colour": "red", "size": "large", "x": float(x), "y": -0.5,
                                "z": -4.25, "distance": 4.3, "visible": 0.61} for x in rng.uniform(-3, 3, 4)]],
    }[modality]()


GRAPH = {"nodes": [{"size": "large", "colour": "red", "class": "cube"}, {"size": "small", "class": "teddy bear"}],
         "edges": [{"subject": 0, "relation": "left of", "object": 1}, {"subject": 1, "relation": "on", "object": 0}]}


def check_close(modality: str, value, back):
    if modality == "caption":
        assert back == value.lower()
    elif modality == "det":
        ordered = sorted(value, key=lambda d: (-d["score"], d["box"][0], d["box"][1]))
        assert [d["label"] for d in back] == [d["label"] for d in ordered]
        if value:
            assert np.abs(np.array([d["box"] for d in back]) - [d["box"] for d in ordered]).max() <= 1e-3
    elif modality == "color_palette":
        assert back == value
    elif modality == "metadata":
        assert set(back) == set(value)
        for k, v in value.items():
            lo, hi, _ = METADATA_FIELDS[k]
            assert abs(back[k] - v) <= (hi - lo) / (NUM_BINS - 1) / 2 + 1e-4
    elif modality == "sam_instance":
        assert back.shape == value.shape
        if value.any():
            assert np.mean(instance_ious(value, back)) > 0.85
    elif modality == "scene_graph":
        assert back == value  # exact
    elif modality == "table":
        assert len(back) == len(value)
        for row, got in zip(value, back, strict=True):
            assert list(got) == list(row)
            assert all(got[k] == v for k, v in row.items() if isinstance(v, str))
            # x in [-3, 3], 100 levels: within half a level
            assert abs(got["x"] - row["x"]) <= 6 / 99 / 2 + 1e-6 and got["visible"] == pytest.approx(0.61, abs=0.005)
    elif modality == "human_poses":
        assert len(back) == len(value)
        for got in back:
            assert len(got["keypoints"]) == 33 and all(0 <= c <= 1 for k in got["keypoints"] for c in k[:2])


# ----------------------------------------------------------------------------- the vocabulary
def test_vocabulary_layout_and_ids_the_model_needs(toks, hf_vocab):
    tok = toks["caption"]
    assert (tok.pad_id, tok.unk_id, tok.sos_id, tok.eos_id) == (0, 1, 2, 3)
    assert tok.sentinel_ids == list(range(4, 4 + NUM_SENTINELS))
    assert [tok.id_to_token(i) for i in tok.sentinel_ids[:2]] == ["[S_0]", "[S_1]"]
    assert tok.vocab_size == hf_vocab.get_vocab_size() == VOCAB
    reserved = reserved_tokens()
    assert len(reserved) == len(set(reserved))
    assert reserved[204] == "v0=0" and reserved[204 + 4 * NUM_BINS - 1] == "v3=999"
    for token in [*reserved[:300], "v3=999", "mask=1023", "pose=0", "color=7", *METADATA_FIELDS]:
        assert hf_vocab.encode(token, add_special_tokens=False).ids == [tok.token_to_id(token)], token


def test_reserved_words_stay_whole_only_as_whole_words(toks, hf_vocab):
    tok = toks["caption"]
    # "contrast" is a field token, "contrasting" a word that merely starts with it
    assert tok.decode(tok.encode(["the contrasting brightness."]))[0] == "the contrasting brightness."
    ids = tok.encode(["a [S_3] v0=12 caption"])[0]
    assert not set(ids[:-1]) & set(tok.sentinel_ids) and tok.token_to_id("v0=12") not in ids


def test_captions_encode_as_hugging_face_does(toks, hf_vocab):
    tok = toks["caption"]
    texts = [*CAPTIONS, "Zürich's café, naïve", "unseen wordz like qwxyzzy"]
    for text, ids in zip(texts, tok.encode(texts), strict=True):
        assert ids == [*hf_vocab.encode(text, add_special_tokens=False).ids, tok.eos_id]


@pytest.mark.parametrize("modality", sorted(SERIALIZERS))
def test_round_trip_through_ids(toks, modality):
    tok = toks[modality]
    assert isinstance(tok, ModalityTokenizer)
    values = realistic(modality, np.random.default_rng(0))
    ids = tok.encode(values)
    for row in ids:
        assert row[-1] == tok.eos_id and tok.eos_id not in row[:-1]
        assert 1 <= len(row) <= get_modality(modality).max_tokens and max(row) < tok.vocab_size
    for value, back in zip(values, tok.decode(ids), strict=True):
        check_close(modality, value, back)


def test_fits_the_modality_registry(toks):
    scale = ModalityScale(vocab_sizes={m: VOCAB for m in SERIALIZERS})
    for m, tok in toks.items():
        assert tok.max_tokens == get_modality(m).max_tokens
        check_tokenizer(tok, scale.resolve(m))


# ----------------------------------------------------------------------------- truncation
def test_truncation_keeps_whole_units_and_eos(toks):
    det = toks["det"]
    objects = [{"box": [i / 100, 0.1, i / 100 + 0.01, 0.2], "label": "cube", "score": 1.0} for i in range(80)]
    (ids,) = det.encode([objects])
    assert len(ids) == 1 + 5 * (255 // 5) and ids[-1] == det.eos_id  # 51 whole objects of 5 tokens
    assert [d["box"][0] for d in det.decode([ids])[0]] == pytest.approx([i / 100 for i in range(51)], abs=1e-3)
    assert len(det.encode([objects], truncate=False)[0]) == 80 * 5 + 1

    cap = toks["caption"]
    words = ["cube."] * 200  # two tokens a word: cut between words, never inside one
    (ids,) = cap.encode([" ".join(words)])
    assert len(ids) == 255 and ids[-1] == cap.eos_id
    assert cap.decode([ids])[0] == " ".join(words[:127])

    sam = toks["sam_instance"]
    many = np.zeros((64, 64), np.uint16)
    for k in range(20):  # 20 instances, 20 tokens each: the 14 largest fit in 290
        many[3 * k:3 * k + 2, : 4 + k] = k + 1
    (ids,) = sam.encode([many])
    assert len(ids) == 14 * 20 + 1
    kept = sam.decode([ids])[0]
    assert len(np.unique(kept)) == 15 and (kept[:18] == 0).all()  # the six smallest (top rows) went


# ----------------------------------------------------------------------------- decoding bad ids
def test_ids_outside_the_vocabulary_are_an_error(toks):
    tok = toks["det"]
    for bad in (VOCAB, -1, 10**9):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            tok.decode([[tok.token_to_id("v0=3"), bad]])


@pytest.mark.parametrize("modality", sorted(SERIALIZERS))
def test_random_ids_never_crash(toks, modality):
    tok = toks[modality]
    rng = np.random.default_rng(0)
    struct = [tok.token_to_id(t) for t in ("v0=5", "v1=6", "v2=7", "v3=8", "mask=3", "pose=4", "color=2",
                                           "brightness", "cube", "##s", "[S_7]", "[SOS]", "[PAD]")]
    for _ in range(100):
        row = rng.choice(struct, 30) if rng.uniform() < 0.5 else rng.integers(0, VOCAB, 40)
        tok.decode([row.tolist()])


def test_decode_stops_at_eos_skips_padding_and_takes_tensors(toks):
    det = toks["det"]
    ids = det.encode([[{"box": [0.1, 0.2, 0.3, 0.4], "label": "teddy bear"}]])[0]
    padded = torch.tensor([[det.sos_id, *ids, det.pad_id, det.pad_id]])
    assert det.decode(padded)[0][0]["label"] == "teddy bear"
    assert det.decode([ids[:-1] + [det.eos_id] + ids[:-1]]) == det.decode([ids])
    assert det.decode([ids[:5]])[0][0]["label"] == "teddy"  # a cut label keeps what its pieces spell
    assert det.decode([ids[:4]]) == [[]]  # a box without a label is dropped


# ----------------------------------------------------------------------------- save / load
def test_save_load_identical(toks, tmp_path):
    for m in ("caption", "sam_instance"):
        toks[m].save_pretrained(tmp_path / m)
        config = json.loads((tmp_path / m / "config.json").read_text())
        assert config["class"] == "wordpiece" and config["config"]["modality"] == m
        loaded = load_pretrained(tmp_path / m)
        assert isinstance(loaded, SequenceTokenizer) and loaded.config == toks[m].config
        values = realistic(m, np.random.default_rng(3))
        assert loaded.encode(values) == toks[m].encode(values)
    both = load_tokenizers(tmp_path)
    assert set(both) == {"caption", "sam_instance"}


def test_box_bins_are_saved_and_older_folders_load_with_1000(hf_vocab, tmp_path):
    tok = SequenceTokenizer(TextConfig("det", VOCAB, box_bins=64), hf_vocab)
    tok.save_pretrained(tmp_path / "det")
    loaded = load_pretrained(tmp_path / "det")
    assert loaded.config.box_bins == 64
    values = realistic("det", np.random.default_rng(4))
    ids = loaded.encode(values)
    assert ids == tok.encode(values)
    assert max(p[1] for row in ids for p in map(parse_token, loaded.words(row)) if p) < 64
    # a folder saved before the setting existed: its config has no box_bins
    config_file = tmp_path / "det" / "config.json"
    saved = json.loads(config_file.read_text())
    del saved["config"]["box_bins"]
    config_file.write_text(json.dumps(saved))
    old = load_pretrained(tmp_path / "det")
    assert old.config.box_bins == NUM_BINS
    assert old.words(old.encode([[{"box": [0, 0, 1, 1], "label": "cube"}]])[0])[:4] == \
        ["v0=0", "v1=0", "v2=999", "v3=999"]


def test_config_checks():
    with pytest.raises(ValueError, match="no sequence modality"):
        TextConfig("tok_rgb")
    with pytest.raises(ValueError, match="below"):
        TextConfig("caption", vocab_size=1000)
    for bad in (0, 5000):
        with pytest.raises(ValueError, match="box_bins"):
            TextConfig("det", box_bins=bad)
    with pytest.raises(ValueError, match="tokens"):
        SequenceTokenizer(TextConfig("caption", VOCAB + 1),
                          new_tokenizer(build_vocabulary([], VOCAB), reserved_tokens()))


class HalfMaskCoder:
    """A stand-in for the mask VQ-VAE: any coder with the protocol's attributes plugs in."""

    name, mask_size, num_tokens, vocab_size = "half", 2, 1, 4

    def encode(self, masks):
        return (masks[:, 0, 0] * 1 + masks[:, 1, 1] * 2)[:, None]

    def decode(self, ids):
        masks = np.zeros((len(ids), 2, 2), bool)
        masks[:, 0, 0], masks[:, 1, 1] = ids[:, 0] & 1, ids[:, 0] & 2
        return masks


def test_a_mask_coder_plugs_in_through_the_protocol(hf_vocab, tmp_path):
    tok = SequenceTokenizer("sam_instance", hf_vocab, mask_coder=HalfMaskCoder())
    ids = np.zeros((64, 64), np.uint16)
    ids[4:20, 4:20] = 1
    (row,) = tok.encode([ids])
    assert len(row) == 4 + 1 + 1 and tok.id_to_token(row[4]) == "mask=3"
    assert tok.decode([row])[0].max() == 1
    with pytest.raises(ValueError, match="not registered"):
        tok.save_pretrained(tmp_path / "sam")
