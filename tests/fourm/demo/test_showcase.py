"""The demo's chained-generation pictures: written where asked, chains the model cannot run skipped by name."""

import numpy as np
from PIL import Image

from fourm.demo import showcase


class FakeGenerator:
    """Stands in for fourm.eval.evaluate.Generator: 'generates' each target as a constant of its kind."""

    modalities = ["tok_depth", "tok_rgb", "tok_semseg"]

    def __init__(self):
        self.calls = []

    def generate(self, given, targets, seed=0):
        self.calls.append((sorted(given), targets))
        n = len(next(iter(given.values())))
        made = {"tok_rgb": [np.full((16, 16, 3), 200, np.uint8)] * n, "tok_semseg": [np.ones((16, 16), np.uint8)] * n}
        return {t: made[t] for t in targets}


def test_chains_create_their_folder_and_skip_what_the_model_lacks(tmp_path, monkeypatch):
    scenes = [{"__key__": f"scene-{i:04d}", "rgb": np.zeros((16, 16, 3), np.uint8),
               "depth": np.full((16, 16), 2.0 + i, np.float32), "semseg": np.zeros((16, 16), np.uint8)}
              for i in range(2)]
    monkeypatch.setattr(showcase, "_heldout", lambda corpus, samples: (scenes[:samples], {}))
    generator, out = FakeGenerator(), tmp_path / "not" / "made" / "yet"
    written = showcase.save_chains(generator, "unused", out, samples=2)
    assert generator.calls == [(["tok_depth"], ["tok_rgb", "tok_semseg"])]
    assert Image.open(written["depth-to-rgb"]).size[0] > 0  # a readable PNG inside the new folder
    assert "caption" in written["chain-caption"] and written["chain-caption"].startswith("skipped")
    assert written["rgb-to-all"].startswith("skipped")


def test_a_chain_gives_the_model_its_series_every_way_the_model_reads_it(tmp_path, monkeypatch):
    """As the evaluation does: a model that reads RGB as pixels and as tokens is given both."""
    scenes = [{"__key__": "scene-0000", "rgb": np.zeros((16, 16, 3), np.uint8), "semseg": np.zeros((16, 16), np.uint8)}]
    monkeypatch.setattr(showcase, "_heldout", lambda corpus, samples: (scenes[:samples], {}))
    generator = FakeGenerator()
    generator.modalities = ["rgb", "tok_rgb", "tok_semseg"]
    showcase.save_chains(generator, "unused", tmp_path, samples=1, chains={"rgb": ("tok_rgb", ["tok_semseg"])})
    assert generator.calls == [(["rgb", "tok_rgb"], ["tok_semseg"])]
