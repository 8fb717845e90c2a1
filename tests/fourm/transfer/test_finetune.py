"""`fourm finetune`: each regime lowers the loss on a nano model; frozen keeps the encoder; LoRA
adapters save, load and merge to the same outputs; labels from a CSV file; bad input in one line."""

import pytest
import torch

from fourm.cli import main
from fourm.config import load_config
from fourm.model.fourm import FourM
from fourm.train.curves import read_metrics
from fourm.transfer.finetune import FinetuneConfig, FinetunedFourM, load_adapter, run_finetune
from fourm.transfer.heads import TaskHead

ARGS = ["heldout=8", "batch_size=8", "eval_batch_size=16", "train.steps=30", "train.lr=1e-2", "train.warmup_steps=3",
        "train.log_every=1", "train.save_every=0", "train.eval_every=0", "train.precision=fp32",
        "train.use_tensorboard=false"]


def config(model_dir, tokenizers_dir, scenes, out, *extra):
    return load_config(FinetuneConfig, overrides=[*ARGS, f"model={model_dir}", f"tokenizers={tokenizers_dir}",
                                                  f"corpus={scenes}", f"out={out}", *extra])


def losses(out):
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


def encoder_state(fourm: FourM) -> dict:
    return {k: v.clone() for k, v in fourm.state_dict().items() if not k.startswith(("decoder", "heads"))}


@pytest.mark.parametrize("regime,labels,pool", [("frozen", "count", "grid"), ("full", "colour_shape", "mean"),
                                                ("lora", "semseg", "mean")])
def test_each_regime_lowers_the_loss(model_dir, tokenizers_dir, scenes, tmp_path, regime, labels, pool):
    before = encoder_state(FourM.from_pretrained(model_dir))
    model, scores = run_finetune(config(model_dir, tokenizers_dir, scenes, tmp_path, f"regime={regime}",
                                        f"labels={labels}", f"head.pool={pool}"), progress=False)
    curve = losses(tmp_path)
    assert len(curve) == 30 and sum(curve[-5:]) / 5 < 0.8 * sum(curve[:5]) / 5, curve
    after = encoder_state(model.merged())
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    if regime == "frozen":
        assert changed == []  # bit-identical: a probe never touches the encoder
    else:
        assert changed  # full: the encoder trained; lora: merged adapters moved the linears
    assert {"count": "accuracy", "colour_shape": "mAP", "semseg": "mIoU"}[labels] in scores
    head = TaskHead.from_pretrained(tmp_path / "head")
    torch.testing.assert_close(head.out.weight, model.head.out.weight)
    reloaded = FinetunedFourM.from_pretrained(tmp_path / "model")
    batch = next(iter(_batches(model_dir, tokenizers_dir, scenes)))
    torch.testing.assert_close(reloaded(batch), model.eval()(batch))


def _batches(model_dir, tokenizers_dir, scenes):
    from fourm.generation import Pipeline
    from fourm.transfer.features import EncoderInputs

    data, _ = EncoderInputs.from_corpus(Pipeline.from_pretrained(model_dir, tokenizers_dir), scenes, ["rgb"], limit=4)
    yield data.batch(range(4))


def test_lora_adapter_saves_loads_and_merges_to_the_same_outputs(model_dir, tokenizers_dir, scenes, tmp_path):
    model, _ = run_finetune(config(model_dir, tokenizers_dir, scenes, tmp_path, "regime=lora", "lora.r=4",
                                   "train.steps=10"), progress=False)
    model.eval()
    batch = next(iter(_batches(model_dir, tokenizers_dir, scenes)))
    with torch.no_grad():
        tuned = model.trunk.encode_features(batch).values
        base = FourM.from_pretrained(model_dir).encode_features(batch).values
        adapter = load_adapter(model_dir, tmp_path / "adapter").eval()
        loaded = adapter.get_base_model().encode_features(batch).values
        merged = FourM.from_pretrained(tmp_path / "merged").encode_features(batch).values
    assert not torch.allclose(tuned, base, atol=1e-4)  # the adapters learnt something
    torch.testing.assert_close(loaded, tuned)
    torch.testing.assert_close(merged, tuned, atol=1e-5, rtol=1e-4)
    trainable = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)
    # r (in + out) per adapted linear, nano (width 64, SwiGLU hidden 176, 2 encoder blocks), r = 4:
    # qkv 64 -> 192, proj 64 -> 64, w12 64 -> 352, w3 176 -> 64
    assert trainable == 2 * 4 * ((64 + 192) + (64 + 64) + (64 + 352) + (176 + 64))


def test_labels_from_a_csv_file(model_dir, tokenizers_dir, scenes, tmp_path, capsys):
    from fourm.data.corpus import CorpusReader

    rows = [(s["__key__"], len(s["det"])) for s in CorpusReader(scenes, ["det"])]
    (tmp_path / "labels.csv").write_text("key,label\n" + "".join(f"{k},{n * 0.5}\n" for k, n in rows))
    _, scores = run_finetune(config(model_dir, tokenizers_dir, scenes, tmp_path / "run", "task=regression",
                                    f"labels={tmp_path / 'labels.csv'}"), progress=False)
    curve = losses(tmp_path / "run")
    assert sum(curve[-5:]) < sum(curve[:5]) and {"mse", "mae"} <= set(scores)
    (tmp_path / "short.csv").write_text("".join(f"{k},{n}\n" for k, n in rows[:-3]))
    bad = [*ARGS, f"model={model_dir}", f"tokenizers={tokenizers_dir}", f"corpus={scenes}", f"out={tmp_path / 'b'}",
           "task=classification", f"labels={tmp_path / 'short.csv'}"]
    assert main(["finetune", *bad]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"has no label for 3 of 24 samples (first: '{rows[-3][0]}')" in error, error


@pytest.mark.parametrize("change,message", [
    (["inputs=[tok_normal]"], "does not know modality 'tok_normal'"),
    (["labels=weight"], "unknown corpus label 'weight'"),
    (["regime=lora", "lora.target_modules=[attn.qkvz]"], "attn.qkvz is no linear layer of the encoder"),
    (["labels=/nonexistent/labels.csv", "task=classification"], "label file /nonexistent/labels.csv does not exist"),
])
def test_bad_input_is_one_line(model_dir, tokenizers_dir, scenes, tmp_path, capsys, change, message):
    args = [*ARGS, f"model={model_dir}", f"tokenizers={tokenizers_dir}", f"corpus={scenes}", f"out={tmp_path}",
            "train.steps=1", *change]
    assert main(["finetune", *args]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # not the progress bars
    assert len(errors) == 1 and message in errors[0], errors
