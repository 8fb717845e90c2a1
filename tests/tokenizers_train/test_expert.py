"""The patch expert's trainer on a scenes corpus, and FourM trained on it through the hybrid stem:
the expert learns, saves where FourM finds it, and stays frozen in FourM's training."""

import numpy as np
import pytest
import torch

from fourm.config import load_config
from fourm.data.corpus import CorpusError, CorpusReader, storage_entry, write_manifest, write_shard
from fourm.kinds import token_count_key
from fourm.modalities import CORPUS, MODALITIES, Storage
from fourm.model.expert import PatchExpert, patch_histograms
from fourm.model.stems import HybridStem
from fourm.train.curves import read_metrics
from fourm.train.pretrain import FourMTask, FourMTrainConfig, run_training
from pseudolabel.pipeline import PseudolabelConfig, run_pipeline
from tokenizers_train import expert, train_tokenizer
from tokenizers_train.data import tokenizer_dir

CONFIG = expert.__file__.replace("tokenizers_train/expert.py", "configs/tokenizers/patch_expert.yaml")
TINY = ["model.patch_size=4", "model.width=4", "model.features=8", "batch_size=16", "eval_samples=8",
        "train.warmup_steps=2", "train.eval_every=0", "train.save_every=0", "train.log_every=1",
        "train.precision=fp32", "train.lr=1e-2"]
FOURM = ["model.size=nano", "model.overrides.dim=32", "model.overrides.heads=2", "data.batch_size=8",
         "data.heldout=8", "masking.input_budget=16", "masking.target_budget=16", "train.warmup_steps=2",
         "train.eval_every=0", "train.save_every=0", "train.precision=fp32"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("scenes") / "corpus"
    run_pipeline(PseudolabelConfig(source="scenes:48", out=str(out), image_size=16, shard_size=24,
                                   labellers=["canny_edge"]), progress=False)
    return str(out)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizers")
    model = train_tokenizer(CONFIG, corpus, out, [*TINY, "train.steps=40"], progress=False)
    return out, model


def test_the_expert_learns_and_is_saved_where_fourm_finds_it(trained):
    out, model = trained
    rows = read_metrics(out / "runs" / "patch_expert" / "metrics.jsonl")
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 40 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    scores = rows[-1]
    assert 0 < scores["eval/class_accuracy"] <= 1 and scores["eval/patch_accuracy"] > 0.5
    loaded = PatchExpert.from_pretrained(tokenizer_dir(out, "patch_expert"))
    assert loaded.class_names and loaded.config.num_classes == len(loaded.class_names)  # the corpus' classes
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded(image), model.eval()(image))


def test_a_corpus_without_the_labels_is_named(corpus, tmp_path):
    with pytest.raises(CorpusError, match="has no depth_classes"):
        train_tokenizer(CONFIG, corpus, tmp_path, [*TINY, "labels=depth_classes", "train.steps=1"], progress=False)


@pytest.fixture(scope="module")
def token_corpus(corpus, tmp_path_factory) -> str:
    """rgb pixels (copied, as `fourm tokenize` does) and each patch's majority class as tok_semseg ids."""
    root = tmp_path_factory.mktemp("tokens")
    storages = {"rgb": CORPUS["rgb"].storage, "tok_semseg": Storage("npy", "int16")}
    samples = []
    for s in CorpusReader(corpus, ["rgb", "semseg"]):
        classes = patch_histograms(torch.tensor(np.asarray(s["semseg"]))[None], 4, 6).argmax(-1)[0]
        samples.append({"__key__": s["__key__"], "rgb": s["rgb"], "tok_semseg": classes.numpy().astype(np.int16)})
    write_shard(root, 0, samples, storages)
    write_manifest(root, {"image_size": 16, "modalities": {
        "rgb": storage_entry(storages["rgb"], copied_from="rgb"),
        "tok_semseg": storage_entry(storages["tok_semseg"], vocab_size=6,
                                    **{token_count_key(MODALITIES["tok_semseg"]): 16})}})
    return str(root)


def test_fourm_reads_the_expert_frozen(trained, token_corpus, tmp_path):
    out, _ = trained
    path = tokenizer_dir(out, "patch_expert")
    cfg = load_config(FourMTrainConfig, overrides=[*FOURM, f"data.corpora=[{token_corpus}]", f"out={tmp_path}",
                                                   f"model.pixel_expert={path}", "train.steps=10"])
    model = run_training(cfg, progress=False)
    stem = model.embed.projections["rgb"]
    assert isinstance(stem, HybridStem) and model.config.pixel_stem == "hybrid"
    assert model.config.pixel_expert == {"patch_size": 4, "width": 4, "features": 8, "num_classes": 6}
    for a, b in zip(stem.trunk.state_dict().values(), PatchExpert.from_pretrained(path).trunk.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)  # ten steps of training left the expert as it was trained


@pytest.mark.parametrize(("extra", "message"), [
    (["model.overrides.pixel_stem=hybrid"], "hybrid reads a pretrained patch expert: set model.pixel_expert"),
    (["model.pixel_expert=EXPERT", "model.init=somewhere"], "model.init already has its own"),
])
def test_a_hybrid_stem_without_its_expert_is_named(trained, token_corpus, tmp_path, extra, message):
    path = str(tokenizer_dir(trained[0], "patch_expert"))
    overrides = [*FOURM, f"data.corpora=[{token_corpus}]", f"out={tmp_path}",
                 *(e.replace("EXPERT", path) for e in extra)]
    with pytest.raises(ValueError, match=message):
        FourMTask(load_config(FourMTrainConfig, overrides=overrides))
