"""Retrieval: search backends against a brute-force numpy ranking, indexes from corpus vectors and from a
nano FourM's predictions, save/load, queries, the CLI end to end, and its one-line errors."""

import functools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fourm.cli import main
from fourm.data.corpus import CorpusReader, storage_entry, write_manifest, write_shard
from fourm.eval.retrieval import chance_recall, evaluate_retrieval, format_rows, perturb, recall_at_k
from fourm.modalities import CORPUS, ModalityScale
from fourm.model.sizes import create_model
from fourm.retrieval.embed import EmbedSpec, embed, use_labellers
from fourm.retrieval.index import (
    EmbeddingIndex,
    RetrievalError,
    build_index,
    load_index,
    parse_query,
    retrieve,
    search_samples,
)
from fourm.retrieval.search import SEARCH_BACKENDS, TorchSearch, make_backend
from fourm.tokenization.mlp_vqvae import VectorVQVAE, VectorVQVAEConfig
from fourm.tokenization.text import SequenceTokenizer, TextConfig, build_vocabulary, new_tokenizer, reserved_tokens
from pseudolabel.pipeline import PseudolabelConfig, run_pipeline
from pseudolabel.registry import lookup

SIDE, PATCH, TEXT_VOCAB, CODES_TEXT = 32, 8, 4608, 8
WORDS = ["a", "red", "blue", "green", "cube", "sphere", "cone", "cylinder", "small", "large", "left", "right"]
GLOBAL = dict(input_dim=384, num_tokens=4, dim=32, depth=1, mlp_ratio=2, quantizer="fsq", levels=[4, 4])
EXACT = [name for name, cls in SEARCH_BACKENDS.items() if name != "faiss-hnsw" and cls.available()[0]]


@pytest.fixture(autouse=True)
def labellers():
    """Queries embedded by the labeller run pseudolabel's labellers, lent as `fourm retrieve` lends them."""
    use_labellers(functools.partial(lookup, "labeller"))
    yield
    use_labellers(None)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    run_pipeline(PseudolabelConfig(source="scenes:10", out=str(out), shard_size=4, image_size=SIDE,
                                   labellers=["text_embedding"]), progress=False)
    return out


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory, corpus):
    folder = tmp_path_factory.mktemp("tokenizers")
    torch.manual_seed(0)
    tok = VectorVQVAE(VectorVQVAEConfig(**GLOBAL))
    tok.fit_normalization(tok.to_vectors([s["caption_global"] for s in CorpusReader(corpus, "caption_global")]))
    tok.save_pretrained(folder / "tok_caption_global")
    words = build_vocabulary(WORDS, TEXT_VOCAB, CODES_TEXT, CODES_TEXT)
    SequenceTokenizer(TextConfig("caption", TEXT_VOCAB, num_mask_codes=CODES_TEXT, num_pose_codes=CODES_TEXT),
                      new_tokenizer(words, reserved_tokens(CODES_TEXT, CODES_TEXT))).save_pretrained(folder / "caption")
    return folder


def nano(seed: int):
    torch.manual_seed(seed)
    scale = ModalityScale(SIDE, PATCH, vocab_sizes={"caption": TEXT_VOCAB, "tok_caption_global": 16})
    return create_model("nano", "rgb,caption,tok_caption_global", scale,
                        max_tokens={"caption": 128, "tok_caption_global": 4}).eval()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fourm")
    nano(0).save_pretrained(folder)
    return folder


