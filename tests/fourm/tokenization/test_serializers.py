"""Serializers: every sequence modality <-> words, round trips up to binning, tolerant parsing."""

import numpy as np
import pytest

from fourm.modalities import MODALITIES, Kind
from fourm.tokenization.bins import NUM_BINS, from_bin, parse_token, to_bin
from fourm.tokenization.coders import GridMaskCoder, GridPoseCoder, MaskCoder, PoseCoder
from fourm.tokenization.serializers import (
    MAX_COLORS,
    METADATA_FIELDS,
    SERIALIZERS,
    default_columns,
    get_serializer,
    infer_columns,
)
from fourm.tokenization.text import SequenceTokenizer, TextConfig, build_vocabulary, new_tokenizer, reserved_tokens
from fourm.tokenization.words import join_words, normalize_text, split_words

CAPTIONS = [
    "a large red cube to the left of a small blue sphere on a plain floor.",
    "there is a small cyan cylinder behind a large gray cone, and a large white sphere.",
    "A dog's toy (a red ball) on the grass; it's 3.5 m away!",
    'He said "hello" to the t-shirt vendor at 10:30, near the 1,000 flowers.',
    "Black and white photo of a man and/or a woman... 50% off?",
]


# ----------------------------------------------------------------------------- realistic values
def make_det(rng, n=5):
    labels = ["cube", "sphere", "traffic light", "t-shirt", "teddy bear"]
    out = []
    for _ in range(n):
        x0, y0 = rng.uniform(0, 0.8, 2)
        w, h = rng.uniform(0.02, 0.2, 2)
        out.append({"box": [float(x0), float(y0), float(x0 + w), float(y0 + h)],
                    "label": labels[rng.integers(len(labels))], "score": float(rng.uniform(0.3, 1))})
    return out


def make_instances(rng, size=64, n=5):
    """An id map of ellipses and rectangles, later ones drawn over earlier ones (like occlusion)."""
    ids = np.zeros((size, size), np.uint16)
    yy, xx = np.mgrid[:size, :size]
    for k in range(1, n + 1):
        cy, cx = rng.uniform(10, size - 10, 2)
        ry, rx = rng.uniform(5, 14, 2)
        shape = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1 if k % 2 else \
            (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
        ids[shape] = k
    return ids


def make_person(rng):
    x0, y0 = rng.uniform(0, 0.5, 2)
    w, h = rng.uniform(0.1, 0.5), rng.uniform(0.2, 0.5)
    xy = rng.uniform(0, 1, (33, 2)) * [w, h] + [x0, y0]
    vis = rng.uniform(0, 1, (33, 1))
    return {"box": [x0, y0, x0 + w, y0 + h], "keypoints": np.concatenate([xy, vis], 1).round(4).tolist()}


METADATA = {"brightness": 0.4844, "caption_chars": 130, "caption_sentences": 1, "caption_words": 25,
            "colourfulness": 44.7594, "contrast": 0.1824, "entropy": 4.4831, "geometric_complexity": 0.0807,
            "instance_diversity": 0.5, "num_coco_instances": 4, "num_humans": 0, "num_sam_instances": 4,
            "objectness": 0.1455, "occlusion_score": 0.1996, "original_height": 480, "original_width": 640,
            "saturation": 0.131, "semantic_diversity": 4, "walkability": 0.8472}


def instance_ious(ids, decoded):
    out = []
    for label in np.unique(ids)[1:]:
        mask = ids == label
        out.append(max(((mask & (decoded == k)).sum() / (mask | (decoded == k)).sum()
                        for k in np.unique(decoded[mask]) if k), default=0.0))
    return out


# ----------------------------------------------------------------------------- the registry
def test_every_sequence_modality_has_a_serializer():
    sequences = {k for k, m in MODALITIES.items() if m.kind == Kind.SEQUENCE}
    assert sequences == set(SERIALIZERS)
    for name in SERIALIZERS:
        assert get_serializer(name).modality == name
    with pytest.raises(LookupError, match="no serializer"):
        get_serializer("tok_rgb")


# ----------------------------------------------------------------------------- text
def test_split_words_matches_hugging_face_bert_pre_tokenization():
    from tokenizers import normalizers, pre_tokenizers

    norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    texts = [*CAPTIONS, "Café in Zürich — naïve façade", "tabs\tand\nnew\x0blines\x00 ok", "日本語のtext 😀",
             "[S_3] v0=12 mask=5 a.m. e.g. rock'n'roll", "\u200bzero\u00a0width"]
    for text in texts:
        ours = [p for w in split_words(text) for p in w]
        assert ours == [w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text))], text


