"""Does pre-training help? Linear probes and LoRA on a trained FourM beside the same on a fresh one.

    python benchmarks/transfer.py --model runs/demo/fourm/model --tokenizers runs/demo/tokenizers \
        [--sizes 64 256 1024] [--steps 200] [--tasks count colour_shape semseg] [--regimes frozen lora]

Labelled data are fresh built-in scenes (seed 2: never seen in pre-training), rendered once into
``--scenes-dir`` with their exact labels; the last ``--heldout`` of them are the evaluation set. For
each task (``fourm.transfer.labels.LABELS``: object count as classes, "is there a <colour> <shape>" as
32 sigmoid labels, dense semantic segmentation from RGB) and each number of labelled scenes, the same
head trains for the same steps and batch on the pre-trained encoder and on a randomly initialised
FourM of the same architecture (``init=random``), frozen (a linear probe) and under LoRA (rank 8 on
every attention and MLP linear of the encoder; the fresh model's LoRA adapts a random trunk, the
fair "same parameters trained" baseline). The table prints held-out accuracy / mAP / mIoU.

Beside them (``--cnn-tasks``: count and colour_shape; semseg gets a tiny FCN on request) a small CNN
trains from scratch on the same labelled scenes and labels and is judged on the same held-out scenes
by the same measure: 3x3 conv + ReLU + 2x2 max pool stages (32, 64, 128 channels), a global average
pool, a linear layer; AdamW, the same batch size. It trains for the same wall-clock seconds as the
pre-trained run of that task, regime and size took in all (loading, tokenizing the scenes, the steps,
evaluating; the row says how much of that was the probe's steps), not for the same steps: its column
says how many steps that bought. Process CPU seconds of both go to ``--out``.

Measured on the default demo run (nano, width 128, 2000 steps), frozen mean-pool probes of 200 steps,
seeds 0 / 1 / 2, a 2-core CPU shared with other jobs for both sides (wall clock 5-24 s per run):
count accuracy at 64 / 256 / 1024 labels, pre-trained 0.37-0.38 / 0.44-0.46 / 0.46-0.49, fresh FourM
0.38-0.41 / 0.44-0.47 / 0.43-0.46, CNN 0.29-0.46 / 0.31-0.50 / 0.32-0.47 on 47-122 steps (chance 0.32);
colour_shape mAP pre-trained 0.17 / 0.22 / 0.24-0.25, fresh 0.11-0.12 / 0.15 / 0.15, CNN 0.08 at
every size (the positive rate: 27-124 steps do not leave the all-absent plateau). The README has the
table, a 1000-step run and a 120-s CNN run.

``--speed`` also prints the frozen encoder's features per second at the demo model's size and at
the reference's tiny size (random weights: speed does not depend on them), and LoRA's trainable
parameter counts. Figures measured on this project's CPU are in the closing note of issue 19 / README.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fourm.config import load_config
from fourm.data.corpus import CorpusReader
from fourm.transfer.finetune import FinetuneConfig, run_finetune
from fourm.transfer.heads import metrics
from fourm.transfer.labels import LABELS, encode_labels, labels_for

MEASURE = {"count": "accuracy", "colour_shape": "mAP", "shape": "mAP", "semseg": "mIoU"}


def make_scenes(folder: Path, count: int, seed: int) -> Path:
    from pseudolabel.pipeline import PseudolabelConfig, run_pipeline

    if not (folder / "manifest.json").is_file():
        run_pipeline(PseudolabelConfig(source=f"scenes:{count}", out=str(folder), labellers=[], image_size=64,
                                       shard_size=256, seed=seed), progress=True)
    return folder


def run(args, scenes: Path, task: str, size: int, init: str, regime: str, out: Path) -> dict:
    overrides = [f"model={args.model}", f"corpus={scenes}", f"out={out}",
                 *([f"tokenizers={args.tokenizers}"] if args.tokenizers else []),
                 f"labels={task}", f"init={init}", f"regime={regime}", f"samples={size}",
                 *([f"head.pool={args.pool}"] if task != "semseg" else []),
                 f"heldout={args.heldout}", f"limit={max(args.sizes) + args.heldout}", f"batch_size={args.batch_size}",
                 f"train.steps={args.steps}", f"train.lr={args.lr if regime == 'frozen' else args.lora_lr}",
                 "train.warmup_steps=10", "train.eval_every=0", "train.save_every=0", "train.log_every=50",
                 "train.use_tensorboard=false", f"train.seed={args.seed}"]
    start, cpu = time.perf_counter(), time.process_time()
    _, scores = run_finetune(load_config(FinetuneConfig, overrides=overrides), progress=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    # the loop's own timing of its steps: how much of ``seconds`` was training (the rest: loading the
    # model, tokenizing the scenes, evaluating, saving)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    timed = [r for r in rows if "s_per_step" in r]
    steps = np.diff([0] + [r["step"] for r in timed])
    return {**scores, "seconds": seconds, "cpu_seconds": cpu, "train_seconds": float(sum(r["s_per_step"] * n
                                                                     for r, n in zip(timed, steps, strict=True)))}


# ----------------------------------------------------------------------------- the small-CNN baseline
class SmallCNN(nn.Module):
    """The classic small image classifier: stages of 3x3 conv + ReLU + 2x2 max pool, a global average
    pool, a linear head. ``dense``: no pooling, a 1x1 conv per pixel instead (a tiny FCN).

    (B, 3, H, W) in [0, 1] -> (B, C) logits, or (B, C, H, W) when dense.
    """

    def __init__(self, num_outputs: int, widths: tuple[int, ...] = (32, 64, 128), dense: bool = False):
        super().__init__()
        layers, prev = [], 3
        for width in widths:
            layers += [nn.Conv2d(prev, width, 3, padding=1), nn.ReLU()] + ([] if dense else [nn.MaxPool2d(2)])
            prev = width
        self.features = nn.Sequential(*layers)
        self.dense = dense
        self.out = nn.Conv2d(prev, num_outputs, 1) if dense else nn.Linear(prev, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.out(x) if self.dense else self.out(x.mean((2, 3)))


LOSSES = {"classification": F.cross_entropy, "multilabel": F.binary_cross_entropy_with_logits,
          "dense_classification": F.cross_entropy}


def scene_labels(scenes: Path, task: str, limit: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The first ``limit`` scenes' RGB (N, 3, H, W) in [0, 1] and labels, read as ``fourm finetune`` reads
    them (the same samples in the same order, ``fourm.transfer.labels``); -> (images, targets, outputs)."""
    spec = LABELS[task]
    images, keys, extras = [], [], []
    for i, sample in enumerate(CorpusReader(scenes, ["rgb", spec.series])):
        if i >= limit:
            break
        images.append(sample["rgb"])
        keys.append(sample["__key__"])
        extras.append({spec.series: sample.get(spec.series)})
    targets, classes = encode_labels(labels_for(keys, task, extras), keys, spec.task, spec.classes)
    rgb = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255  # (N, H, W, 3) -> (N, 3, H, W)
    return rgb, targets, len(classes)


