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


def test_band_measures_by_hand():
    truth = [np.array([[0.0, 2.0]]), np.array([[1.0, 1.0]])]
    scores = metrics.measure_errors([t + 0.5 for t in truth], truth)
    assert scores == {"rel_error": pytest.approx(2.0 / 4.0), "mae": pytest.approx(0.5)}
    flat = np.full((1, 1, 2), 200, np.uint8)  # linear (1, 1) against (1, 0): 45 degrees
    tilted = np.array([[[200, 0]]], np.uint8)
    assert metrics.spectral_angle_error([tilted], [flat]) == pytest.approx(45.0)
    assert metrics.spectral_angle_error([flat // 2], [flat]) == pytest.approx(0.0, abs=1e-6)


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
    rgb[50, 10:40] = colours["orange"]  # 30 pixels, but a 1 px fringe: no object
    rgb[55:57, 10:40] = colours["purple"]  # 60 pixels, 2 px across: no object either
    assert metrics.colours_shown(rgb) == {"red", "green"}
    assert metrics.colours_shown(rgb, min_width=1) == {"red", "green", "orange", "purple"}  # counted by pixel
    assert metrics.achromatic_colours() == {"white"}
    hits = metrics.colour_hits([rgb, rgb], ["a small red cube and a large blue cone.", "a white sphere."])
    # named: red of {red, blue}; shown: red, green twice each, of which only the first red was named
    assert hits == {"named": 0.5, "false_alarms": 0.75}


def test_word_error_rate_by_hand():
    # "the blue sphere" -> "a blue cone sphere": one substitution, one deletion; case and full stops are no error
    truth = ["a red cube.", "a blue cone sphere"]
    assert metrics.word_error_rate(["A Red Cube", "the blue sphere"], truth) == pytest.approx(2 / 7)
    assert metrics.word_error_rate(truth, truth) == 0.0
    assert metrics.word_error_rate(["a a a a"], ["a"]) == 3.0  # a loop's insertions: past 1
    assert metrics.word_error_rate([""], ["a cube"]) == 1.0  # nothing said: every word deleted
    with pytest.raises(ValueError, match="at least one word"):
        metrics.word_error_rate(["a cube"], ["..."])


def _cloud(xyz, classes) -> np.ndarray:
    xyz = np.asarray(xyz, np.float32)
    return np.concatenate([xyz, np.zeros((len(xyz), 3), np.float32), np.asarray(classes, np.float32)[:, None]], 1)


def test_point_class_accuracy_reads_the_nearest_predicted_point():
    truth = _cloud([[0, 0, 0], [1, 0, 0], [0, 2, 0], [5, 5, 5]], [0, 1, 2, -1])  # the last point is unlabelled
    # fewer points, in another order, slightly off: nearest (0, 0, 0.1) -> 0, (1.1, 0, 0) -> 1, (0, 1.5, 0) -> 1
    pred = _cloud([[0, 1.5, 0], [1.1, 0, 0], [0, 0, 0.1]], [1, 1, 0])
    assert metrics.point_class_accuracy([pred], [truth]) == pytest.approx(2 / 3)
    assert metrics.point_class_accuracy([truth, pred], [truth, truth]) == pytest.approx((3 + 2) / 6)
    with pytest.raises(ValueError, match="no labelled"):
        metrics.point_class_accuracy([pred], [_cloud([[0, 0, 0]], [-1])])


def test_chamfer_distance_by_hand():
    one, two = _cloud([[0, 0, 0]], [0]), _cloud([[0, 0, 0], [3, 4, 0]], [0, 0])
    # one -> two: 0; two -> one: (0 + 5) / 2; halved
    assert metrics.chamfer_distance([one], [two]) == pytest.approx(1.25)
    assert metrics.chamfer_distance([two], [one]) == pytest.approx(1.25)
    assert metrics.chamfer_distance([two, one], [two, one]) == 0.0


def test_frame_errors_by_hand():
    black, grey = np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 10, np.uint8)
    assert metrics.psnr([grey], [black]) == pytest.approx(10 * math.log10(255**2 / 100))
    assert metrics.frame_l1([grey, black], [black, black]) == 5.0  # over the set: half the pixels off by 10
    assert metrics.psnr([black], [black]) == math.inf
    assert metrics.psnr([np.full((2, 2, 3), 255, np.uint8)], [black]) == pytest.approx(0.0)  # uint8 does not wrap
    with pytest.raises(ValueError, match="shape"):
        metrics.frame_l1([black[:1]], [black])


MODEL_MODALITIES = ["tok_rgb", "tok_depth", "tok_normal", "tok_semseg", "det", "caption", "tok_caption_global",
                    "tok_speech", "tok_point_cloud", "tok_imu", "tok_video", "tok_xray", "tok_thermal",
                    "tok_hyperspectral", "scene_graph", "table"]


class _Oracle:
    """Answers with the truth, as a perfect model would; ``shuffle`` gives another scene's answer instead."""

    def __init__(self, samples: list[dict], shuffle: bool = False):
        self.by_input = {}
        self.samples, self.shuffle = samples, shuffle
        self.modalities = MODEL_MODALITIES

    def generate(self, conditions, targets, seed=0, **settings):
        from fourm.modalities import MODALITIES

        index = []
        for row in range(len(next(iter(conditions.values())))):  # find each input's scene by any condition
            hits = [i for i, s in enumerate(self.samples)
                    if any(_same(s[MODALITIES[m].source], v[row]) for m, v in conditions.items())]
            index.append(hits[0] if hits else 0)
        if self.shuffle:
            index = [(i + 1) % len(self.samples) for i in index]
        return {t: [self.samples[i][MODALITIES[t].source] for i in index] for t in targets}

    def vectors(self, conditions, target):
        return np.stack(self.generate(conditions, [target])[target])


def _same(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return np.array_equal(np.asarray(a), np.asarray(b))


class _Identity:
    """A lossless 'tokenizer': the round trip returns the input, so upper bounds are perfect."""

    def encode(self, values):
        return list(values)

    def decode(self, ids):
        return list(ids)


class _FrameIds:
    """A lossless video 'tokenizer': one id per frame, the frame's place in a table of the frames it has seen,
    frame after frame as the video tokenizer's ids are."""

    def __init__(self):
        self.frames: list[np.ndarray] = []

    def _id(self, frame: np.ndarray) -> int:
        hits = [i for i, f in enumerate(self.frames) if np.array_equal(f, frame)]
        if not hits:
            self.frames.append(frame)
        return hits[0] if hits else len(self.frames) - 1

    def encode(self, videos):
        return np.array([[self._id(f) for f in v] for v in videos])

    def decode(self, ids):
        return [np.stack([self.frames[i] for i in row]) for row in np.asarray(ids)]


def _lossless_tokenizers() -> dict:
    return {m: _FrameIds() if m == "tok_video" else _Identity() for m in MODEL_MODALITIES}


@pytest.fixture(scope="module")
def omni_scenes(tmp_path_factory):
    """Held-out scenes with the series beyond vision (configs/demo_omni.yaml's)."""
    from pseudolabel.pipeline import PseudolabelConfig, run_pipeline

    out = tmp_path_factory.mktemp("heldout_omni")
    series = ["point_cloud", "imu", "video", "speech", "xray", "thermal", "hyperspectral", "scene_graph", "table"]
    run_pipeline(PseudolabelConfig(source="scenes:8", out=str(out), seed=3, shard_size=8,
                                   labellers=["canny_edge", "normal"], series=series), progress=False)
    return out


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from pseudolabel.pipeline import PseudolabelConfig, run_pipeline

    out = tmp_path_factory.mktemp("heldout")
    run_pipeline(PseudolabelConfig(source="scenes:8", out=str(out), seed=3, shard_size=8,
                                   labellers=["canny_edge", "normal"]), progress=False)
    return out


def _fake_caption_global(samples):
    # the corpus here has no MiniLM vectors: a distinct unit vector per scene stands in for them
    for i, s in enumerate(samples):
        s["caption_global"] = np.eye(len(samples))[i]


def test_perfect_model_meets_the_upper_bound_and_beats_the_baseline(omni_scenes, monkeypatch):
    from fourm.data.corpus import CorpusReader

    scenes = omni_scenes
    reader = CorpusReader(scenes)
    samples = reader.head(len(reader))
    _fake_caption_global(samples)
    monkeypatch.setattr(CorpusReader, "head", lambda self, n: samples[:n])
    tokenizers = _lossless_tokenizers()
    table = evaluate(_Oracle(samples), tokenizers, scenes, samples=8, progress=False)
    rows = table["rows"]
    assert {r["task"] for r in rows} == set(TASKS) and not table["skipped"]
    for r in rows:
        assert r["model"] == pytest.approx(r["upper"]), r
        assert r["beats_baseline"], r
    by = {(r["task"], r["metric"]): r for r in rows}
    assert by[("RGB -> depth", "abs rel")]["model"] == 0.0
    assert by[("RGB -> semseg", "mIoU")]["model"] == 1.0
    assert by[("RGB -> X-ray", "relative error")]["model"] == 0.0 < by[("RGB -> X-ray", "relative error")]["baseline"]
    assert by[("RGB -> hyperspectral", "spectral angle (deg)")]["model"] == pytest.approx(0.0, abs=1e-5)
    assert by[("caption -> RGB", "named colours shown")]["model"] == 1.0  # the judge sees real scenes' colours
    assert by[("caption -> RGB", "colours shown not named")]["model"] == 0.0
    assert by[("speech -> caption", "word error rate")]["model"] == 0.0  # the raw clips found their scenes
    assert by[("RGB -> point cloud", "per-point class accuracy")]["model"] == 1.0
    assert by[("IMU + first frame -> last frame", "mean abs error (0-255)")]["model"] == 0.0
    assert by[("scene graph -> RGB", "named colours shown")]["model"] == 1.0
    assert by[("caption -> table", "objects agree (F1)")]["model"] == 1.0
    assert by[("table -> caption", "objects agree (F1)")]["model"] == 1.0
    text = format_table(table)
    assert "RGB -> normals" in text and "!" not in text.splitlines()[3]

    wrong = evaluate(_Oracle(samples, shuffle=True), _lossless_tokenizers(), scenes, samples=8, progress=False)
    worse = {(r["task"], r["metric"]): r for r in wrong["rows"]}
    assert worse[("RGB -> depth", "abs rel")]["model"] > 0
    assert worse[("caption -> image retrieval", "recall@1")]["model"] == 0.0
    assert not math.isnan(worse[("RGB -> caption", "colour + shape named right")]["model"])
    assert worse[("speech -> caption", "word error rate")]["model"] > 0.2
    assert worse[("RGB -> point cloud", "Chamfer distance (m)")]["model"] > 0.1
    assert worse[("IMU + first frame -> last frame", "PSNR (dB)")]["model"] < 30


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
    # rows whose modalities neither the model nor the corpus has (a run without speech) are no omission
    assert {"speech -> caption", "RGB -> point cloud", "IMU + first frame -> last frame", "RGB -> X-ray",
            "RGB -> thermal", "RGB -> hyperspectral", "scene graph -> RGB", "caption -> table",
            "table -> caption"} <= set(table["absent"])
    assert not set(table["absent"]) & set(table["skipped"])
    assert "not measured" in format_table(table)
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


def test_rows_beyond_vision_run_on_a_real_pipeline(omni_scenes):
    """The three rows through a nano FourM and tiny untrained tokenizers: the raw clips, clouds and IMU
    series are tokenized by the pipeline, and the video is generated around its given first frame."""
    from fourm.eval.evaluate import PipelineGenerator
    from fourm.generation import Pipeline
    from fourm.modalities import ModalityScale
    from fourm.model.sizes import create_model
    from fourm.tokenization.point_vqvae import PointVQVAE, PointVQVAEConfig
    from fourm.tokenization.series_vqvae import SeriesVQVAE, SeriesVQVAEConfig
    from fourm.tokenization.speech_vqvae import SpeechVQVAE, SpeechVQVAEConfig
    from fourm.tokenization.text import SequenceTokenizer, TextConfig, build_vocabulary, new_tokenizer, reserved_tokens
    from fourm.tokenization.video import VideoTokenizer
    from fourm.tokenization.vqvae import ImageVQConfig, ImageVQVAE

    torch.manual_seed(0)
    vq = dict(codebook_size=16, codebook_dim=4, use_kmeans_init=False)
    image = dict(image_size=64, patch_size=16, dim=16, encoder_depth=1, decoder_depth=1, heads=2, codebook_size=16,
                 codebook_dim=4)
    words = ["a", "small", "large", "red", "blue", "green", "cube", "sphere", "cone", "cylinder", "of", "the"]
    tokenizers = {
        "tok_rgb": ImageVQVAE(ImageVQConfig(**image)),
        "caption": SequenceTokenizer(TextConfig("caption", 4608, num_mask_codes=8, num_pose_codes=8),
                                     new_tokenizer(build_vocabulary(words, 4608, 8, 8), reserved_tokens(8, 8))),
        "tok_speech": SpeechVQVAE(SpeechVQVAEConfig(max_samples=12_800, dim=16, depth=1, **vq)),
        "tok_point_cloud": PointVQVAE(PointVQVAEConfig(num_points=128, num_groups=8, group_size=16, grid_size=4,
                                                       dim=16, **vq)),
        "tok_imu": SeriesVQVAE(SeriesVQVAEConfig(dim=16, depth=1, **vq)),
        "tok_video": VideoTokenizer.wrap(ImageVQVAE(ImageVQConfig(**image))),  # 8 frames of 4 x 4 tokens
    }
    tokenizers = {n: t.eval() if isinstance(t, torch.nn.Module) else t for n, t in tokenizers.items()}
    sized = {n: t for n, t in tokenizers.items() if n != "caption"}
    scale = ModalityScale(64, 16, vocab_sizes={"caption": 4608} | {n: t.vocab_size for n, t in sized.items()})
    model = create_model("nano", list(tokenizers), scale,
                         max_tokens={"caption": 48} | {n: t.num_tokens for n, t in sized.items()})
    made = []

    class Recording(PipelineGenerator):
        def generate(self, conditions, targets, seed=0, **settings):
            out = super().generate(conditions, targets, seed, **settings)
            made.append((conditions, out))
            return out

    generator = Recording(Pipeline(model.eval(), tokenizers), batch_size=4, steps=1, temperature=0.0)
    names = ["speech -> caption", "RGB -> point cloud", "IMU + first frame -> last frame"]
    table = evaluate(generator, tokenizers, omni_scenes, samples=4, tasks=names, draws=1, progress=False)
    assert [r["task"] for r in table["rows"]] == [names[0], *[names[1]] * 2, *[names[2]] * 2]
    assert all(math.isfinite(r[k]) for r in table["rows"] for k in ("model", "baseline", "upper"))
    conditions, out = made[-1]
    assert set(conditions) == {"tok_imu", "tok_video"}
    videos = [np.asarray(v) for v in out["tok_video"]]
    first = tokenizers["tok_video"].decode(np.asarray(conditions["tok_video"]).clip(min=0))
    for video, given in zip(videos, first, strict=True):  # the given first frame is kept, the others generated
        np.testing.assert_array_equal(video[0], given[0])


def test_a_table_of_an_approximate_encoder_says_so_in_its_title():
    table = {"samples": 3, "rows": [], "skipped": {}, "absent": {}, "steps": 8, "encode_every": 4}
    assert format_table(table).splitlines()[0].endswith("encoding the target whole every 4 steps (approximate)")
    assert "approximate" not in format_table({**table, "encode_every": 1})