def test_captions_round_trip_to_lower_case():
    caption = get_serializer("caption")
    for text in CAPTIONS:
        assert caption.from_tokens(caption.to_tokens(text)) == text.lower()
        assert normalize_text(text) == text.lower()
    assert caption.to_units("It's red.") == [["it", "'", "s"], ["red", "."]]  # units are whitespace words


def test_normalize_text_is_idempotent_and_documents_its_losses():
    for text in ["a - b", "x , y", "Ünïcödé  spaces ", "2019, 300 people", '"a" and "b"']:
        once = normalize_text(text)
        assert normalize_text(once) == once
    assert normalize_text("a - b") == "a-b"  # spaced hyphens cannot be told from joined ones
    assert normalize_text("  Ünïcödé  ") == "unicode"
    assert join_words(['"', "a", '"', "and", '"', "b", '"']) == '"a" and "b"'


# ----------------------------------------------------------------------------- numbers
def test_binning_is_exact_at_the_ends_and_within_half_a_bin():
    assert to_bin(0.0) == 0 and to_bin(1.0) == NUM_BINS - 1 and to_bin(-3) == 0 and to_bin(7) == NUM_BINS - 1
    x = np.linspace(0, 1, 777)
    err = np.abs([from_bin(to_bin(v)) - v for v in x])
    assert err.max() <= 0.5 / (NUM_BINS - 1) + 1e-12


def test_det_round_trips_within_a_thousandth_most_confident_first():
    det = get_serializer("det")
    objects = make_det(np.random.default_rng(0), 8)
    back = det.from_tokens(det.to_tokens(objects))
    ordered = sorted(objects, key=lambda d: -d["score"])
    assert [d["label"] for d in back] == [d["label"] for d in ordered]
    assert np.abs(np.array([d["box"] for d in back]) - [d["box"] for d in ordered]).max() <= 1e-3
    assert det.to_tokens([{"box": [0, 0, 1, 1], "label": "Traffic Light"}]) == \
        ["v0=0", "v1=0", "v2=999", "v3=999", "traffic", "light"]


def test_box_bins_set_the_levels_of_box_coordinates_only():
    det = get_serializer("det", box_bins=64)
    objects = make_det(np.random.default_rng(0), 8)
    tokens = det.to_tokens(objects)
    assert max(p[1] for p in map(parse_token, tokens) if p) < 64
    back = det.from_tokens(tokens)
    ordered = sorted(objects, key=lambda d: -d["score"])
    assert np.abs(np.array([d["box"] for d in back]) - [d["box"] for d in ordered]).max() <= 0.5 / 63 + 1e-6
    assert det.to_tokens([{"box": [0, 0, 1, 1], "label": "cube"}])[:4] == ["v0=0", "v1=0", "v2=63", "v3=63"]
    assert det.from_tokens(["v0=64", "v1=0", "v2=9", "v3=9", "cube"]) == []  # beyond the 64 levels
    rng = np.random.default_rng(1)
    sam, poses = get_serializer("sam_instance", box_bins=64), get_serializer("human_poses", box_bins=64)
    sam_tokens, pose_tokens = sam.to_tokens(make_instances(rng)), poses.to_tokens([make_person(rng)])
    assert max(p[1] for p in map(parse_token, sam_tokens + pose_tokens) if p and p[0].startswith("v")) < 64
    assert sam.from_tokens(sam_tokens).any() and len(poses.from_tokens(pose_tokens)) == 1
    # palettes keep their exact 0-255 values
    assert get_serializer("color_palette", box_bins=64).from_tokens(["v1=255", "v2=0", "v3=99"]) == [[255, 0, 99]]


