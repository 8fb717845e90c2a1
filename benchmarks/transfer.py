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

import torch

from fourm.config import load_config
from fourm.transfer.finetune import FinetuneConfig, run_finetune

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
    start = time.perf_counter()
    _, scores = run_finetune(load_config(FinetuneConfig, overrides=overrides), progress=False)
    return {**scores, "seconds": time.perf_counter() - start}


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
    p.add_argument("--pool", default="mean", help="pooled tasks' head: mean | grid (patch tokens side by side)")
    p.add_argument("--speed", action="store_true")
    p.add_argument("--out", help="also write the rows as JSON here")
    args = p.parse_args()
    scenes = make_scenes(Path(args.scenes_dir), max(args.sizes) + args.heldout, seed=2)
    if args.speed:
        speed(args, scenes)
    rows = []
    print(f"\n{'task':13} {'regime':7} {'labelled':>8}  {'pretrained':>10} {'random':>8}  {'gain':>7}  measure")
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            for regime in args.regimes:
                for size in args.sizes:
                    got = {init: run(args, scenes, task, size, init, regime,
                                     Path(tmp) / f"{task}-{regime}-{size}-{init}") for init in ("pretrained", "random")}
                    m = MEASURE[task]
                    a, b = got["pretrained"][m], got["random"][m]
                    rows.append({"task": task, "regime": regime, "labelled": size, **{i: got[i] for i in got}})
                    print(f"{task:13} {regime:7} {size:8d}  {a:10.3f} {b:8.3f}  {a - b:+7.3f}  {m} "
                          f"({got['pretrained']['seconds']:.0f} s + {got['random']['seconds']:.0f} s)", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