def run_cnn(args, scenes: Path, task: str, size: int, seconds: float) -> dict:
    """A small CNN trained from scratch on the same ``size`` labelled scenes for ``seconds`` of wall
    clock, or of this process's CPU time with ``--cnn-budget cpu`` (batches of ``--batch-size``, AdamW),
    judged on the same held-out scenes by the same measure."""
    images, targets, outputs = scene_labels(scenes, task, max(args.sizes) + args.heldout)
    train_x, train_y = images[:size], targets[:size]
    held = slice(len(images) - args.heldout, len(images))
    kind = LABELS[task].task
    torch.manual_seed(args.seed)
    model = SmallCNN(outputs, dense=kind.startswith("dense"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.cnn_lr)
    order = torch.randperm(size)
    steps, at = 0, 0
    start, cpu = time.perf_counter(), time.process_time()
    clock = time.process_time if args.cnn_budget == "cpu" else time.perf_counter
    begun = clock()
    while clock() - begun < seconds:
        chosen = order[at: at + args.batch_size]
        at += args.batch_size
        if at >= size:  # a new epoch: a fresh permutation
            order, at = torch.randperm(size), 0
        loss = LOSSES[kind](model(train_x[chosen]), train_y[chosen])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
    trained, cpu = time.perf_counter() - start, time.process_time() - cpu
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x) for x in images[held].split(256)])
    return {**metrics(kind, pred, targets[held], outputs), "steps": steps, "seconds": trained, "cpu_seconds": cpu}