def unit(n: int, dim: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


# ----------------------------------------------------------------------------- search
@pytest.mark.parametrize("backend", EXACT)
def test_exact_backends_rank_as_numpy_does(backend, monkeypatch):
    gallery, queries = unit(500), unit(7, seed=1)
    monkeypatch.setattr(TorchSearch, "chunk", 64)  # several chunks: the running top-k merge is exercised
    scores, positions = make_backend(backend, gallery).search(queries, 10)
    brute = queries.numpy() @ gallery.numpy().T
    order = np.argsort(-brute, axis=1, kind="stable")[:, :10]
    assert np.array_equal(positions.numpy(), order)
    np.testing.assert_allclose(scores.numpy(), np.take_along_axis(brute, order, 1), rtol=1e-5, atol=1e-6)


def test_hnsw_finds_most_exact_neighbours():
    if not SEARCH_BACKENDS["faiss-hnsw"].available()[0]:
        with pytest.raises(ValueError, match="pip install faiss-cpu"):
            make_backend("faiss-hnsw", unit(10))
        return
    gallery, queries = unit(3000, 32), unit(50, 32, seed=1)
    _, exact = make_backend("torch", gallery).search(queries, 10)
    _, approx = make_backend("faiss-hnsw", gallery).search(queries, 10)
    found = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx.tolist(), exact.tolist(), strict=True)])
    assert found > 0.9


def test_k_beyond_the_gallery():
    index = EmbeddingIndex(["a", "b", "c"], unit(3), {})
    scores, positions = index.search(unit(3), k=10)
    assert positions.shape == (3, 3) and torch.all(scores[:, :-1] >= scores[:, 1:])


def test_recall_counts_ties_by_expectation():
    e = torch.eye(3)
    gallery = torch.stack([e[0], e[0], e[1], e[2]])  # items 0 and 1 are the same vector
    queries = torch.stack([e[0], e[0], e[2], e[1]])
    # queries 0 and 1 tie with each other's item at the top: 1/2 at k=1; queries 2 and 3 find theirs alone
    r = recall_at_k(queries, gallery, torch.tensor([0, 1, 3, 2]), ks=(1, 2, 4))
    assert r == {1: pytest.approx((0.5 + 0.5 + 1 + 1) / 4), 2: 1.0, 4: 1.0}
    # now queries 2 and 3 score 0 on their items, below one item and tied with two others: 0, then 1/3
    r = recall_at_k(queries, gallery, torch.tensor([0, 1, 2, 3]), ks=(1, 2))
    assert r == {1: pytest.approx((0.5 + 0.5 + 0 + 0) / 4), 2: pytest.approx((1 + 1 + 1 / 3 + 1 / 3) / 4)}
    assert chance_recall(50, (1, 5)) == {1: 0.02, 5: 0.1}


def test_perturb_keeps_the_scene():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = perturb(image, np.random.default_rng(1))
    assert out.shape == image.shape and out.dtype == np.uint8 and not np.array_equal(out, image)
    assert np.abs(out.astype(int) - image.astype(int)).mean() < 128


# ----------------------------------------------------------------------------- indexes
def test_corpus_index_finds_each_item_itself(corpus, tmp_path):
    index = build_index(corpus, progress=False)
    assert len(index) == 10 and index.vectors.shape == (10, 384)
    assert torch.allclose(index.vectors.norm(dim=1), torch.ones(10), atol=1e-5)
    samples = list(CorpusReader(corpus, "caption_global"))
    assert index.keys == [s["__key__"] for s in samples]
    hits = search_samples(index, samples, k=3, embedder="corpus")
    assert [h[0].key for h in hits] == index.keys
    assert all(h[0].score == pytest.approx(1.0, abs=1e-3) and h[0].score > h[1].score for h in hits)

    loaded = load_index(index.save(tmp_path / "gallery"))
    assert loaded.keys == index.keys and torch.equal(loaded.vectors, index.vectors) and loaded.info == index.info
    assert sorted(p.name for p in (tmp_path / "gallery").iterdir()) == ["index.json", "vectors.safetensors"]


def test_caption_query_through_minilm_finds_its_scene(corpus):
    """The labeller embedder makes the corpus' own vector from a raw caption: the scene is hit 1."""
    index = build_index(corpus, progress=False)
    sample = next(iter(CorpusReader(corpus, "caption")))
    hit = search_samples(index, [{"caption": sample["caption"]}], k=1)[0][0]  # no model: the labeller
    assert hit.key == sample["__key__"] and hit.score > 0.99


def test_the_labeller_embedder_needs_labellers_lent(corpus):
    """The core never imports pseudolabel: without labellers lent, a labeller query is a one-line refusal."""
    use_labellers(None)
    index = build_index(corpus, progress=False)
    with pytest.raises(ValueError, match="has no labellers to run"):
        search_samples(index, [{"caption": "a red cube"}], k=1)


