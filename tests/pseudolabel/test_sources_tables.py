"""The csv source: a CSV keyed by sample becomes a corpus of tables, one sample per key."""

import pytest

from fourm.data.corpus import CorpusReader, read_manifest
from pseudolabel.pipeline import PseudolabelConfig, run_pipeline
from pseudolabel.sources.base import parse_source
from pseudolabel.sources.tables import parse_cell

CSV = (
    "\ufeffscene,name,score,note\n"  # a spreadsheet's byte order mark
    "scene-00000003,cube,1.5,\"big, red\"\n"
    "scene-00000001,cone,-2,\n"
    "scene-00000003,sphere,7,\"two\nlines\"\n"
    ",orphan,1,no key\n"
    "odd key.v2,ball,nan,x\n"
)


@pytest.fixture
def csv_file(tmp_path):
    path = tmp_path / "objects.csv"
    path.write_text(CSV, encoding="utf-8")
    return path


def test_rows_group_by_key_in_order_first_seen(csv_file, tmp_path):
    out = tmp_path / "corpus"
    run_pipeline(PseudolabelConfig(source=f"csv:{csv_file}", out=str(out), shard_size=2), progress=False)
    manifest = read_manifest(out)
    assert list(manifest["modalities"]) == ["table"] and manifest["num_samples"] == 3
    assert "no value in key column 'scene'" in str(manifest["skipped"])  # the orphan row, reported
    samples = {s["__key__"]: s["table"] for s in CorpusReader(out)}
    assert list(samples) == ["scene-00000003", "scene-00000001", "odd_key_v2"]  # keys kept, made webdataset-safe
    assert samples["scene-00000003"] == [{"name": "cube", "score": 1.5, "note": "big, red"},
                                         {"name": "sphere", "score": 7, "note": "two\nlines"}]
    assert samples["scene-00000001"] == [{"name": "cone", "score": -2}]  # an empty cell is left out
    assert samples["odd_key_v2"] == [{"name": "ball", "score": "nan", "note": "x"}]  # nan is no number


def test_key_column_by_name_and_errors(csv_file):
    source = parse_source(f"csv:{csv_file}@name")
    assert source.key_column == "name" and source.num_samples() == 5
    assert next(source.shard(0, 8))["table"] == [{"scene": "scene-00000003", "score": 1.5, "note": "big, red"}]
    with pytest.raises(ValueError, match="no key column 'nope'; columns: scene, name, score, note"):
        parse_source(f"csv:{csv_file}@nope")
    with pytest.raises(FileNotFoundError, match="no such file"):
        parse_source(f"csv:{csv_file}.missing")
    assert (parse_cell(" 3 "), parse_cell("2.50"), parse_cell("inf"), parse_cell("a b")) == (3, 2.5, "inf", "a b")