def test_generated_boxes_with_swapped_corners_decode_as_valid_boxes():
    det = get_serializer("det")
    back = det.from_tokens(["v0=800", "v1=100", "v2=200", "v3=900", "cube"])
    assert back[0]["label"] == "cube"
    x0, y0, x1, y1 = back[0]["box"]
    assert x0 <= x1 and y0 <= y1 and (x0, y0) == pytest.approx((0.2002, 0.1001), abs=1e-3)


def test_palette_is_exact_with_a_count_token():
    palette = get_serializer("color_palette")
    colours = [[255, 0, 17], [3, 128, 254], [0, 0, 0]]
    tokens = palette.to_tokens(colours)
    assert tokens[:4] == ["color=3", "v1=255", "v2=0", "v3=17"]
    assert palette.from_tokens(tokens) == colours
    many = [[i, i, i] for i in range(10)]
    assert palette.from_tokens(palette.to_tokens(many)) == many[:MAX_COLORS]


def test_metadata_round_trips_within_half_a_bin():
    meta = get_serializer("metadata")
    tokens = meta.to_tokens(METADATA)
    assert len(tokens) == 2 * len(METADATA) and tokens[0] in METADATA_FIELDS
    back = meta.from_tokens(tokens)
    assert set(back) == set(METADATA)
    for name, value in METADATA.items():
        lo, hi, integer = METADATA_FIELDS[name]
        assert abs(back[name] - value) <= (hi - lo) / (NUM_BINS - 1) / 2 + 1e-4, name
        if integer and hi - lo == NUM_BINS - 1:
            assert back[name] == value  # counts are exact
    clipped = meta.from_tokens(meta.to_tokens({"num_humans": 5000, "brightness": float("nan"), "unknown": 1}))
    assert clipped == {"num_humans": 999}


# ----------------------------------------------------------------------------- codes
def test_grid_mask_coder_is_exact_on_its_grid():
    coder = GridMaskCoder(1024)
    assert isinstance(coder, MaskCoder)
    assert (coder.mask_size, coder.num_tokens, coder.vocab_size) == (12, 16, 512)
    masks = np.random.default_rng(0).uniform(size=(5, 12, 12)) > 0.5
    ids = coder.encode(masks)
    assert ids.shape == (5, 16) and ids.max() < coder.vocab_size
    np.testing.assert_array_equal(coder.decode(ids), masks)
    assert GridMaskCoder(256).mask_size == 8
    with pytest.raises(ValueError, match="expected masks"):
        coder.encode(masks[:, :8])


def test_grid_pose_coder_is_within_half_a_cell():
    coder = GridPoseCoder(1024)
    assert isinstance(coder, PoseCoder) and coder.vocab_size <= 1024
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.uniform(-0.25, 1.25, (4, 33, 2)), rng.uniform(0, 1, (4, 33, 1))], -1)
    back = coder.decode(coder.encode(points))
    half_cell = (coder.hi - coder.lo) / (coder.grid - 1) / 2
    assert np.abs(back[..., :2] - points[..., :2]).max() <= half_cell + 1e-9
    np.testing.assert_array_equal(back[..., 2], points[..., 2] >= 0.5)


def test_sam_instances_round_trip_by_iou():
    sam = get_serializer("sam_instance", image_size=64)
    rng = np.random.default_rng(1)
    for _ in range(4):
        ids = make_instances(rng)
        units = sam.to_units(ids)
        areas = [(ids == k).sum() for k in np.unique(ids)[1:]]
        assert len(units) == len(areas) and all(len(u) == 4 + 16 for u in units)
        back = sam.from_tokens(sam.to_tokens(ids))
        assert back.shape == (64, 64) and back.dtype == np.uint16
        ious = instance_ious(ids, back)
        assert np.mean(ious) > 0.9 and min(ious) > 0.75
        assert set(np.unique(back)) == set(range(len(areas) + 1))
    small = np.zeros((64, 64), np.uint16)
    small[10:15, 20:26] = 1  # smaller than the coder's 12x12 grid: exact
    small[12, 20] = 0
    np.testing.assert_array_equal(sam.from_tokens(sam.to_tokens(small)), small)
    assert sam.to_units(np.zeros((64, 64), np.uint16)) == []


