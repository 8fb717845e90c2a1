"""Bad input to the pseudolabel pipeline: clear one-line errors that change nothing, and damaged or
unusual data that is labelled as far as it can be, with what could not be done recorded."""

import hashlib
import importlib.util
import io
import logging
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fourm.cli import main
from fourm.data.corpus import CorpusReader, read_manifest
from pseudolabel.pipeline import PseudolabelConfig, plan_labellers, run_pipeline
from pseudolabel.sources.base import Skipped, parse_source

FAST = ["--image-size", "16", "labellers=[]"]  # the CLI's way to ask for no labeller


def folder_image(path: Path, array: np.ndarray, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)
    return path


def only_sample(root: Path) -> dict:
    items = list(parse_source(f"folder:{root}", image_size=None).shard(0, 10))
    assert len(items) == 1 and not isinstance(items[0], Skipped), items
    return items[0]


# ----------------------------------------------------------------------------- high bit depth
def test_16_bit_grey_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    grey = np.linspace(0, 65535, 16 * 24).round().astype(np.uint16).reshape(16, 24)
    path = folder_image(tmp_path / "photos" / "g16.png", grey)
    with Image.open(path) as image:
        assert image.mode.startswith("I"), image.mode  # the case: Pillow reads it as 16-bit grey
    rgb = only_sample(tmp_path / "photos")["rgb"]
    expected = np.round(grey / 257).astype(np.uint8)
    assert rgb.dtype == np.uint8 and rgb.shape == (16, 24, 3)
    assert np.array_equal(rgb, np.repeat(expected[..., None], 3, axis=2))
    assert rgb.min() == 0 and rgb.max() == 255 and len(np.unique(rgb)) > 200  # the gradient, not white


@pytest.mark.parametrize("values, expected", [
    (np.linspace(0.0, 1.0, 64), np.linspace(0.0, 255.0, 64)),  # [0, 1]: times 255
    (np.linspace(2.0, 12.0, 64), np.linspace(0.0, 255.0, 64)),  # any other range: stretched min..max
])
def test_float_tiff_is_scaled_by_its_range(tmp_path, values, expected):
    path = folder_image(tmp_path / "photos" / "f.tif", values.astype(np.float32).reshape(8, 8), "TIFF")
    with Image.open(path) as image:
        assert image.mode == "F"
    rgb = only_sample(tmp_path / "photos")["rgb"]
    assert np.array_equal(rgb[..., 0].ravel(), np.round(expected).astype(np.uint8))
    assert np.array_equal(rgb[..., 0], rgb[..., 2])


# ----------------------------------------------------------------------------- labellers that cannot run
def pipeline_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("pseudolabel")]


