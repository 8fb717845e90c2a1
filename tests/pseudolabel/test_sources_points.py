"""The points:PATH source: .ply, .npy, .xyz and .txt files the test writes, read into the corpus convention."""

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from fourm.data.corpus import CorpusReader
from pseudolabel.pipeline import PseudolabelConfig, run_pipeline
from pseudolabel.sources.base import Skipped, parse_source
from pseudolabel.sources.points import read_points

XYZ = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]])


def write_ply(path, binary: bool):
    vertex = np.array([(*p, 10 * i, 20, 250, i % 2) for i, p in enumerate(XYZ)],
                      dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"),
                             ("blue", "u1"), ("label", "i4")])
    face = np.array([([0, 1, 2],)], dtype=[("vertex_indices", "i4", (3,))])  # a mesh's faces are ignored
    PlyData([PlyElement.describe(vertex, "vertex"), PlyElement.describe(face, "face")], text=not binary).write(path)


@pytest.mark.parametrize("binary", [False, True])
def test_ply_with_colours_and_labels(tmp_path, binary):
    write_ply(tmp_path / "a.ply", binary)
    cloud = read_points(tmp_path / "a.ply")
    assert cloud.dtype == np.float32 and cloud.shape == (5, 7)
    np.testing.assert_array_equal(cloud[:, :3], XYZ)
    assert cloud[:, 3].tolist() == [0, 10, 20, 30, 40] and (cloud[:, 4:6] == [20, 250]).all()
    assert cloud[:, 6].tolist() == [0, 1, 0, 1, 0]


def test_npy_and_text_columns(tmp_path):
    np.save(tmp_path / "b.npy", XYZ)  # xyz only: grey, unlabelled
    cloud = read_points(tmp_path / "b.npy")
    assert (cloud[:, 3:6] == 128).all() and (cloud[:, 6] == -1).all()
    rows = "\n".join(" ".join(map(str, [*p, 0.5, 0.0, 1.0])) for p in XYZ)  # colours as fractions
    (tmp_path / "c.xyz").write_text("# x y z r g b\n" + rows + "\n")
    assert read_points(tmp_path / "c.xyz")[0, 3:6].tolist() == [128, 0, 255]
    (tmp_path / "d.txt").write_text("\n".join(",".join(map(str, [*p, 3])) for p in XYZ))  # xyz + class, commas
    assert (read_points(tmp_path / "d.txt")[:, 6] == 3).all()
    np.save(tmp_path / "e.npy", np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"e.npy: expected one point a row with 3, 4, 6 or 7 columns"):
        read_points(tmp_path / "e.npy")


def test_folder_source_resamples_and_skips_bad_files(tmp_path):
    write_ply(tmp_path / "a.ply", binary=True)
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "sub" / "b.npy", np.random.default_rng(0).normal(size=(40, 3)))
    (tmp_path / "broken.ply").write_bytes(b"ply\nformat nonsense\n")
    (tmp_path / "notes.md").write_text("not a point file")
    source = parse_source(f"points:{tmp_path}", image_size=64, seed=0, num_points=8)
    assert source.provides == ("point_cloud",) and source.num_samples() == 3
    out = list(source.shard(0, 8))
    samples = [s for s in out if not isinstance(s, Skipped)]
    assert [s.item for s in out if isinstance(s, Skipped)] == ["broken.ply"]
    assert [s["point_cloud"].shape for s in samples] == [(8, 7), (8, 7)]
    assert len(np.unique(samples[1]["point_cloud"], axis=0)) == 8  # 40 points: 8 farthest, none twice
    assert len(np.unique(samples[0]["point_cloud"], axis=0)) == 5  # 5 points: all, then repeats
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no ply/npy/xyz/txt point files below"):
        parse_source(f"points:{tmp_path / 'empty'}")


def test_pipeline_writes_a_point_cloud_corpus(tmp_path):
    np.save(tmp_path / "a.npy", XYZ)
    manifest = run_pipeline(PseudolabelConfig(source=f"points:{tmp_path}", out=str(tmp_path / "corpus"),
                                              labellers=[]), progress=False)
    assert list(manifest["modalities"]) == ["point_cloud"]
    cloud = next(iter(CorpusReader(tmp_path / "corpus", ["point_cloud"])))["point_cloud"]
    assert cloud.shape == (1024, 7) and np.array_equal(np.unique(cloud[:, :3], axis=0), np.unique(XYZ, axis=0))
