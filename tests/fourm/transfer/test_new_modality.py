"""A modality the checkpoint does not know, added by continued training: the known weights are loaded,
the new ones train alone while the trunk is frozen (old predictions unchanged), then everything trains."""

import pytest
import torch

from fourm.config import load_config
from fourm.generation.state import GenerationState, with_queries
from fourm.model.fourm import FourM
from fourm.train.curves import read_metrics
from fourm.train.pretrain import FourMTrainConfig, run_training

from ..train.conftest import make_token_corpus

ARGS = ["model.size=nano", "data.batch_size=8", "data.heldout=16", "masking.input_budget=12",
        "masking.target_budget=12", "train.lr=3e-3", "train.warmup_steps=2", "train.log_every=1",
        "train.precision=fp32", "train.eval_every=0", "train.use_tensorboard=false"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_token_corpus(tmp_path_factory.mktemp("tokens"), num_samples=64)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """A nano FourM trained a few steps on tok_rgb and caption only."""
    out = tmp_path_factory.mktemp("old")
    run_training(load_config(FourMTrainConfig, overrides=[*ARGS, f"data.corpora=[{corpus}]", f"out={out}",
                                                          "model.modalities=[tok_rgb,caption]", "train.steps=10",
                                                          "train.save_every=0"]), progress=False)
    return out / "model"


def rgb_logits(model: FourM, caption: list[int]) -> torch.Tensor:
    """tok_rgb logits of every position given a caption, in the model's own modality order."""
    state = GenerationState(model.specs, 1)
    state.set_sequence("caption", [caption])
    n = model.specs["tok_rgb"].tokens
    batch = with_queries(state.encoder_batch(), model.modality_index("tok_rgb"), torch.arange(n)[None],
                         torch.ones(1, n, dtype=torch.bool))
    with torch.no_grad():
        memory, valid = model.encode(batch)
        return model.logits(model.decode(batch, memory, valid), batch.dec_mod)["tok_rgb"].logits


def test_a_new_modality_trains_and_the_old_weights_hold_while_frozen(corpus, trained, tmp_path):
    out = tmp_path / "grown"
    cfg = load_config(FourMTrainConfig, overrides=[*ARGS, f"data.corpora=[{corpus}]", f"out={out}",
                                                   f"model.init={trained}", "model.frozen_steps=20",
                                                   "train.steps=30", "train.save_every=10", "train.keep_last=5"])
    grown = run_training(cfg, progress=False)
    old = FourM.from_pretrained(trained)
    assert grown.names == ["tok_rgb", "tok_depth", "caption"] and old.names == ["tok_rgb", "caption"]
    early = FourM.from_pretrained(out / "checkpoints" / "step-0000010" / "model").state_dict()
    at_unfreeze = FourM.from_pretrained(out / "checkpoints" / "step-0000020" / "model")
    old_state, mid, end = old.state_dict(), at_unfreeze.state_dict(), grown.state_dict()
    for key, value in old_state.items():
        if key == "embed.modality":  # rows by name: old (rgb, caption) -> grown (rgb, depth, caption)
            assert torch.equal(mid[key][[0, 2]], value) and not torch.equal(mid[key][1], early[key][1])
        else:
            assert torch.equal(mid[key], value), key  # bit-identical through the frozen phase
    new = [k for k in mid if "tok_depth" in k]
    assert new and all(not torch.equal(mid[k], early[k]) for k in new)  # the new weights trained meanwhile
    assert any(not torch.equal(end[k], old_state[k]) for k in old_state if k != "embed.modality")  # unfrozen later
    # the old modalities' predictions are unchanged at the end of the frozen phase
    caption = [240, 251, 3]
    torch.testing.assert_close(rgb_logits(at_unfreeze, caption), rgb_logits(old, caption), rtol=0, atol=0)
    # and the new modality learnt: its training loss fell
    depth = [r["loss/tok_depth"] for r in read_metrics(out / "metrics.jsonl") if "loss/tok_depth" in r]
    assert sum(depth[-5:]) < sum(depth[:5]), depth
    # a normal checkpoint: it loads as it is
    assert FourM.from_pretrained(out / "model").config == grown.config