def test_poses_round_trip_within_a_grid_cell():
    poses = get_serializer("human_poses")
    rng = np.random.default_rng(2)
    people = [make_person(rng) for _ in range(3)]
    back = poses.from_tokens(poses.to_tokens(people))
    assert len(back) == 3
    by_area = sorted(people, key=lambda p: -(p["box"][2] - p["box"][0]) * (p["box"][3] - p["box"][1]))
    coder = poses.pose_coder
    for person, got in zip(by_area, back, strict=True):
        assert np.abs(np.array(got["box"]) - person["box"]).max() <= 1e-3
        size = np.array([person["box"][2] - person["box"][0], person["box"][3] - person["box"][1]])
        tol = (coder.hi - coder.lo) / (coder.grid - 1) / 2 * size + 2e-3
        err = np.abs(np.array(got["keypoints"])[:, :2] - np.array(person["keypoints"])[:, :2])
        assert (err <= tol).all()
    assert poses.to_units([]) == [] and poses.from_tokens([]) == []
    with pytest.raises(ValueError, match="33 keypoints"):
        poses.to_units([{"box": [0, 0, 1, 1], "keypoints": [[0.5, 0.5, 1.0]]}])


# ----------------------------------------------------------------------------- malformed sequences
@pytest.mark.parametrize("modality", sorted(SERIALIZERS))
def test_parsing_never_raises_on_garbage(modality):
    ser = get_serializer(modality)
    rng = np.random.default_rng(0)
    vocab = ["v0=1", "v1=2", "v2=999", "v3=5", "v0=1000", "mask=3", "mask=9999", "pose=7", "color=2", "cube",
             "brightness", "[UNK]", ".", "a", "v1=abc", "pose=", "v3=0"]
    for _ in range(200):
        ser.from_tokens(list(rng.choice(vocab, rng.integers(0, 40))))


def test_malformed_units_are_dropped_and_the_rest_kept():
    det = get_serializer("det")
    good = det.to_tokens([{"box": [0.1, 0.2, 0.3, 0.4], "label": "cube"},
                          {"box": [0.5, 0.5, 0.6, 0.7], "label": "cone"}])
    assert [d["label"] for d in det.from_tokens(good[:-2])] == ["cube"]  # cut inside the second object
    assert [d["label"] for d in det.from_tokens(good[:3] + good[5:])] == ["cone"]  # broken first box
    meta = get_serializer("metadata")
    assert meta.from_tokens(["brightness", "v2=5", "entropy", "v1=999", "v1=3"]) == {}
    assert meta.from_tokens(["brightness", "v1=500", "contrast"]) == {"brightness": 0.5005}
    sam = get_serializer("sam_instance")
    tokens = sam.to_tokens(make_instances(np.random.default_rng(0), n=2))
    assert len(np.unique(sam.from_tokens(tokens[:-1]))) == 2  # the second instance lost a code: dropped


# ----------------------------------------------------------------------------- scene graphs and tables
STRUCTURED_GRAPH = {
    "nodes": [{"size": "large", "colour": "red", "class": "cube"}, {"colour": "light-blue", "class": "cone"},
              {"size": "small", "colour": "green", "class": "traffic light"}],
    "edges": [{"subject": 0, "relation": "left of", "object": 1},
              {"subject": 2, "relation": "in front of", "object": 0}],
}


def test_scene_graph_round_trip_is_exact_and_readable():
    ser = get_serializer("scene_graph")
    tokens = ser.to_tokens(STRUCTURED_GRAPH)
    assert tokens[:6] == ["v0=0", "large", ",", "red", ",", "cube"]
    assert tokens[-5:] == ["v1=2", "in", "front", "of", "v2=0"]
    assert ser.from_tokens(tokens) == STRUCTURED_GRAPH  # attributes may be missing, hyphenated or of several words