def test_model_index_holds_the_decoded_predictions(corpus, model, tokenizers):
    from fourm.generation.pipeline import Pipeline
    from fourm.generation.schedule import Target

    index = build_index(corpus, from_="model", inputs=["rgb"], model=model, tokenizers=tokenizers, batch_size=4,
                        progress=False, decode="argmax")
    assert index.info["query_embedder"] == "model" and index.info["fingerprints"]["model"]
    rgbs = [s["rgb"] for s in CorpusReader(corpus, "rgb")]
    out = Pipeline.from_pretrained(model, tokenizers).generate(
        [{"rgb": r} for r in rgbs], [Target("tok_caption_global", steps=1, temperature=0.0)])["tok_caption_global"]
    expected = torch.nn.functional.normalize(torch.tensor(np.stack(out.values), dtype=torch.float32), dim=1)
    assert torch.allclose(index.vectors, expected, atol=1e-3)
    # the same image as a query gets the same vector: its gallery item scores 1, at rank 1 up to exact ties
    hits = search_samples(index, [{"rgb": rgbs[3]}], k=10)[0]
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert index.keys[3] in [h.key for h in hits if h.score > hits[0].score - 1e-4]


def test_expected_decoding_of_a_certain_model_is_the_argmax_decoding(corpus, model, tokenizers, tmp_path):
    certain = nano(0)
    # logits x 10^5: every distribution is one-hot at its argmax unless two raw logits tie within 1e-4
    # (x 1000 left a near-tie of a nano model's small logits on one scene at 1e-3 off)
    with torch.no_grad():
        certain.heads["tok_caption_global"].weight.mul_(1e5)
    certain.save_pretrained(tmp_path / "certain")
    samples = [{"rgb": s["rgb"]} for s in CorpusReader(corpus, "rgb")]

    def vectors(folder, decode):
        return embed(samples, EmbedSpec(embedder="model", inputs=["rgb"], model=str(folder),
                                        tokenizers=str(tokenizers), decode=decode))

    assert torch.allclose(vectors(tmp_path / "certain", "argmax"), vectors(tmp_path / "certain", "expected"), atol=1e-3)
    # the same weights unscaled (an unsure model): the expectation is not the argmax code
    unsure = vectors(model, "expected")
    assert unsure.shape == (10, 384) and not torch.allclose(unsure, vectors(model, "argmax"), atol=1e-2)


def test_queries_refuse_another_model(corpus, model, tokenizers, tmp_path):
    index = build_index(corpus, from_="model", model=model, tokenizers=tokenizers, limit=4, progress=False)
    other = tmp_path / "other"
    nano(1).save_pretrained(other)
    with pytest.raises(RetrievalError, match="another model"):
        search_samples(index, [{"caption": "a red cube"}], model=other)
    (tmp_path / "tokenizers").mkdir()
    t = VectorVQVAE(VectorVQVAEConfig(**GLOBAL))
    t.save_pretrained(tmp_path / "tokenizers" / "tok_caption_global")
    with pytest.raises(RetrievalError, match="another tokenizer"):
        search_samples(index, [{"caption": "a red cube"}], tokenizers=tmp_path / "tokenizers")


def test_spec_errors():
    with pytest.raises(ValueError, match="not a global-embedding modality"):
        EmbedSpec("tok_rgb")
    with pytest.raises(LookupError, match="unknown modality 'tok_nothing'"):
        EmbedSpec("tok_nothing")
    with pytest.raises(LookupError, match="unknown embedder"):
        EmbedSpec(embedder="psychic")
    with pytest.raises(ValueError, match="needs 'caption_global'"):
        embed([{"caption": "x"}], EmbedSpec())
    with pytest.raises(RetrievalError, match="empty"):
        EmbeddingIndex([], torch.zeros(0, 4), {}).search(unit(1, 4))
    with pytest.raises(ValueError, match="not of the form"):
        parse_query(["caption"])
    with pytest.raises(ValueError, match="--query rgb: '/nonexistent.png' is not a readable file"):
        parse_query(["rgb=/nonexistent.png"])


