"""Evaluation measures on hand-made arrays whose answers are known, and the table over a fake generator."""

import math

import numpy as np
import pytest
import torch

from fourm.eval import metrics
from fourm.eval.evaluate import TASKS, evaluate, format_table
from fourm.eval.retrieval import recall_at_k


def test_depth_errors_by_hand():
    gt = np.array([[1.0, 2.0], [4.0, 0.0]])  # the 0 is unknown depth: ignored
    pred = np.array([[1.0, 3.0], [2.0, 9.0]])
    e = metrics.depth_errors([pred], [gt])
    assert e["abs_rel"] == pytest.approx((0 + 0.5 + 0.5) / 3)
    assert e["delta1"] == pytest.approx(1 / 3)  # only the first pixel is within 1.25x
    assert metrics.depth_errors([gt], [gt]) == {"abs_rel": 0.0, "delta1": 1.0}


def test_normal_angle_error_by_hand():
    up, right = np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0])
    gt = np.stack([up, up, np.zeros(3)]).reshape(1, 3, 3)  # last pixel has no normal: ignored
    pred = np.stack([up * 5, right, right]).reshape(1, 3, 3)  # a long vector is normalised
    assert metrics.normal_angle_error(pred, gt) == pytest.approx(45.0)
    diagonal = np.array([1.0, 1.0, 0.0]).reshape(1, 1, 3)
    assert metrics.normal_angle_error(diagonal, up.reshape(1, 1, 3)) == pytest.approx(45.0)


def test_mean_iou_by_hand():
    gt = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1]])
    # class 0: inter 1, union 2; class 1: inter 2, union 3; class 2 absent from both: not counted
    assert metrics.mean_iou([pred], [gt], 3) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert metrics.mean_iou([gt], [gt], 3) == 1.0


def test_detection_scores_by_hand():
    box = [0.0, 0.0, 0.5, 0.5]
    gt = [[{"box": box, "label": "cube"}, {"box": [0.5, 0.5, 1.0, 1.0], "label": "sphere"}]]
    shifted = [0.0, 0.0, 0.5, 0.4]  # IoU 0.8 with box
    pred = [[{"box": shifted, "label": "cube"},
             {"box": box, "label": "cube"},  # second cube on the same truth: a false positive
             {"box": [0.5, 0.5, 1.0, 1.0], "label": "cone"}]]  # wrong label
    assert metrics.detection_scores(pred, gt) == {"precision": pytest.approx(1 / 3), "recall": 0.5}
    assert metrics.box_iou(box, shifted) == pytest.approx(0.8)
    assert metrics.detection_scores([[]], gt)["precision"] == 0.0


def test_recall_at_k_by_hand():
    s = np.array([[0.9, 0.1, 0.0],   # own item first
                  [0.8, 0.5, 0.1],   # own item second
                  [0.3, 0.2, 0.1]])  # own item third
    # scores = queries @ gallery.T: with the identity as gallery the queries are the score rows
    recall = recall_at_k(torch.tensor(s), torch.eye(3), ks=(1, 2, 3))
    assert recall[1] == pytest.approx(1 / 3)
    assert recall[2] == pytest.approx(2 / 3)
    assert recall[3] == 1.0
    flat = torch.ones((4, 4))  # one score for everything: chance, not a perfect retrieval
    flat_recall = recall_at_k(flat, torch.eye(4), ks=(1, 2))
    assert flat_recall[1] == pytest.approx(1 / 4)
    assert flat_recall[2] == pytest.approx(2 / 4)


def test_parse_and_score_caption_objects():
    truth = "a large red cube to the left of a small blue sphere on a plain floor."
    assert metrics.parse_objects(truth) == [("red", "cube"), ("blue", "sphere")]
    assert metrics.parse_objects("a cone and a green cylinder") == [(None, "cone"), ("green", "cylinder")]
    s = metrics.caption_object_scores(["a small red cube to the left of a small red sphere."], [truth])
    assert s == {"shape": 1.0, "colour_shape": 0.5, "recall": 0.5}
    assert metrics.caption_object_scores([truth], [truth]) == {"shape": 1.0, "colour_shape": 1.0, "recall": 1.0}


