"""FourM training end to end on a synthetic token corpus: it learns beyond the unigram baseline,
resumes after SIGKILL on the same loss curve, and trains in two DDP processes on this CPU."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fourm.config import load_config
from fourm.data.corpus import CorpusReader, storage_entry, write_manifest, write_shard
from fourm.kinds import token_count_key
from fourm.modalities import MODALITIES, ModalityScale, Storage
from fourm.model.fourm import FourM
from fourm.train.curves import read_metrics
from fourm.train.pretrain import FourMTrainConfig, run_training

from .conftest import make_token_corpus

ARGS = ["model.size=nano", "data.batch_size=8", "data.heldout=16", "masking.input_budget=12",
        "masking.target_budget=12", "train.lr=3e-3", "train.warmup_steps=5", "train.log_every=1",
        "train.precision=fp32"]


def config(corpus, out, *extra):
    return load_config(FourMTrainConfig, overrides=[*ARGS, f"data.corpora=[{corpus}]", f"out={out}", *extra])


def test_learns_below_the_unigram_baseline(token_corpus, tmp_path):
    cfg = config(token_corpus, tmp_path, "train.steps=200", "train.eval_every=200", "train.save_every=0")
    model = run_training(cfg, progress=False)
    scores = read_metrics(tmp_path / "metrics.jsonl")[-1]
    ratios = {k: v for k, v in scores.items() if k.startswith("eval/vs_unigram/")}
    assert set(ratios) == {f"eval/vs_unigram/{m}" for m in ("tok_rgb", "tok_depth", "caption")}
    # every modality is predictable from the others: each must fall clearly below its unigram loss
    assert all(v < 0.9 for v in ratios.values()), ratios
    assert ratios["eval/vs_unigram/caption"] < 0.6, ratios
    reloaded = FourM.from_pretrained(tmp_path / "model")
    assert reloaded.config == model.config
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "curves.png").is_file()


def cli(corpus, out, *extra):
    return [sys.executable, "-m", "fourm.cli", "train", *ARGS, f"data.corpora=[{corpus}]", f"out={out}",
            "train.steps=40", "train.save_every=10", "train.eval_every=0", *extra]


def losses(run):
    return [(r["step"], r["loss"]) for r in read_metrics(Path(run) / "metrics.jsonl") if "loss" in r]


@pytest.mark.parametrize("loader", ["memory", "stream"])
def test_sigkill_and_resume_gives_the_same_loss_curve(token_corpus, tmp_path, loader):
    """In memory and streamed shard by shard (windows of one shard, so the run crosses several)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [f"data.loader={loader}", "data.window_shards=1"]
    subprocess.run(cli(token_corpus, tmp_path / "a", *args), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(cli(token_corpus, tmp_path / "b", *args), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (tmp_path / "b" / "checkpoints" / "step-0000020" / "state.json").exists():
        assert time.time() < deadline and proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b" / "model").exists()
    subprocess.run(cli(token_corpus, tmp_path / "b", *args), check=True, env=env, capture_output=True)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    a, b = FourM.from_pretrained(tmp_path / "a" / "model"), FourM.from_pretrained(tmp_path / "b" / "model")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


LAUNCHED = """
import json, os, sys
import torch
import torch.distributed as dist
from fourm.config import load_config
from fourm.train.pretrain import FourMTrainConfig, run_training
model = run_training(load_config(FourMTrainConfig, overrides=sys.argv[1:]), progress=False)
print(json.dumps({"rank": dist.get_rank(), "world": dist.get_world_size(), "recomputed": model.activation_checkpointing,
                  "weights": sum(float(p.double().sum()) for p in model.parameters() if isinstance(p, torch.Tensor))}))
"""


def launch(tmp_path, corpus, out, *extra):
    """Two processes under `accelerate launch --multi_gpu`: on a machine without GPUs, two gloo processes
    (`--cpu` would silently run one); returns each rank's report."""
    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script),
           *ARGS, f"data.corpora=[{corpus}]", f"out={out}", "train.steps=6", "train.save_every=3",
           "train.eval_every=0", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return sorted((json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")),
                  key=lambda r: r["rank"])


def weights(run):
    from safetensors.torch import load_file

    return load_file(str(Path(run) / "model" / "model.safetensors"))


@pytest.mark.slow
def test_two_processes_train_together_with_ddp_and_with_fsdp(token_corpus, tmp_path):
    """DDP: both ranks in one process group end with the same weights. FSDP (parameters sharded over
    the two), with activation checkpointing (the backward's recompute of each block runs on the weights
    the backward gathered): the same weights as DDP, within float tolerance; its sharded checkpoint
    resumes on the same loss curve."""
    import shutil

    ddp = launch(tmp_path, token_corpus, tmp_path / "ddp")
    assert [(r["rank"], r["world"]) for r in ddp] == [(0, 2), (1, 2)]
    assert ddp[0]["weights"] == ddp[1]["weights"]  # replicas kept in step: gradients were all-reduced

    fsdp = tmp_path / "fsdp"
    launched = launch(tmp_path, token_corpus, fsdp, "train.parallel=fsdp", "train.use_activation_checkpointing=true")
    assert [(r["world"], r["recomputed"]) for r in launched] == [(2, True), (2, True)]
    assert (fsdp / "checkpoints" / "step-0000003" / "sharded").is_dir()
    assert (fsdp / "checkpoints" / "step-0000003" / "rng-1.safetensors").is_file()
    reference, sharded = weights(tmp_path / "ddp"), weights(fsdp)
    assert reference.keys() == sharded.keys()
    for name, value in reference.items():
        torch.testing.assert_close(sharded[name], value, rtol=1e-3, atol=1e-4, msg=name)
    (steps, curve), (ddp_steps, ddp_curve) = (zip(*losses(run), strict=True) for run in (fsdp, tmp_path / "ddp"))
    assert steps == ddp_steps and curve == pytest.approx(ddp_curve, rel=1e-4)

    # one sample a rank and few targets: each rank's batch lacks some modality in some step, and their
    # tables and heads must still take part in the sharded gradient reduction (else gloo aborts)
    sparse = ["train.parallel=fsdp", "data.batch_size=1", "masking.target_budget=3"]
    launch(tmp_path, token_corpus, fsdp / "sparse", *sparse)
    whole, final = losses(fsdp / "sparse"), weights(fsdp / "sparse")
    # resume from its step-3 checkpoint, as after a kill: the same curve and weights as the whole run
    shutil.rmtree(fsdp / "sparse" / "checkpoints" / "step-0000006")
    shutil.rmtree(fsdp / "sparse" / "model")
    launch(tmp_path, token_corpus, fsdp / "sparse", *sparse)
    assert losses(fsdp / "sparse") == whole
    for name, value in final.items():
        torch.testing.assert_close(weights(fsdp / "sparse")[name], value, rtol=0, atol=0, msg=name)


def test_activation_checkpointing_trains_on_the_same_loss_curve(token_corpus, tmp_path):
    """``train.use_activation_checkpointing=true`` recomputes the blocks in the backward: the same gradients,
    so the same losses step by step and the same weights."""
    runs = {}
    for name, extra in (("plain", []), ("recomputed", ["train.use_activation_checkpointing=true"])):
        cfg = config(token_corpus, tmp_path / name, "train.steps=8", "train.eval_every=0", "train.save_every=0",
                     *extra)
        runs[name] = run_training(cfg, progress=False)
    assert runs["recomputed"].activation_checkpointing and not runs["plain"].activation_checkpointing
    (steps, curve), (plain_steps, plain_curve) = (zip(*losses(tmp_path / n), strict=True)
                                                  for n in ("recomputed", "plain"))
    assert steps == plain_steps and curve == pytest.approx(plain_curve, rel=1e-5)
    plain, recomputed = runs["plain"].state_dict(), runs["recomputed"].state_dict()
    for (name, a), b in zip(plain.items(), recomputed.values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)


def test_fine_tuning_from_a_model_that_lacks_a_modality_grows_it(token_corpus, tmp_path):
    """Was refused; now the model gets the modality (fourm.transfer.new_modality, tested there in full)."""
    from fourm.train.pretrain import FourMTask

    task = FourMTask(config(token_corpus, tmp_path / "run"))
    wide = task.model_config()
    narrower = replace(wide, modalities=["tok_rgb", "caption"], scale=replace(wide.scale, vocab_sizes={}),
                       max_tokens={}, input_dims={})
    narrow = FourM(narrower)
    narrow.save_pretrained(tmp_path / "narrow")
    grown = FourMTask(config(token_corpus, tmp_path / "run", f"model.init={tmp_path / 'narrow'}")).build_model()
    assert grown.names == ["tok_rgb", "tok_depth", "caption"]
    assert torch.equal(grown.heads["caption"].weight, narrow.heads["caption"].weight)


def test_model_overrides_change_the_corpus_scale_and_old_names_are_refused(token_corpus, tmp_path):
    from fourm.train.pretrain import FourMTask

    corpus_scale = FourMTask(config(token_corpus, tmp_path / "run")).model_config().scale
    assert corpus_scale.vocab_sizes == {"tok_rgb": 32, "tok_depth": 32, "caption": 300}
    task = FourMTask(config(token_corpus, tmp_path / "run", "model.overrides.scale.vocab_sizes.tok_rgb=64"))
    assert task.model_config().scale.vocab_sizes == {"tok_rgb": 64, "tok_depth": 32, "caption": 300}
    task = FourMTask(config(token_corpus, tmp_path / "run", "model.overrides.tie_heads=true"))
    with pytest.raises(ValueError, match="'tie_heads' was renamed: use 'use_tied_heads'"):
        task.model_config()


def test_a_modality_with_its_own_patch_size_trains_at_the_corpus_scale(tmp_path):
    """The token corpus records its scale (tok_depth in 16 px patches, 4 tokens, beside tok_rgb's 8 px,
    16 tokens); training builds the model at that scale instead of one patch for every image modality."""
    corpus = tmp_path / "tokens"
    make_token_corpus(corpus, num_samples=64)
    manifest = json.loads((corpus / "manifest.json").read_text())
    with_depth_in_4 = tmp_path / "tokens16"
    rows = {"tok_rgb": 16, "tok_depth": 4, "caption": 8}
    reader = CorpusReader(corpus, list(rows))
    storages = {m: Storage("npy", "int16") for m in rows}
    for shard in range(reader.num_shards):
        samples = [{**s, "tok_depth": s["tok_depth"][::4]} for s in reader.shard(shard)]
        write_shard(with_depth_in_4, shard, samples, storages)
    scale = ModalityScale.from_grids(32, {"tok_rgb": 16, "tok_depth": 4})
    write_manifest(with_depth_in_4, {
        "modalities": {m: storage_entry(storages[m], vocab_size=manifest["modalities"][m]["vocab_size"],
                                        **{token_count_key(MODALITIES[m]): n}) for m, n in rows.items()},
        "image_size": 32, "scale": scale.record()})
    assert scale.patch_size == 8 and scale.patch_sizes == {"tok_depth": 16}

    model = run_training(config(with_depth_in_4, tmp_path / "run", "train.steps=3", "train.eval_every=0",
                                "train.save_every=0"), progress=False)
    assert model.config.scale.patch_sizes == {"tok_depth": 16}
    assert model.specs["tok_depth"].tokens == 4 and model.specs["tok_depth"].patch_size == 16
    assert model.specs["tok_rgb"].tokens == 16 and model.specs["tok_rgb"].patch_size == 8
    assert FourM.from_pretrained(tmp_path / "run" / "model").specs["tok_depth"].tokens == 4


def tiny_image_tokenizer(path, modality: str = "tok_rgb", codes: int = 32):
    from fourm.tokenization.vqvae import ImageVQConfig, ImageVQVAE

    source = {"tok_rgb": "rgb", "tok_depth": "depth"}[modality]
    tokenizer = ImageVQVAE(ImageVQConfig(modality=modality, source=source, image_size=32, patch_size=8, dim=16,
                                         encoder_depth=1, decoder_depth=1, heads=2, codebook_size=codes,
                                         codebook_dim=4))
    tokenizer.save_pretrained(path)
    return tokenizer


def test_a_codebook_head_reads_its_tokenizers_codes_and_keeps_them(token_corpus, tmp_path):
    """model.head_codebooks: tok_rgb's head scores codes by the tokenizer's own vectors (unit length), which
    training leaves as they are and the saved model keeps."""
    tokenizer = tiny_image_tokenizer(tmp_path / "tok_rgb")
    model = run_training(config(token_corpus, tmp_path / "run", "train.steps=5", "train.eval_every=0",
                                "train.save_every=0", f"model.head_codebooks={{tok_rgb: {tmp_path / 'tok_rgb'}}}"),
                         progress=False)
    expected = torch.nn.functional.normalize(tokenizer.code_vectors(), dim=-1)
    assert model.config.head_codebooks == {"tok_rgb": 4}
    torch.testing.assert_close(model.heads["tok_rgb"].codebook, expected)
    torch.testing.assert_close(FourM.from_pretrained(tmp_path / "run" / "model").heads["tok_rgb"].codebook, expected)


@pytest.mark.parametrize(("modality", "codes", "extra", "message"), [
    ("tok_depth", 32, [], "holds a ImageVQVAE for 'tok_depth', not an image tokenizer for 'tok_rgb'"),
    ("tok_rgb", 64, [], "has 64 codes, the corpus' tok_rgb 32: not the tokenizer that made it"),
    ("tok_rgb", 32, ["model.init=somewhere"], "model.init already has its own"),
])
def test_a_codebook_from_the_wrong_tokenizer_is_named(token_corpus, tmp_path, modality, codes, extra, message):
    from fourm.train.pretrain import FourMTask

    tiny_image_tokenizer(tmp_path / "tok", modality, codes)
    with pytest.raises(ValueError, match=message):
        FourMTask(config(token_corpus, tmp_path / "run", f"model.head_codebooks={{tok_rgb: {tmp_path / 'tok'}}}",
                         *extra))
