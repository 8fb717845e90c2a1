"""`fourm demo --quick` end to end (slow: about three minutes), and the stage table's caching."""

import json
import subprocess
import sys

import pytest

from fourm.demo import STAGES, load_demo_config


def test_stages_run_in_the_documented_order():
    assert [s.name for s in STAGES] == ["corpus", "tokenizers", "tokenize", "train", "generate", "retrieve",
                                        "evaluate", "report"]


def test_quick_is_overrides_of_the_same_config():
    full, quick = load_demo_config(), load_demo_config(quick=True)
    assert quick.corpus.scenes < full.corpus.scenes and quick.evaluate.samples < full.evaluate.samples
    assert load_demo_config(overrides=["corpus.scenes=7"], quick=True).corpus.scenes == 7  # the user has the last word


@pytest.mark.slow
def test_quick_demo_writes_the_report_with_the_table(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "fourm.cli", "demo", "--quick", "--out", str(out)]
    subprocess.run(cmd, check=True, timeout=900)
    page = (out / "report.html").read_text()
    table = json.loads((out / "evaluation.json").read_text())
    assert table["rows"] and not table["skipped"]
    for row in table["rows"]:
        assert row["task"] in page and f"{row['model']:.3f}" in page
    assert page.count("data:image/png;base64,") >= 6
    again = subprocess.run(cmd, check=True, timeout=300, capture_output=True, text=True).stdout
    assert again.count("reused") == len(STAGES) - 1  # everything but the report comes from the cache
