"""Pipeline and `fourm generate` end to end on a nano FourM with tiny random tokenizers."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fourm.cli import main
from fourm.generation import Pipeline, Target

from .conftest import MODALITIES


@pytest.fixture(scope="module")
def pipe(model_dir, tokenizers_dir):
    return Pipeline.from_pretrained(model_dir, tokenizers_dir)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(path)
    return path


def test_raw_values_become_the_tokenizers_tokens(pipe):
    rgb = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    tokens = pipe.tokenize({"tok_rgb": rgb, "caption": "a red cube", "depth": np.ones((64, 64), np.float32)})
    assert set(tokens) == {"tok_rgb", "caption", "tok_depth"}
    np.testing.assert_array_equal(tokens["tok_rgb"][0], pipe.tokenizers["tok_rgb"].encode([rgb])[0].numpy())
    assert tokens["caption"][0] == pipe.tokenizers["caption"].encode(["a red cube"])[0]
    assert tokens["tok_depth"][0].shape == (16,)  # resized to the model's 32 px before tokenizing
    masked = pipe.tokenize({"caption": "a [MASK] cube [MASK]"})["caption"][0]
    words = pipe.tokenizers["caption"].encode(["a cube"])[0]
    assert masked == [words[0], pipe.specials.sentinels[0], words[1], pipe.specials.sentinels[1], pipe.specials.eos]
    assert pipe.model_keys("rgb") == ["rgb"] and pipe.target_key("rgb") == "tok_rgb"


def test_generate_returns_tokens_and_decoded_values_for_a_batch(pipe):
    rgb = np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    out = pipe.generate({"rgb": rgb}, ["depth", Target("caption", max_tokens=6), "tok_rgb"], seed=0, num_samples=3,
                        steps=3)
    assert list(out) == ["tok_depth", "caption", "tok_rgb"]
    assert out["tok_depth"].tokens.shape == (3, 16) and len(out["tok_depth"].values) == 3
    assert out["tok_depth"].values[0].shape == (32, 32) and out["tok_depth"].values[0].dtype == np.float32
    assert out["tok_rgb"].values[0].dtype == np.uint8 and all(isinstance(c, str) for c in out["caption"].values)
    again = pipe.generate({"rgb": rgb}, ["depth", Target("caption", max_tokens=6), "tok_rgb"], seed=0,
                          num_samples=3, steps=3)
    assert torch.equal(again["tok_rgb"].tokens, out["tok_rgb"].tokens)
    assert again["caption"].tokens == out["caption"].tokens
    chunked = [pipe.generate({"rgb": rgb}, ["depth", Target("caption", max_tokens=6)], seed=0, num_samples=3,
                             batch_size=2, steps=3) for _ in range(2)]
    assert chunked[0]["tok_depth"].tokens.shape == (3, 16) and len(chunked[0]["caption"].values) == 3
    assert torch.equal(chunked[0]["tok_depth"].tokens, chunked[1]["tok_depth"].tokens)
    assert len(chunked[0]["tok_depth"].values) == 3 and chunked[0]["caption"].tokens == chunked[1]["caption"].tokens


def test_partial_token_inputs_and_a_batch_of_different_samples(pipe):
    partial = np.full(16, -1)
    partial[:5] = [1, 2, 3, 4, 5]
    out = pipe.generate([{"tok_rgb": partial, "caption": "a cube"}, {"caption": "a [MASK] sphere"}],
                        ["tok_rgb", "caption"], seed=0)
    assert out["tok_rgb"].tokens[0, :5].tolist() == [1, 2, 3, 4, 5]
    assert out["caption"].tokens[0] == pipe.tokenizers["caption"].encode(["a cube"])[0]  # given whole: kept
    assert out["caption"].values[1].startswith("a ") and out["caption"].values[1].endswith("sphere")
    weighed = pipe.generate({"rgb": np.zeros((32, 32, 3), np.uint8), "caption": "a cube"},
                            [Target("depth", steps=2, condition_weights={"rgb": 1.5, "caption": 0.5})], seed=0)
    assert weighed["tok_depth"].tokens.shape == (1, 16)


def test_wrong_requests_get_one_clear_error(pipe):
    with pytest.raises(ValueError, match="also fully given"):
        pipe.generate({"caption": "a cube"}, ["caption"])
    with pytest.raises(ValueError, match="unknown modality 'colour'"):
        pipe.generate({"colour": "red"}, ["tok_rgb"])
    with pytest.raises(ValueError, match="does not know modality 'normal'"):
        pipe.generate({"caption": "a cube"}, ["normal"])
    with pytest.raises(ValueError, match="expects 16"):
        pipe.generate({"tok_rgb": np.zeros(9, dtype=np.int64)}, ["caption"])


def test_cli_writes_each_target_in_its_format_and_a_grid(model_dir, tokenizers_dir, photo, tmp_path, capsys):
    out = tmp_path / "gen"
    code = main(["generate", "--model", str(model_dir), "--tokenizers", str(tokenizers_dir),
                 "--input", f"rgb={photo}", "--input", "caption=a red [MASK] on the floor",
                 "--target", "tok_depth,caption,tok_rgb", "--out", str(out), "--steps", "2", "--scheme", "roar",
                 "--temperature-schedule", "cosine", "caption.max_tokens=8", "tok_depth.guidance=1.5"])
    assert code == 0, capsys.readouterr().err
    depth = np.asarray(Image.open(out / "tok_depth.png"))
    assert depth.shape == (32, 32) and depth.dtype.kind in "iu"  # 16-bit millimetres, as the corpus stores it
    assert np.asarray(Image.open(out / "tok_rgb.png").convert("RGB")).shape == (32, 32, 3)
    caption = (out / "caption.txt").read_text()
    assert caption.startswith("a red ") and caption.endswith("on the floor")
    tokens = json.loads((out / "tokens.json").read_text())
    assert len(tokens["tok_depth"][0]) == 16
    grid = Image.open(out / "grid.png")
    assert grid.width > 5 * 192 and grid.height > 192  # 2 inputs + 3 targets side by side


def test_a_default_temperature_schedule_applies_to_images_and_captions_keep_theirs(pipe):
    from fourm.generation import build_schedule
    from fourm.generation.output import parse_targets

    targets = parse_targets(pipe, ["tok_depth", "caption"], None, ["caption.temperature=0.5"],
                            {"temperature_schedule": "cosine", "scheme": None})
    depth, caption = build_schedule(targets, pipe.specs)
    assert (depth.scheme, depth.temperature_schedule) == ("maskgit", "cosine")
    assert (caption.scheme, caption.temperature_schedule, caption.temperature) == ("ar", "constant", 0.5)
    (depth,) = build_schedule(parse_targets(pipe, ["tok_depth"], None, [], {}), pipe.specs)
    assert depth.temperature_schedule == "linear"


def test_cli_encode_every_reaches_each_parallel_target(model_dir, tokenizers_dir, tmp_path, capsys, monkeypatch):
    from fourm.model.fourm import FourM

    calls = []  # per encode_step: the input tokens it encodes
    real = FourM.encode_step

    def spy(self, cache, batch):
        calls.append(batch)
        return real(self, cache, batch)

    monkeypatch.setattr(FourM, "encode_step", spy)
    code = main(["generate", "--model", str(model_dir), "--tokenizers", str(tokenizers_dir), "--input",
                 "caption=a cube", "--target", "tok_rgb,tok_depth", "--out", str(tmp_path / "o"), "--steps", "4",
                 "--encode-every", "2", "tok_depth.encode_every=1"])
    assert code == 0, capsys.readouterr().err
    # tok_rgb: whole inputs at steps 0 and 2, its decided tokens and the caption at 1 and 3 (a tok_rgb token only
    # where the step before decided it); tok_depth encodes whole every step, without the cache
    names = MODALITIES.split(",")
    tok_rgb, caption = names.index("tok_rgb"), names.index("caption")
    assert len(calls) == 4
    for step in (1, 3):
        valid = calls[step].enc_valid
        assert sorted(calls[step].enc_mod[valid].unique().tolist()) == sorted([tok_rgb, caption])
    rgb = [int((c.enc_mod[c.enc_valid] == tok_rgb).sum()) for c in calls]
    assert rgb[0] == 0 and 0 < rgb[1] < rgb[2] and rgb[3] > 0  # step 2 holds steps 0 and 1's decisions, 1 only 0's


def test_cli_schedule_file_and_several_samples(model_dir, tokenizers_dir, photo, tmp_path, capsys):
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text("targets:\n  - {modality: depth, scheme: roar, steps: 2}\n"
                        "  - {modality: caption, max_tokens: 4}\n")
    out = tmp_path / "gen"
    code = main(["generate", "--model", str(model_dir), "--tokenizers", str(tokenizers_dir), "--input",
                 f"tok_rgb={photo}", "--schedule", str(schedule), "--out", str(out), "--num-samples", "2"])
    assert code == 0, capsys.readouterr().err
    assert (out / "000" / "tok_depth.png").is_file() and (out / "001" / "caption.txt").is_file()


@pytest.mark.parametrize("args,message", [
    (["--input", "colour=red", "--target", "caption"], "unknown modality 'colour'"),
    (["--input", "depth=/no/such/file.png", "--target", "caption"],
     "--input depth: '/no/such/file.png' is not a readable file"),
    (["--input", "caption=a cube", "--target", "caption"], "also fully given"),
    (["--input", "normal=PHOTO", "--target", "caption"], "the model does not know modality 'normal'"),
    (["--input", "caption=a cube", "--target", "tok_normal"], "the model does not know modality 'tok_normal'"),
    (["--input", "caption=a cube", "--target", "tok_rgb", "--steps", "0"], "steps must be >= 1"),
    (["--input", "caption=a cube", "--target", "tok_rgb", "--encode-every", "0"], "encode_every must be >= 1, not 0"),
    (["--input", "caption=a cube", "--target", "tok_rgb", "--temperature-schedule", "warm"],
     "unknown temperature schedule 'warm'"),
    (["--input", "caption=a cube", "--target", "tok_rgb", "tok_depth.steps=2"], "not targets"),
])
def test_cli_errors_are_one_line(model_dir, tokenizers_dir, photo, tmp_path, capsys, args, message):
    args = [a.replace("PHOTO", str(photo)) for a in args]
    code = main(["generate", "--model", str(model_dir), "--tokenizers", str(tokenizers_dir), "--out",
                 str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_scene_graphs_and_tables_are_conditions_and_targets():
    """A nano model over caption, scene_graph and table: a graph or table given as its value is tokenized (a
    list of row dicts is not read as ids), and generated ones decode to graphs and row lists."""
    from fourm.modalities import ModalityScale
    from fourm.model.sizes import create_model
    from fourm.tokenization.text import SequenceTokenizer, TextConfig, build_vocabulary, new_tokenizer, reserved_tokens

    size, codes = 4608, 8  # conftest's vocabulary
    words = build_vocabulary(["a", "small", "red", "cube"], size, codes, codes)
    vocab = new_tokenizer(words, reserved_tokens(codes, codes))
    toks = {m: SequenceTokenizer(TextConfig(m, size, num_mask_codes=codes, num_pose_codes=codes),
                                 vocab) for m in ("caption", "scene_graph", "table")}
    torch.manual_seed(0)
    model = create_model("nano", "caption,scene_graph,table", ModalityScale(32, 8, vocab_sizes=dict.fromkeys(
        toks, size)), max_tokens=dict.fromkeys(toks, 24)).eval()
    pipe = Pipeline(model, toks)
    graph = {"nodes": [{"size": "small", "colour": "red", "class": "cube"}], "edges": []}
    table = [{"class": "cube", "colour": "red", "size": "small", "x": 0.5}]
    tokens = pipe.tokenize({"scene_graph": graph, "table": table})
    assert tokens["table"][0] == toks["table"].encode([table])[0]
    assert tokens["scene_graph"][0] == toks["scene_graph"].encode([graph])[0]
    out = pipe.generate({"table": table}, ["scene_graph", "caption"], seed=0, num_samples=2)
    assert all(isinstance(g, dict) and set(g) == {"nodes", "edges"} for g in out["scene_graph"].values)
    out = pipe.generate({"caption": "a small red cube"}, ["table"], seed=0)
    assert isinstance(out["table"].values[0], list)