# ----------------------------------------------------------------------------- CLI
def test_cli_end_to_end(corpus, model, tokenizers, tmp_path, capsys):
    idx = tmp_path / "gallery"
    assert main(["index", "--corpus", str(corpus), "--out", str(idx), "--from", "model", "--model", str(model),
                 "--tokenizers", str(tokenizers), "--inputs", "rgb", "batch_size=4"]) == 0
    assert "10 vectors of tok_caption_global" in capsys.readouterr().out
    sample = next(iter(CorpusReader(corpus, "rgb")))
    Image.fromarray(sample["rgb"]).save(tmp_path / "query.png")
    out = tmp_path / "hits"
    assert main(["retrieve", "--index", str(idx), "--query", f"rgb={tmp_path / 'query.png'}", "-k", "3",
                 "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[0].split()[0] == "1"
    hits = json.loads((out / "hits.json").read_text())
    assert [h["rank"] for h in hits] == [1, 2, 3]
    grid = Image.open(out / "hits.png")
    assert grid.width > 4 * 100  # the query tile and three hits side by side
    # a caption query against the same gallery, embedded by the model
    assert retrieve(idx, ["caption=a large red cube"], k=2)[0].rank == 1


@pytest.fixture(scope="module")
def small(corpus, model, tokenizers, tmp_path_factory):
    """A 3-item model-built index, another model, and an empty corpus."""
    root = tmp_path_factory.mktemp("small")
    build_index(corpus, from_="model", model=model, tokenizers=tokenizers, limit=3, progress=False).save(root / "idx")
    nano(2).save_pretrained(root / "other")
    write_manifest(root / "empty", {"modalities": {"caption_global": storage_entry(CORPUS["caption_global"].storage)}})
    return root


@pytest.mark.parametrize("args, message", [
    (["index", "--modality", "tok_rgb"], "not a global-embedding modality"),
    (["index", "--modality", "tok_nope"], "unknown modality 'tok_nope'"),
    (["index", "--from", "model"], "needs --model and --tokenizers"),
    (["index", "--corpus", "{root}/empty"], "gallery would be empty"),
    (["index", "steps=x"], "steps"),
    (["index", "depth=3"], "unknown setting 'depth'"),
    (["retrieve", "--query", "nope=1"], "unknown modality 'nope'"),
    (["retrieve", "--query", "caption=a cube", "--backend", "annoy"], "unknown search backend 'annoy'"),
    (["retrieve", "--query", "caption=a cube", "--model", "{root}/other"], "another model"),
    (["retrieve", "--query", "rgb={root}/missing.png"], "is not a readable file"),
    (["retrieve", "--index", "{root}", "--query", "caption=a cube"], "not an index"),
])
def test_cli_one_line_errors(args, message, corpus, small, tmp_path, capsys):
    where = ["--index", f"{small}/idx"] if args[0] == "retrieve" else ["--corpus", str(corpus), "--out", str(tmp_path)]
    argv = [a.replace("{root}", str(small)) for a in [args[0], *where, *args[1:]]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_the_installed_command_reports_errors_in_one_line(small):
    proc = subprocess.run([sys.executable, "-m", "fourm.cli", "retrieve", "--index", f"{small}/idx", "--query",
                           "caption=a cube", "--backend", "annoy"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "unknown search backend" in proc.stderr


def test_not_an_index(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an index"):
        load_index(tmp_path)


def test_evaluation_rows(corpus, model, tokenizers):
    rows = evaluate_retrieval(model, tokenizers, corpus, ks=(1, 5), batch_size=5)
    assert [r["task"] for r in rows] == ["caption -> image"] * 2 + ["image -> image", "caption -> image bound"]
    assert all(r["n"] == 10 and r["chance"] == {1: 0.1, 5: 0.5} for r in rows)
    assert all(0 <= v <= 1 for r in rows for v in r["recall"].values())
    assert all(r["recall"][5] >= r["recall"][1] for r in rows)
    # the MiniLM caption row ranks the same gallery as the index built from the model's predictions
    # the same batches as the row: a batch's shape moves a network's last bits, and so near-tied ranks
    index = build_index(corpus, from_="model", inputs=["rgb"], model=model, tokenizers=tokenizers, batch_size=5,
                        progress=False)
    truth = torch.nn.functional.normalize(torch.tensor(np.stack(
        [s["caption_global"] for s in CorpusReader(corpus, "caption_global")]), dtype=torch.float32), dim=1)
    assert rows[1]["recall"] == pytest.approx(recall_at_k(truth, index.vectors, ks=(1, 5)))
    assert "R@5" in format_rows(rows)


def test_evaluate_ranks_the_gallery_fourm_index_builds(corpus, model, tokenizers):
    """`fourm evaluate`'s retrieval row predicts the very vectors of a model-built index (one code path)."""
    from fourm.eval.evaluate import load_generator

    index = build_index(corpus, from_="model", inputs=["rgb"], model=model, tokenizers=tokenizers, progress=False)
    rgbs = [s["rgb"] for s in CorpusReader(corpus, "rgb")]
    vectors = load_generator(model, tokenizers, batch_size=4).vectors({"rgb": rgbs}, "tok_caption_global")
    assert torch.allclose(torch.nn.functional.normalize(torch.as_tensor(vectors), dim=1), index.vectors, atol=1e-4)


# ----------------------------------------------------------------------------- DINOv2 globals
@pytest.fixture(scope="module")
def dinov2_setup(tmp_path_factory):
    """A corpus whose dinov2_global vectors a (missing) DINOv2 checkpoint made, its tokenizer and a nano
    model over rgb pixels: the tok_dinov2_global path without DINOv2 weights."""
    root = tmp_path_factory.mktemp("dinov2")
    rng = np.random.default_rng(0)
    storages = {"rgb": CORPUS["rgb"].storage, "dinov2_global": CORPUS["dinov2_global"].storage}
    samples = [{"__key__": f"d{i}", "rgb": rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8),
                "dinov2_global": rng.normal(size=768).astype(np.float16)} for i in range(8)]
    write_shard(root / "corpus", 0, samples, storages)
    write_manifest(root / "corpus", {
        "modalities": {"rgb": storage_entry(storages["rgb"]),
                       "dinov2_global": storage_entry(storages["dinov2_global"], labeller="dinov2")},
        "labellers": [{"name": "dinov2", "settings": {"model": str(root / "no-dinov2")}}]})
    torch.manual_seed(0)
    VectorVQVAE(VectorVQVAEConfig(**{**GLOBAL, "input_dim": 768}, modality="tok_dinov2_global",
                                  source="dinov2_global")).save_pretrained(root / "tokenizers" / "tok_dinov2_global")
    create_model("nano", "rgb,tok_dinov2_global", ModalityScale(SIDE, PATCH, vocab_sizes={"tok_dinov2_global": 16}),
                 max_tokens={"tok_dinov2_global": 4}).save_pretrained(root / "model")
    return root


def test_dinov2_globals_without_dinov2_weights(dinov2_setup):
    root = dinov2_setup
    index = build_index(root / "corpus", "tok_dinov2_global", progress=False)
    samples = list(CorpusReader(root / "corpus"))
    assert [h[0].key for h in search_samples(index, samples, k=2, embedder="corpus")] == index.keys
    # a raw image query needs DINOv2 itself, with the corpus' recorded checkpoint: a one-line refusal here
    assert index.info["spec"]["labeller"]["settings"]["model"].endswith("no-dinov2")
    with pytest.raises(ValueError, match="labeller dinov2 for dinov2_global cannot start"):
        search_samples(index, [{"rgb": samples[0]["rgb"]}], embedder="labeller")
    # the model route needs no DINOv2: rgb -> predicted tok_dinov2_global -> decoded 768-d vectors
    index = build_index(root / "corpus", "tok_dinov2_global", "model", ["rgb"], root / "model", root / "tokenizers",
                        progress=False)
    assert index.vectors.shape == (8, 768)
    assert search_samples(index, [{"rgb": samples[5]["rgb"]}], k=1)[0][0].score == pytest.approx(1.0, abs=1e-3)
