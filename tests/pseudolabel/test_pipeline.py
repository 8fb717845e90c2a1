"""The pipeline end to end on the scene source: alignment, resume after a kill, workers, refusal."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fourm.data.corpus import CorpusReader, record_path
from pseudolabel.pipeline import PseudolabelConfig, plan_labellers, run_pipeline


def corpus_bytes(root: Path) -> dict[str, bytes]:
    """Every file of a corpus except the temporary ones, by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".tmp" not in p.name}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: scenes:24 in shards of 4, every default labeller."""
    out = tmp_path_factory.mktemp("ref") / "corpus"
    cfg = PseudolabelConfig(source="scenes:24", out=str(out), shard_size=4, batch_size=4)
    return cfg, run_pipeline(cfg, progress=False)


def test_scenes_corpus_is_aligned_and_complete(reference):
    cfg, manifest = reference
    assert manifest["complete"] and manifest["num_samples"] == 24 and manifest["num_shards"] == 6
    modalities = set(manifest["modalities"])
    assert {"rgb", "depth", "normal", "semseg", "sam_instance", "det", "caption", "human_poses",
            "canny_edge", "sam_edge", "color_palette", "metadata", "t5_caption", "caption_global"} <= modalities
    # ground truth takes the labellers' place
    assert manifest["modalities"]["depth"]["labeller"] == "source"
    assert manifest["modalities"]["sam_edge"]["labeller"] == "sam_edge"
    assert manifest["classes"]["semseg"][:2] == ["background", "ground"]
    reader = CorpusReader(cfg.out)
    samples = list(reader)
    assert len(samples) == 24 and reader.skipped.total == 0
    assert all(set(s) == {"__key__", *modalities} for s in samples)
    assert samples[3]["metadata"]["caption_words"] == len(samples[3]["caption"].split())


def test_second_run_is_a_no_op(reference):
    cfg, manifest = reference
    before = {p: p.stat().st_mtime_ns for p in Path(cfg.out).rglob("*.tar")}
    assert run_pipeline(cfg, progress=False) == manifest
    assert {p: p.stat().st_mtime_ns for p in Path(cfg.out).rglob("*.tar")} == before


def test_killed_run_resumes_to_the_same_corpus(reference, tmp_path):
    cfg, _ = reference
    out = tmp_path / "corpus"
    cmd = [sys.executable, "-m", "fourm.cli", "pseudolabel", "--source", "scenes:24", "--out", str(out),
           "--shard-size", "4", "batch_size=4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not record_path(out, 1).exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not record_path(out, 5).exists(), "the run finished before it could be killed"
    # also leave a shard half-written: its tar is there, its record is not
    record_path(out, 2).unlink(missing_ok=True)
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert corpus_bytes(out) == corpus_bytes(Path(cfg.out))


def test_workers_write_the_same_corpus(reference, tmp_path):
    cfg, _ = reference
    out = tmp_path / "corpus"
    run_pipeline(PseudolabelConfig(source="scenes:24", out=str(out), shard_size=4, batch_size=4, workers=2),
                 progress=False)
    assert corpus_bytes(out) == corpus_bytes(Path(cfg.out))


def test_ranks_take_disjoint_shards(tmp_path):
    out = str(tmp_path / "corpus")
    common = dict(source="scenes:12", out=out, shard_size=4, labellers=[], world_size=2)
    first = run_pipeline(PseudolabelConfig(**common, rank=0), progress=False)
    assert first["num_shards"] == 2 and not first["complete"]
    assert sorted(p.name for p in Path(out, ".shards").glob("shard-*")) == ["shard-000000.json", "shard-000002.json"]
    second = run_pipeline(PseudolabelConfig(**common, rank=1), progress=False)
    assert second["complete"] and second["num_samples"] == 12


def test_other_settings_in_the_same_folder_are_refused(reference):
    cfg, _ = reference
    other = PseudolabelConfig(source="scenes:24", out=cfg.out, shard_size=8)
    with pytest.raises(ValueError, match="other settings.*shard_size"):
        run_pipeline(other, progress=False)


def test_labeller_planning():
    scenes = ("rgb", "depth", "normal", "semseg", "sam_instance", "det", "caption", "human_poses")
    names = [lab.name for lab in plan_labellers(scenes, None, {})]
    assert "normal" not in names and "sam_instance" not in names, "ground truth replaces labellers"
    assert names.index("sam_edge") < names.index("metadata")
    names = [lab.name for lab in plan_labellers(("rgb",), None, {})]
    assert names.index("sam_instance") < names.index("sam_edge") and "text_embedding" not in names
    with pytest.raises(ValueError, match="'depth' cannot run"):
        plan_labellers(("rgb",), ["depth"], {})
    with pytest.raises(ValueError, match="'normal' needs depth"):
        plan_labellers(("rgb",), ["normal"], {})
    with pytest.raises(LookupError, match="unknown labeller 'dpeth'"):
        plan_labellers(("rgb",), None, {"dpeth": {}})


def test_cli_errors_are_one_line(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-m", "fourm.cli", "pseudolabel", "--source", "scenes:4",
                             "--out", str(tmp_path), "--labellers", "canny,metadata"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "unknown labeller 'canny'" in result.stderr
    assert "canny_edge" in result.stderr


def test_show_renders_a_sample(reference, tmp_path):
    from PIL import Image

    from fourm.cli import main

    cfg, manifest = reference
    out = tmp_path / "s.png"
    assert main(["show", cfg.out, "--index", "5", "--out", str(out)]) == 0
    with Image.open(out) as image:
        assert image.width > 192 * 3 and image.height > 192 * 3
