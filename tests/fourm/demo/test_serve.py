"""`fourm serve`'s requests without a browser: a chain's updates, its zip, the per-target settings, search,
and one clear line for each kind of bad input."""

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from fourm.cli import main
from fourm.demo.serve import TILE, GenerateRequest, Server
from fourm.generation import Pipeline
from fourm.retrieval.index import search_samples

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def server(serve_run):
    return Server(serve_run["model"], serve_run["tokenizers"], serve_run["index"])


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("uploads") / "photo.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(path)
    return path


def last(updates):
    *_, final = updates
    return final


def test_a_chain_streams_each_target_and_zips_what_generate_makes(server, serve_run, photo):
    request = GenerateRequest(files={"rgb": str(photo)}, targets=["depth", "caption"], steps=3, seed=4)
    updates = list(server.generate(request))
    # the inputs first, then one update per finished target (tiles growing), then the zip
    assert [len(u.tiles) for u in updates] == [0, 1, 2, 2] and [u.done for u in updates] == [False] * 3 + [True]
    assert [t for _, t in updates[0].given] == ["given: rgb"]
    assert [t.split()[0] for _, t in updates[-1].tiles] == ["tok_depth", "caption"]
    assert all(tile.size == (TILE, TILE) for tile, _ in updates[-1].tiles)
    with zipfile.ZipFile(updates[-1].archive) as zf:
        assert {"tok_depth.png", "caption.txt", "tokens.json", "grid.png"} <= set(zf.namelist())
        tokens = json.loads(zf.read("tokens.json"))
        depth = np.asarray(Image.open(zf.open("tok_depth.png")))
    assert depth.dtype == np.uint16 and depth.shape == (32, 32)  # the corpus' depth: 16-bit millimetres
    # the same tokens as the library gives for the same inputs and seed: the page adds nothing of its own
    pipe = Pipeline.from_pretrained(serve_run["model"], serve_run["tokenizers"])
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    expected = pipe.generate({"rgb": rgb}, ["depth", "caption"], seed=4, steps=3)
    assert tokens["tok_depth"] == expected["tok_depth"].tokens.tolist()
    assert tokens["caption"] == expected["caption"].tokens
    other = last(server.generate(GenerateRequest(files={"rgb": str(photo)}, targets=["depth"], steps=3, seed=5)))
    with zipfile.ZipFile(other.archive) as zf:
        assert json.loads(zf.read("tokens.json"))["tok_depth"] != tokens["tok_depth"]


def test_per_target_rows_override_the_defaults(server):
    request = GenerateRequest(caption="a [MASK] cube", targets=["tok_rgb", "caption", "tok_depth"], scheme="roar",
                              steps=5, temperature=0.7, settings=[["tok_depth", "maskgit", 2, 0, ""],
                                                                  ["caption", "", None, 0.2, 1.5]])
    chain = server.schedule(request, server.read_inputs(request))
    got = [(t.modality, t.scheme, t.steps, t.temperature, t.guidance) for t in chain]
    # roar is no scheme for a sequence: the caption keeps its own (None: ar), as `fourm generate` does
    assert got == [("tok_rgb", "roar", 5, 0.7, 0.0), ("caption", None, 5, 0.2, 1.5),
                   ("tok_depth", "maskgit", 2, 0.0, 0.0)]
    final = last(server.generate(request))
    assert final.done and final.tiles[1][1].startswith("caption")


def test_search_ranks_as_the_library_and_shows_each_hit(server):
    tiles, status = server.search("a red cube", k=3)
    expected = search_samples(server.index, [{"caption": "a red cube"}], 3, model=server.model_dir,
                              tokenizers=server.tokenizers_dir)[0]
    assert [t.split()[1] for _, t in tiles] == [h.key for h in expected]
    assert all(tile.size == (TILE, TILE) for tile, _ in tiles) and "3 hits of 6" in status
    assert tiles[0][1].endswith(server.scenes[expected[0].key]["caption"])  # the hit's own caption beside it


@pytest.mark.parametrize("request_args, message", [
    (dict(files={"rgb": "NOTES"}, targets=["depth"]), "the rgb upload 'notes.txt' is not an image"),
    (dict(files={"rgb": "PHOTO"}, targets=["tok_rgb"]), "target tok_rgb is also given as an input (rgb)"),
    (dict(caption="a red cube", targets=["caption"]), "target caption is also given"),
    (dict(caption="a cube", targets=["colour"]), "unknown modality 'colour'"),
    (dict(caption="a cube", targets=["tok_depth", "depth"]), "target depth is listed twice"),
    (dict(caption="a cube", targets=[]), "no targets"),
    (dict(targets=["depth"]), "no inputs"),
    (dict(caption="a cube", targets=["depth"], settings=[["depth", "", "many", None, None]]),
     "target tok_depth: steps 'many' is not a number"),
    (dict(caption="a cube", targets=["depth"], settings=[["depth", "ar", None, None, None]]),
     "takes scheme maskgit or roar"),
    (dict(caption="a cube", targets=["depth"], temperature=-1), "need temperature >= 0"),
    (dict(boxes="[{]", targets=["depth"]), "boxes are not valid JSON"),
    (dict(files={"semseg": "DEPTH"}, targets=["tok_rgb"]), "semseg needs an (H, W) map of integer class ids"),
    (dict(files={"depth": "PHOTO"}, targets=["tok_rgb"]), "depth needs an (H, W) map of one value per pixel"),
    (dict(scene="scene-9999", targets=["depth"]), "scene 'scene-9999' is not one of the served scenes"),
])
def test_bad_input_is_one_clear_line(server, photo, tmp_path, request_args, message):
    notes, depth = tmp_path / "notes.txt", tmp_path / "depth.npy"
    notes.write_text("not an image")
    np.save(depth, np.ones((8, 8), np.float32))
    files = {k: {"NOTES": notes, "PHOTO": photo, "DEPTH": depth}[v] for k, v in request_args.pop("files", {}).items()}
    with pytest.raises(ValueError) as info:
        list(server.generate(GenerateRequest(files=files, **request_args)))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_scene_gives_its_modalities_and_search_needs_an_index(server, serve_run):
    request = GenerateRequest(scene="scene-0002", scene_modalities=["rgb", "caption"], targets=["depth"], steps=2)
    final = last(server.generate(request))
    assert [t for _, t in final.given] == ["given: rgb", "given: caption"] and len(final.tiles) == 1
    (tile, title), = server.scene_tiles("scene-0002")
    assert title == "scene scene-0002" and tile.size == (TILE, TILE) and server.scene_tiles(None) == []
    with pytest.raises(ValueError, match="no query"):
        server.search("  ")
    bare = Server(serve_run["model"], serve_run["tokenizers"])
    assert not bare.scenes and bare.targets() == ["tok_rgb", "tok_depth", "caption", "tok_caption_global"]
    with pytest.raises(ValueError, match="start fourm serve with --index"):
        bare.search("a red cube")


def test_the_command_reports_a_missing_model_in_one_line(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "nowhere"), "--tokenizers", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fourm serve: error:") and "nowhere" in err and "\n" not in err
