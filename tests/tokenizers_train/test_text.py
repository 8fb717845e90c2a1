"""The wordpiece family: learns the shared vocabulary from a scenes corpus, one folder per modality."""

import json
from pathlib import Path

import pytest

from fourm.config import ConfigError
from fourm.tokenization.base import load_tokenizers
from fourm.tokenization.text import SequenceTokenizer
from pseudolabel.pipeline import PseudolabelConfig, run_pipeline
from tokenizers_train import train_tokenizer
from tokenizers_train.text import Config, learn_pieces

CONFIG = Path(__file__).parents[2] / "configs" / "tokenizers" / "text.yaml"
SEQUENCES = {"caption", "det", "color_palette", "metadata", "sam_instance", "human_poses"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    run_pipeline(PseudolabelConfig(source="scenes:8", out=str(out), shard_size=8,
                                   labellers=["color_palette", "metadata"]), progress=False)
    return out


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizers")
    stats = train_tokenizer(CONFIG, str(corpus), out, ["min_frequency=1"], progress=False)
    return out, stats


def test_one_folder_per_sequence_modality_sharing_the_vocabulary(trained):
    out, stats = trained
    toks = load_tokenizers(out)
    assert set(toks) == SEQUENCES and all(isinstance(t, SequenceTokenizer) for t in toks.values())
    files = {(out / m / "tokenizer.json").read_bytes() for m in SEQUENCES}
    assert len(files) == 1  # the same vocabulary everywhere
    caption = toks["caption"]
    assert caption.vocab_size == stats["vocab_size"] == 8192
    for word in ("cylinder", "sphere", "checkered", "behind"):  # scene words are learned whole
        assert caption.encode([word])[0] == [caption.token_to_id(word), caption.eos_id]
    assert toks["sam_instance"].config.image_size == 64  # the corpus's image size
    assert json.loads((out / "wordpiece_stats.json").read_text()) == stats


def test_stats_show_exact_round_trips(trained):
    _, stats = trained
    assert stats["caption"]["exact"] == 1.0 and stats["color_palette"]["exact"] == 1.0
    assert stats["det"]["max_box_error"] <= 1e-3
    assert stats["sam_instance"]["mean_iou"] > 0.9
    for m in SEQUENCES:
        assert stats[m]["samples"] == 8 and stats[m]["truncated"] == 0 and stats[m]["max_tokens"] >= 1
    assert stats["metadata"]["mean_tokens"] == 2 * 19 + 1  # every field of the labeller, plus [EOS]


def test_box_bins_reach_the_saved_tokenizers(corpus, tmp_path):
    stats = train_tokenizer(CONFIG, str(corpus), tmp_path, ["min_frequency=1", "box_bins=64", "modalities=[det]"],
                            progress=False)
    assert load_tokenizers(tmp_path)["det"].config.box_bins == 64
    assert 1e-3 < stats["det"]["max_box_error"] <= 0.5 / 63 + 1e-6


def test_learned_pieces_are_words_and_pieces_without_reserved_tokens():
    texts = ["a red cube", "a red cube", "a blue sphere", "Ein Würfel"] * 5
    pieces = learn_pieces(texts, Config(min_frequency=1))
    assert {"cube", "sphere", "wurfel", "##u"} <= set(pieces)
    assert not {"v0=0", "[EOS]", "[S_0]", "brightness"} & set(pieces)


def test_training_is_repeatable():
    # ties between equally frequent merges (huggingface/tokenizers#1794): without fixed ids for the
    # ## characters every run of this learns a different vocabulary
    texts = ["Wel come to the Tok en izers libr ary.", "a b c ab bc ca cab abc naive cafe zurich"] * 3
    runs = {tuple(learn_pieces(texts, Config(min_frequency=1))) for _ in range(4)}
    assert len(runs) == 1


def test_config_errors(corpus, tmp_path):
    with pytest.raises(ConfigError, match="nope"):
        train_tokenizer(CONFIG, str(corpus), tmp_path, ["nope=1"], progress=False)
    with pytest.raises(ValueError, match="no sequence series"):
        train_tokenizer(CONFIG, str(corpus), tmp_path, ["modalities=[tok_rgb]"], progress=False)


def test_scene_graphs_and_tables_round_trip_exactly(tmp_path):
    corpus = tmp_path / "corpus"
    run_pipeline(PseudolabelConfig(source="scenes:12", out=str(corpus), shard_size=12, labellers=[],
                                   series=["scene_graph", "table"]), progress=False)
    stats = train_tokenizer(CONFIG, str(corpus), tmp_path / "tok", ["min_frequency=1",
                                                                     "modalities=[caption,scene_graph,table]"],
                            progress=False)
    assert stats["scene_graph"]["exact"] == 1.0
    assert stats["table"]["exact_within_bins"] == 1.0 and stats["table"]["max_error_levels"] <= 0.5 + 1e-4
    toks = load_tokenizers(tmp_path / "tok")
    assert toks["table"].config.table_columns[3] == ["x", [-3.0, 3.0]]  # the scenes' schema
    graph = toks["scene_graph"]
    for word in ("cylinder", "front"):  # node and relation words are learned whole
        assert graph.token_to_id(word) is not None


def test_a_csv_table_gets_a_schema_read_from_it(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("key,kind,speed\na,car,10\na,bus,2.5\nb,tram,40\n")
    corpus = tmp_path / "corpus"
    run_pipeline(PseudolabelConfig(source=f"csv:{path}", out=str(corpus)), progress=False)
    stats = train_tokenizer(CONFIG, str(corpus), tmp_path / "tok", ["min_frequency=1", "table_bins=38"],
                            progress=False)
    table = load_tokenizers(tmp_path / "tok")["table"]
    assert table.config.table_columns == [["kind", None], ["speed", [2.5, 40.0]]]
    assert stats["table"]["exact_within_bins"] == 1.0
    assert table.decode(table.encode([[{"kind": "Bus", "speed": 3.5}]])) == [[{"kind": "bus", "speed": 3.513514}]]