def test_objects_of_captions_and_tables_agree_as_sets():
    caption = "a large red cube to the left of a blue cone, and a small green sphere right of the large red cube."
    said = metrics.object_triples(caption)
    assert said == [("large", "red", "cube"), (None, "blue", "cone"), ("small", "green", "sphere"),
                    ("large", "red", "cube")]
    rows = [{"class": "cube", "colour": "red", "size": "large", "x": 0.1}, {"class": "cone", "colour": "blue"},
            {"class": "sphere", "colour": "green", "size": "large"}]
    assert metrics.row_triples(rows)[1] == (None, "blue", "cone")
    # sets: the repeated cube counts once; 2 of 3 objects in both
    assert metrics.object_agreement([metrics.row_triples(rows)], [said]) == pytest.approx(2 * 2 / 6)
    assert metrics.object_agreement([[], []], [[], said]) == 0.0
    assert metrics.object_agreement([[]], [[]]) == 1.0


def test_classify_colours_keeps_hue_under_shading():
    colours, _, _ = metrics.scene_vocabulary()
    names = list(colours)
    rgb = np.array(list(colours.values()), np.uint8)
    for factor in (1.0, 0.45):  # lit and in shadow
        shaded = (rgb * factor).astype(np.uint8)
        assert [names[i] for i in metrics.classify_colours(shaded)] == names


def test_colours_shown_by_hand():
    colours, _, _ = metrics.scene_vocabulary()
    rgb = np.full((64, 64, 3), 128, np.uint8)  # a grey ground: no colour
    rgb[:4, :4] = colours["red"]  # 16 pixels: shown
    rgb[10:12, 10:12] = colours["blue"]  # 4 pixels: too few to count
    rgb[20:30, 20:30] = colours["white"]  # never judged: the ground is achromatic too
    rgb[40:44, 40:44] = (np.array(colours["green"]) * 0.45).astype(np.uint8)  # in shadow: still green
    assert metrics.colours_shown(rgb) == {"red", "green"}
    assert metrics.achromatic_colours() == {"white"}
    hits = metrics.colour_hits([rgb, rgb], ["a small red cube and a large blue cone.", "a white sphere."])
    # named: red of {red, blue}; shown: red, green twice each, of which only the first red was named
    assert hits == {"named": 0.5, "false_alarms": 0.75}


MODEL_MODALITIES = ["tok_rgb", "tok_depth", "tok_normal", "tok_semseg", "det", "caption", "tok_caption_global",
                    "scene_graph", "table"]


class _Oracle:
    """Answers with the truth, as a perfect model would; ``shuffle`` gives another scene's answer instead."""

    def __init__(self, samples: list[dict], shuffle: bool = False):
        self.by_input = {}
        self.samples, self.shuffle = samples, shuffle
        self.modalities = MODEL_MODALITIES

    def generate(self, conditions, targets, seed=0, **settings):
        from fourm.modalities import MODALITIES

        (given, values), = conditions.items()
        key = "rgb" if given == "tok_rgb" else given
        index = []
        for v in values:  # find each input's scene (generated images are real ones here)
            hits = [i for i, s in enumerate(self.samples) if _same(s[key], v)]
            index.append(hits[0] if hits else 0)
        if self.shuffle:
            index = [(i + 1) % len(self.samples) for i in index]
        return {t: [self.samples[i][MODALITIES[t].source] for i in index] for t in targets}

    def vectors(self, conditions, target):
        return np.stack(self.generate(conditions, [target])[target])


def _same(a, b) -> bool:
    return a == b if isinstance(a, str) else np.array_equal(np.asarray(a), np.asarray(b))


class _Identity:
    """A lossless 'tokenizer': the round trip returns the input, so upper bounds are perfect."""

    def encode(self, values):
        return list(values)

    def decode(self, ids):
        return list(ids)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from pseudolabel.pipeline import PseudolabelConfig, run_pipeline

    out = tmp_path_factory.mktemp("heldout")
    run_pipeline(PseudolabelConfig(source="scenes:8", out=str(out), seed=3, shard_size=8,
                                   labellers=["canny_edge", "normal"], series=["scene_graph", "table"]),
                 progress=False)
    return out


def _fake_caption_global(samples):
    # the corpus here has no MiniLM vectors: a distinct unit vector per scene stands in for them
    for i, s in enumerate(samples):
        s["caption_global"] = np.eye(len(samples))[i]


