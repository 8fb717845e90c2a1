"""rasters:PATH, aligned image-like series in one folder each, on files the test writes."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from fourm.data.codecs import encode
from fourm.data.corpus import CorpusReader
from fourm.modalities import CORPUS
from pseudolabel.pipeline import PseudolabelConfig, run_pipeline
from pseudolabel.sources.base import Skipped, parse_source


@pytest.fixture
def rasters(tmp_path):
    """Three samples of rgb, thermal, xray and hyperspectral in every format the source reads; sample c lacks
    its X-ray, sample d's thermal is broken."""
    root = tmp_path / "rasters"
    rng = np.random.default_rng(0)
    for series in ("rgb", "thermal", "xray", "hyperspectral"):
        (root / series / "sub").mkdir(parents=True)
    kelvin = rng.uniform(260, 320, (16, 16)).astype(np.float32)
    xray = rng.uniform(0, 3, (16, 16)).astype(np.float32)
    bands = rng.integers(0, 256, (16, 16, 32), dtype=np.uint8)
    for name in ("a", "sub/b", "c", "d"):
        Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(root / "rgb" / f"{name}.png")
    np.save(root / "thermal" / "a.npy", kelvin)
    tifffile.imwrite(root / "thermal" / "sub" / "b.tiff", kelvin)  # float TIFF: kelvin as they are
    (root / "thermal" / "c.png").write_bytes(encode(kelvin, CORPUS["thermal"].storage))  # the corpus' centi-kelvin
    (root / "thermal" / "d.png").write_bytes(b"not a png")
    np.save(root / "xray" / "a.npy", xray)
    (root / "xray" / "sub" / "b.png").write_bytes(encode(xray, CORPUS["xray"].storage))
    np.save(root / "xray" / "d.npy", xray)
    np.save(root / "hyperspectral" / "a.npy", bands)
    tifffile.imwrite(root / "hyperspectral" / "sub" / "b.tif", np.moveaxis(bands, -1, 0))  # bands first
    np.save(root / "hyperspectral" / "c.npy", (bands / 255.0) ** 2)  # linear radiance
    np.save(root / "hyperspectral" / "d.npy", bands)
    return root, kelvin, xray, bands


def test_series_are_matched_by_name_in_corpus_units(rasters):
    root, kelvin, xray, bands = rasters
    src = parse_source(f"rasters:{root}", image_size=None)
    assert src.provides == ("rgb", "xray", "thermal", "hyperspectral") and src.num_samples() == 4
    items = list(src.shard(0, 10))
    samples = {s["__key__"].split("_", 1)[1]: s for s in items if not isinstance(s, Skipped)}
    skipped = {s.item: s.reason for s in items if isinstance(s, Skipped)}
    assert set(samples) == {"a", "sub_b"}
    assert "no xray file" in skipped["c"] and "unreadable thermal file d.png" in skipped["d"]
    a, b = samples["a"], samples["sub_b"]
    assert a["rgb"].shape == (16, 16, 3)  # centre-cropped to a square
    np.testing.assert_array_equal(a["thermal"], kelvin)
    np.testing.assert_array_equal(b["thermal"], kelvin)
    np.testing.assert_allclose(b["xray"], xray, atol=5e-4)  # thousandths, as the corpus stores X-ray
    np.testing.assert_array_equal(a["hyperspectral"], bands)
    np.testing.assert_array_equal(b["hyperspectral"], bands)


def test_a_rasters_corpus_is_resized_and_read_back(rasters, tmp_path):
    root, kelvin, *_ = rasters
    out = tmp_path / "corpus"
    run_pipeline(PseudolabelConfig(source=f"rasters:{root}", out=str(out), image_size=8, labellers=[]),
                 progress=False)
    reader = CorpusReader(out, "rgb,thermal,hyperspectral")
    samples = list(reader)
    assert len(samples) == 2 and samples[0]["hyperspectral"].shape == (8, 8, 32)
    assert samples[0]["thermal"].shape == (8, 8) and abs(samples[0]["thermal"].mean() - kelvin.mean()) < 1.0
    assert reader.manifest["skipped"]


def test_unknown_series_folders_and_loose_files_are_refused(tmp_path):
    (tmp_path / "lidar").mkdir()
    np.save(tmp_path / "lidar" / "a.npy", np.zeros((4, 4)))
    with pytest.raises(ValueError, match="folder 'lidar' is no series this source reads; known: rgb, depth"):
        parse_source(f"rasters:{tmp_path}")
    np.save(tmp_path / "b.npy", np.zeros((4, 4)))
    with pytest.raises(ValueError, match="put each series in a folder"):
        parse_source(f"rasters:{tmp_path}")