def speed(args, scenes: Path) -> None:
    from fourm.generation import Pipeline
    from fourm.model.sizes import create_model
    from fourm.transfer.features import EncoderInputs, extract_features
    from fourm.transfer.finetune import wrap_lora

    pipe = Pipeline.from_pretrained(args.model, args.tokenizers)
    data, _ = EncoderInputs.from_corpus(pipe, scenes, ["rgb"], limit=256)
    demo = pipe.model
    tiny = create_model("tiny", list(demo.config.modalities), demo.config.scale,
                        max_tokens=dict(demo.config.max_tokens))
    for name, model in (("demo (nano, width 128)", demo), ("tiny (4M-21 size)", tiny)):
        extract_features(model, data, batch_size=64, progress=False)  # warm-up
        start = time.perf_counter()
        extract_features(model, data, batch_size=64, progress=False)
        rate = len(data) / (time.perf_counter() - start)
        lora = wrap_lora(type(model)(model.config), load_config(FinetuneConfig).lora)
        trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
        encoder = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("embed.", "encoder")))
        print(f"{name}: {rate:.0f} rgb samples/s through the frozen encoder ({torch.get_num_threads()} threads); "
              f"LoRA r=8 trains {trainable:,} parameters, {100 * trainable / encoder:.2f}% of the encoder's "
              f"{encoder:,}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--tokenizers")
    p.add_argument("--scenes-dir", default="runs/transfer_scenes")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--heldout", type=int, default=256)
    p.add_argument("--tasks", nargs="+", default=["count", "colour_shape", "semseg"])
    p.add_argument("--regimes", nargs="+", default=["frozen", "lora"])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--lora-lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cnn-tasks", nargs="+", default=["count", "colour_shape"],
                   help="tasks with the small-CNN baseline (semseg: a tiny FCN)")
    p.add_argument("--cnn-lr", type=float, default=1e-3)
    p.add_argument("--cnn-budget", choices=["wall", "cpu"], default="wall",
                   help="the CNN's time: the pre-trained run's wall clock, or its process CPU seconds (fairer "
                        "on a machine shared with other jobs, where a run can wait for a core)")
    p.add_argument("--pool", default="mean", help="pooled tasks' head: mean | grid (patch tokens side by side)")
    p.add_argument("--speed", action="store_true")
    p.add_argument("--out", help="also write the rows as JSON here")
    args = p.parse_args()
    scenes = make_scenes(Path(args.scenes_dir), max(args.sizes) + args.heldout, seed=2)
    if args.speed:
        speed(args, scenes)
    rows = []
    print(f"\n{'task':13} {'regime':7} {'labelled':>8}  {'pretrained':>10} {'random':>8}  {'gain':>7}  "
          f"{'cnn (same time)':>15}  measure")
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            for regime in args.regimes:
                for size in args.sizes:
                    got = {init: run(args, scenes, task, size, init, regime,
                                     Path(tmp) / f"{task}-{regime}-{size}-{init}") for init in ("pretrained", "random")}
                    if task in args.cnn_tasks:  # as long as the pre-trained run took, all of it
                        budget = got["pretrained"]["cpu_seconds" if args.cnn_budget == "cpu" else "seconds"]
                        got["cnn"] = run_cnn(args, scenes, task, size, budget)
                    m = MEASURE[task]
                    a, b = got["pretrained"][m], got["random"][m]
                    cnn = f"{got['cnn'][m]:.3f} ({got['cnn']['steps']} st)" if "cnn" in got else "n/a"
                    rows.append({"task": task, "regime": regime, "labelled": size, **got})
                    print(f"{task:13} {regime:7} {size:8d}  {a:10.3f} {b:8.3f}  {a - b:+7.3f}  {cnn:>15}  {m} "
                          f"({got['pretrained']['seconds']:.0f} s, {got['pretrained']['train_seconds']:.0f} s of "
                          f"it training + {got['random']['seconds']:.0f} s)", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
