import io

import numpy as np
import pytest
from PIL import Image

from fourm.data.corpus import CorpusReader
from pseudolabel.pipeline import PseudolabelConfig, run_pipeline
from pseudolabel.sources.base import Skipped, parse_source


def image_bytes(fmt: str, seed: int, size=(40, 30)) -> bytes:
    array = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(image_bytes("PNG", 0))
    (root / "sub" / "b.v2.jpg").write_bytes(image_bytes("JPEG", 1))
    (root / "c.webp").write_bytes(image_bytes("WEBP", 2))
    (root / "broken.jpg").write_bytes(image_bytes("JPEG", 3)[:200])  # truncated mid-image
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    return root


def test_folder_images_are_cropped_and_bad_files_reported(folder):
    src = parse_source(f"folder:{folder}", image_size=16)
    items = list(src.shard(0, 10))
    samples = [s for s in items if not isinstance(s, Skipped)]
    skipped = {s.item: s.reason for s in items if isinstance(s, Skipped)}
    assert len(samples) == 3 and all(s["rgb"].shape == (16, 16, 3) for s in samples)
    assert all("." not in s["__key__"] for s in samples), "webdataset keys may hold no dots"
    assert samples[0]["__size__"] == (40, 30)
    assert skipped["empty.png"] == "empty file"
    assert skipped["broken.jpg"].startswith("unreadable image")


def test_folder_corpus_counts_what_it_skipped(folder, tmp_path):
    cfg = PseudolabelConfig(source=f"folder:{folder}", out=str(tmp_path / "corpus"), shard_size=2,
                            image_size=16, labellers=["canny_edge", "metadata"])
    manifest = run_pipeline(cfg, progress=False)
    assert manifest["num_samples"] == 3 and manifest["complete"]
    assert manifest["skipped"]["count"] == 2
    assert manifest["skipped"]["by_reason"] == {"empty file": 1, "unreadable image": 1}
    samples = list(CorpusReader(cfg.out))
    assert [set(s) for s in samples] == [{"__key__", "rgb", "canny_edge", "metadata"}] * 3
    assert samples[0]["metadata"]["original_width"] == 40


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_source(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no png/jpg/jpeg/bmp/webp/tif/tiff image files"):
        parse_source(f"folder:{tmp_path / 'empty'}")


def test_webdataset_source_with_captions(tmp_path):
    import webdataset as wds

    for shard in range(2):
        with wds.TarWriter(str(tmp_path / f"in-{shard:02d}.tar"), encoder=False) as tar:
            for j in range(3):
                tar.write({"__key__": f"s{shard}/img{j}", "jpg": image_bytes("JPEG", j),
                           "txt": f"caption {shard} {j}".encode()})
    cfg = PseudolabelConfig(source=f"wds:{tmp_path}/in-{{00..01}}.tar", out=str(tmp_path / "c"), image_size=16,
                            labellers=[])
    manifest = run_pipeline(cfg, progress=False)
    assert manifest["num_shards"] == 2 and set(manifest["modalities"]) == {"rgb", "caption"}
    samples = list(CorpusReader(cfg.out))
    assert [s["caption"] for s in samples][:2] == ["caption 0 0", "caption 0 1"]
    assert len({s["__key__"] for s in samples}) == 6


def test_unknown_source():
    with pytest.raises(LookupError, match="unknown source 'photos'.*folder"):
        parse_source("photos:x")
    with pytest.raises(ValueError, match="no argument"):
        parse_source("scenes")