def test_perfect_model_meets_the_upper_bound_and_beats_the_baseline(scenes, monkeypatch):
    from fourm.data.corpus import CorpusReader

    reader = CorpusReader(scenes)
    samples = reader.head(len(reader))
    _fake_caption_global(samples)
    monkeypatch.setattr(CorpusReader, "head", lambda self, n: samples[:n])
    tokenizers = {m: _Identity() for m in MODEL_MODALITIES}
    table = evaluate(_Oracle(samples), tokenizers, scenes, samples=8, progress=False)
    rows = table["rows"]
    assert {r["task"] for r in rows} == set(TASKS) and not table["skipped"]
    for r in rows:
        assert r["model"] == pytest.approx(r["upper"]), r
        assert r["beats_baseline"], r
    by = {(r["task"], r["metric"]): r for r in rows}
    assert by[("RGB -> depth", "abs rel")]["model"] == 0.0
    assert by[("RGB -> semseg", "mIoU")]["model"] == 1.0
    assert by[("caption -> RGB", "named colours shown")]["model"] == 1.0  # the judge sees real scenes' colours
    assert by[("caption -> RGB", "colours shown not named")]["model"] == 0.0
    assert by[("scene graph -> RGB", "named colours shown")]["model"] == 1.0
    assert by[("caption -> table", "objects agree (F1)")]["model"] == 1.0
    assert by[("table -> caption", "objects agree (F1)")]["model"] == 1.0
    text = format_table(table)
    assert "RGB -> normals" in text and "!" not in text.splitlines()[3]

    wrong = evaluate(_Oracle(samples, shuffle=True), tokenizers, scenes, samples=8, progress=False)
    worse = {(r["task"], r["metric"]): r for r in wrong["rows"]}
    assert worse[("RGB -> depth", "abs rel")]["model"] > 0
    assert worse[("caption -> image retrieval", "recall@1")]["model"] == 0.0
    assert not math.isnan(worse[("RGB -> caption", "colour + shape named right")]["model"])


def test_rgb_goes_to_every_modality_that_reads_it(scenes):
    """A model reading RGB as pixels and as tokens is given the scene's RGB both ways."""
    seen = []

    class TwoWays:
        modalities = ["rgb", "tok_rgb", "tok_depth"]

        def generate(self, conditions, targets, seed=0, **settings):
            seen.append(sorted(conditions))
            (values, *_) = conditions.values()
            return {"tok_depth": [np.full((64, 64), 5.0)] * len(values)}

    tokenizers = {"tok_rgb": _Identity(), "tok_depth": _Identity()}
    evaluate(TwoWays(), tokenizers, scenes, samples=4, progress=False)
    assert seen == [["rgb", "tok_rgb"]]


def test_missing_modalities_skip_their_rows(scenes):
    tokenizers = {"tok_rgb": _Identity(), "tok_depth": _Identity()}

    class Depth:
        modalities = ["tok_rgb", "tok_depth"]

        def generate(self, conditions, targets, seed=0, **settings):
            (_, values), = conditions.items()
            return {"tok_depth": [np.full((64, 64), 5.0)] * len(values)}

    table = evaluate(Depth(), tokenizers, scenes, samples=4, progress=False)
    assert [r["task"] for r in table["rows"]] == ["RGB -> depth", "RGB -> depth"]
    assert "RGB -> caption" in table["skipped"]
    assert evaluate(Depth(), tokenizers, scenes, progress=False)["samples"] == 8  # by default every scene


def test_captions_are_sampled_draws_times_against_other_scenes(scenes):
    """RGB -> caption samples at temperature 1, once per draw with its own seeds; the baseline never uses
    the scene's own caption, even when the draws outnumber the other scenes."""
    from fourm.data.corpus import CorpusReader

    reader = CorpusReader(scenes)
    truth = [reader.sample(i)["caption"] for i in range(2)]
    calls = []

    class Sampler:
        modalities = ["tok_rgb", "caption"]

        def generate(self, conditions, targets, seed=0, **settings):
            calls.append((seed, settings))
            (_, values), = conditions.items()
            # right only when sampled: a greedy decoder of this model would name nothing
            return {"caption": truth if settings.get("temperature") == 1.0 else ["nothing."] * len(values)}

    table = evaluate(Sampler(), {"tok_rgb": _Identity(), "caption": _Identity()}, scenes, samples=2,
                     tasks=["RGB -> caption"], progress=False, draws=3)
    assert len(calls) == 3 and len({seed for seed, _ in calls}) == 3
    shape = next(r for r in table["rows"] if r["metric"] == "shapes named right")
    assert shape["model"] == 1.0
    other = metrics.caption_object_scores(truth[::-1], truth)["shape"]  # each scene scored with the other's
    assert shape["baseline"] == pytest.approx(other) and other < 1.0
    with pytest.raises(ValueError, match="draws"):
        evaluate(Sampler(), {"tok_rgb": _Identity(), "caption": _Identity()}, scenes, samples=2,
                 tasks=["RGB -> caption"], progress=False, draws=0)
