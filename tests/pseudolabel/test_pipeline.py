"""The pipeline end to end on the scene source: alignment, resume after a kill, workers, refusal."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fourm.data.corpus import MODEL_RTOL, CorpusReader, compare_corpora, read_manifest, record_path, write_shard
from fourm.modalities import Storage
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
    assert compare_corpora(cfg.out, out) == []


@pytest.mark.parametrize("change", [{"workers": 2}, {"batch_size": 3}])
def test_workers_and_batches_write_the_same_corpus(reference, tmp_path, change):
    """Exact series byte for byte; MiniLM's vectors within the model tolerance, since workers change the
    thread count and batches the padding, and both move a network's last bits on some CPUs."""
    cfg, _ = reference
    out = tmp_path / "corpus"
    run_pipeline(PseudolabelConfig(**{**dict(source="scenes:24", out=str(out), shard_size=4, batch_size=4), **change}),
                 progress=False)
    assert compare_corpora(cfg.out, out) == []
    series = read_manifest(out)["modalities"]
    assert {m for m, e in series.items() if not e["exact"]} == {"t5_caption", "caption_global"}
    ours, theirs = corpus_bytes(out), corpus_bytes(Path(cfg.out))
    assert all(ours[p] == theirs[p] for p in ours if series.get(p.split("/")[0], {}).get("exact", True))


def _rewrite_first_value(root: Path, modality: str, change) -> None:
    """Shard 0 of ``modality`` again, with its first value replaced by ``change(value)``."""
    storage = Storage(**read_manifest(root)["modalities"][modality]["storage"])
    samples = [{"__key__": s["__key__"], modality: s[modality]} for s in CorpusReader(root, modality).shard(0)]
    samples[0][modality] = change(samples[0][modality])
    record = record_path(root, 0).read_bytes()
    write_shard(root, 0, samples, {modality: storage})
    record_path(root, 0).write_bytes(record)  # the record as it was: only the tar changed


def test_compare_corpora_holds_models_to_the_tolerance_and_the_rest_to_the_bit(reference, tmp_path):
    cfg, _ = reference
    copy = lambda name: shutil.copytree(cfg.out, tmp_path / name)  # noqa: E731
    one_step = copy("one_step")  # one half-precision step on one value: within the tolerance
    _rewrite_first_value(one_step, "caption_global",
                         lambda v: np.nextafter(v, np.float16(1), dtype=np.float16))
    assert compare_corpora(cfg.out, one_step) == []
    moved = copy("moved")  # a model value 1% off: beyond it
    _rewrite_first_value(moved, "caption_global", lambda v: (v.astype(np.float32) * (1 + 5 * MODEL_RTOL)))
    assert [p.split(": ")[-1] for p in compare_corpora(cfg.out, moved)] == \
        ["scene-00000000 differs beyond the model tolerance"]
    pixel = copy("pixel")  # one pixel of an exact series: a difference
    _rewrite_first_value(pixel, "rgb", lambda v: np.where(np.arange(v.size).reshape(v.shape) == 0, v ^ 1, v))
    assert compare_corpora(cfg.out, pixel) == ["rgb/shard-000000.tar differs (an exact series: its bytes must match)"]
    (pixel / "depth" / "shard-000001.tar").unlink()
    assert f"only in {cfg.out}: depth/shard-000001.tar" in compare_corpora(cfg.out, pixel)


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