def test_default_labellers_on_photos_keep_metadata_and_report_what_cannot_run(tmp_path, caplog):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        folder_image(tmp_path / "photos" / f"{name}.png", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    cfg = PseudolabelConfig(source=f"folder:{tmp_path / 'photos'}", out=str(tmp_path / "c"), image_size=16)
    with caplog.at_level(logging.WARNING, logger="pseudolabel"):
        manifest = run_pipeline(cfg, progress=False)
    assert "metadata" in manifest["modalities"]
    fields = CorpusReader(cfg.out, "metadata").head(1)[0]["metadata"]
    assert fields["original_width"] == 30 and "num_sam_instances" in fields  # what its inputs allow
    assert not {"geometric_complexity", "occlusion_score", "caption_words"} & set(fields)  # no depth, normals, captions
    assert set(manifest["not_run"]) == {"normal", "text_embedding"}
    assert manifest["not_run"]["normal"].startswith("needs depth")
    assert manifest["not_run"]["text_embedding"].startswith("needs caption")
    warned = pipeline_warnings(caplog)
    assert sorted(warned) == [f"default labeller {n} not run: {manifest['not_run'][n]}"
                              for n in ("normal", "text_embedding")]


def test_metadata_is_planned_after_what_it_uses_when_normals_cannot_be_made():
    not_run = {}
    names = [lab.name for lab in plan_labellers(("rgb",), None, {}, not_run)]
    assert names.index("sam_instance") < names.index("metadata")
    assert "normal" not in names and "needs depth" in not_run["normal"]


def test_labeller_order_does_not_follow_the_import_order(monkeypatch):
    """Importing one labeller module early (test_metadata.py does) once put it first in every plan,
    so a plan.json written in that process refused a resume from a fresh one."""
    from pseudolabel import registry

    before = [lab.name for lab in plan_labellers(("rgb",), None, {})]
    monkeypatch.setitem(registry._TABLES, "labeller", dict(reversed(registry._TABLES["labeller"].items())))
    assert [lab.name for lab in plan_labellers(("rgb",), None, {})] == before
    assert before[:2] == ["canny_edge", "sam_instance"]  # pseudolabel.labellers.classical comes first


def test_default_labeller_without_its_package_is_reported_once_with_an_install_hint(tmp_path, caplog,
                                                                                      monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sentence_transformers" else find_spec(name, *a))
    cfg = PseudolabelConfig(source="scenes:2", out=str(tmp_path / "c"), image_size=16, shard_size=1)
    with caplog.at_level(logging.WARNING, logger="pseudolabel"):
        manifest = run_pipeline(cfg, progress=False)
    assert manifest["complete"] and "t5_caption" not in manifest["modalities"]
    assert "pip install sentence-transformers" in manifest["not_run"]["text_embedding"]
    warned = pipeline_warnings(caplog)
    assert len(warned) == 1 and "text_embedding" in warned[0] and "pip install sentence-transformers" in warned[0]


# ----------------------------------------------------------------------------- settings
@pytest.mark.parametrize("args, words", [
    (["--source", "scenes:0"], ["scenes:0"]),
    (["--source", "scenes:-3"], ["scenes:-3"]),
    (["--source", "scenes:two"], ["scenes", "'two'"]),
    (["--image-size", "-5"], ["image_size", "-5"]),
    (["--image-size", "0"], ["image_size", "not 0"]),
    (["--shard-size", "0"], ["shard_size", "not 0"]),
    (["--workers", "0"], ["workers", "not 0"]),
    (["batch_size=-2"], ["batch_size", "-2"]),
    (["seed=-1"], ["seed", "-1"]),
])
def test_bad_settings_are_refused_before_a_plan_is_written(tmp_path, capsys, args, words):
    out = tmp_path / "c"
    assert main(["pseudolabel", "--source", "scenes:2", "--out", str(out), *FAST, *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fourm pseudolabel: error: "), lines
    assert all(word in lines[0] for word in words), lines[0]
    assert not (out / ".shards" / "plan.json").exists()
    assert main(["pseudolabel", "--source", "scenes:2", "--out", str(out), *FAST]) == 0  # the corrected run
    assert read_manifest(out)["num_samples"] == 2


@pytest.mark.parametrize("below", [False, True])
def test_out_that_is_a_file_is_refused_and_left_unchanged(tmp_path, capsys, below):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me\n")
    before = hashlib.sha256(existing.read_bytes()).hexdigest()
    out = existing / "corpus" if below else existing
    with pytest.raises(ValueError, match=f"{re.escape(repr(str(existing)))} is an existing file"):
        run_pipeline(PseudolabelConfig(source="scenes:2", out=str(out), labellers=[]), progress=False)
    assert main(["pseudolabel", "--source", "scenes:2", "--out", str(out), *FAST]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fourm pseudolabel: error: ") and str(existing) in lines[0]
    assert hashlib.sha256(existing.read_bytes()).hexdigest() == before


# ----------------------------------------------------------------------------- damaged webdataset shards
def write_shard(path: Path, samples: int, seed: int) -> list[tarfile.TarInfo]:
    """A webdataset shard of ``samples`` jpg + txt pairs; returns its members (with their offsets)."""
    import webdataset as wds

    rng = np.random.default_rng(seed)
    with wds.TarWriter(str(path), encoder=False) as tar:
        for j in range(samples):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(buf, format="JPEG")
            tar.write({"__key__": f"img{j}", "jpg": buf.getvalue(), "txt": f"caption {seed} {j}".encode()})
    with tarfile.open(path) as tar:
        return tar.getmembers()


def cut(path: Path, at: int) -> None:
    path.write_bytes(path.read_bytes()[:at])


def damaged_run(tmp_path: Path, cuts: list) -> dict:
    """One shard of three samples per entry of ``cuts``: ``None`` leaves it whole, a function of its
    members gives the byte offset to cut it at."""
    for i, at in enumerate(cuts):
        members = write_shard(tmp_path / f"in-{i:02d}.tar", 3, i)
        if at is not None:
            cut(tmp_path / f"in-{i:02d}.tar", at(members))
    cfg = PseudolabelConfig(source=f"wds:{tmp_path}/in-*.tar", out=str(tmp_path / "c"), image_size=8, labellers=[])
    manifest = run_pipeline(cfg, progress=False)
    assert manifest["complete"] and manifest["num_shards"] == len(cuts)
    assert set(manifest["modalities"]) == {"rgb", "caption"}
    return manifest


def second_jpg(members: list[tarfile.TarInfo]) -> tarfile.TarInfo:
    return next(m for m in members if m.name == "img1.jpg")


def test_shards_cut_inside_a_member_lose_only_what_follows_the_cut(tmp_path):
    manifest = damaged_run(tmp_path, [
        lambda ms: ms[0].offset_data + 10,  # inside the first member of the first shard, which the source reads first
        None,
        lambda ms: second_jpg(ms).offset_data + second_jpg(ms).size // 2,  # inside its data
        lambda ms: second_jpg(ms).offset_data + second_jpg(ms).size + 1,  # inside the padding after it
        lambda ms: second_jpg(ms).offset + 100,  # inside its header
    ])
    assert manifest["shard_samples"] == [0, 3, 1, 1, 1]
    # the padding cut keeps img1.jpg whole but loses img1.txt: that sample goes as "no caption"
    assert manifest["skipped"]["by_reason"] == {"damaged shard": 4, "no caption": 1}
    captions = [s["caption"] for s in CorpusReader(tmp_path / "c", "caption")]
    assert captions == ["caption 1 0", "caption 1 1", "caption 1 2", "caption 2 0", "caption 3 0", "caption 4 0"]


def test_shard_cut_on_a_block_boundary_is_recorded(tmp_path):
    manifest = damaged_run(tmp_path, [None, lambda ms: second_jpg(ms).offset])  # img1's first header block
    assert manifest["shard_samples"] == [3, 1]
    assert manifest["skipped"]["by_reason"] == {"damaged shard": 1}
    (item,) = manifest["skipped"]["items"]
    assert item["item"].endswith("in-01.tar") and "after img0.txt" in item["reason"]