def test_scene_graph_drops_what_does_not_parse():
    ser = get_serializer("scene_graph")
    tokens = ser.to_tokens(STRUCTURED_GRAPH)
    # the second node loses a separator: gone, and the edge to it with it; the edge between the others stays
    broken = tokens[:6] + ["v0=1", "light", "-", "blue", "cone"] + tokens[12:]
    back = ser.from_tokens(broken)
    assert [n["class"] for n in back["nodes"]] == ["cube", "traffic light"]
    assert back["edges"] == [{"subject": 1, "relation": "in front of", "object": 0}]  # indices follow the nodes
    assert ser.from_tokens(["v1=0", "v2=1", "v0=3", "a", ",", "b", ",", "c", "v0=3", ",", ","]) == {
        "nodes": [{"size": "a", "colour": "b", "class": "c"}], "edges": []}  # a repeated index is dropped


def test_table_numbers_within_half_a_level_and_words_normalised():
    columns = [["name", None], ["score", [0.0, 10.0]], ["count", [0, 99]]]
    ser = get_serializer("table", table_columns=columns, table_bins=11)
    rows = [{"name": "Big Box", "score": 3.3, "count": 12}, {"score": 12.0}, {"count": 7, "name": "x"}]
    tokens = ser.to_tokens(rows)
    assert tokens[:6] == ["v0=0", "v2=0", "big", "box", "v2=1", "v3=3"]
    back = ser.from_tokens(tokens)
    assert back[0] == {"name": "big box", "score": 3.0, "count": pytest.approx(9.9)}  # 11 levels: steps of 1, 9.9
    assert back[1] == {"score": 10.0}  # clipped to the column's range
    assert list(back[2]) == ["name", "count"]  # cells in the schema's order


def test_table_cells_outside_the_schema_are_left_out(caplog):
    ser = get_serializer("table", table_columns=[["a", [0, 1]]])
    back = ser.from_tokens(ser.to_tokens([{"a": 0.5, "b": "word"}, {"a": "not a number"}]))
    assert back == [{"a": pytest.approx(0.5, abs=0.5 / 99 + 1e-6)}]  # the second row has no cell left
    assert "'b' is not in the tokenizer's schema" in caplog.text and "holds numbers" in caplog.text
    with pytest.raises(ValueError, match="lo < hi"):
        get_serializer("table", table_columns=[["a", [1, 1]]])
    with pytest.raises(ValueError, match="table_bins"):
        get_serializer("table", table_bins=1)


def test_infer_columns_reads_numbers_and_words_in_order_first_seen():
    tables = [[{"id": 3, "kind": "car", "speed": 2.5}], [{"speed": -1, "kind": "bus", "id": "x7"}, {"w": 4}]]
    assert infer_columns(tables) == [["id", None], ["kind", None], ["speed", [-1.0, 2.5]], ["w", [3.0, 5.0]]]
    assert [name for name, _ in default_columns()] == ["class", "colour", "size", "x", "y", "z", "distance",
                                                       "visible"]


def test_table_schema_survives_save_and_load(tmp_path):
    """A saved config sorts mapping keys: the schema is a list, so a column keeps its place (its token)."""
    columns = [["zeta", [0, 1]], ["alpha", None]]
    vocab = new_tokenizer(build_vocabulary(["alpha", "zeta"], 8192), reserved_tokens())
    tok = SequenceTokenizer(TextConfig("table", table_columns=columns), vocab)
    tok.save_pretrained(tmp_path / "table")
    loaded = SequenceTokenizer.from_pretrained(tmp_path / "table")
    tables = [[{"zeta": 0.25, "alpha": "hello"}]]
    assert loaded.encode(tables) == tok.encode(tables)
    assert loaded.decode(tok.encode(tables)) == [[{"zeta": pytest.approx(0.25, abs=0.006), "alpha": "hello"}]]
