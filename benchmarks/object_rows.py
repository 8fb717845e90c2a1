"""The object rows of several `fourm demo` runs against their training compute, as a table and a plot.

    python benchmarks/object_rows.py RUN [RUN ...] [--out object_rows.png]
    python benchmarks/object_rows.py RUN/fourm/checkpoints/step-* [--out ...]   # one run's checkpoints

For each `fourm demo` run folder: its training steps and samples seen (from ``fourm/config.yaml``), the
colour and shape word nll given RGB (``object_probe.py``), and the evaluation rows that need objects
(caption -> RGB, RGB -> caption, retrieval, semseg, boxes) from its ``evaluation.json``. A checkpoint
folder of a run (kept with ``train.keep_last=0``) stands for the model at its step: it is evaluated
as the demo evaluates (on the run's held-out scenes, written beside it as ``evaluation.json``) unless
that is there already. The points of one run's checkpoints lie on one learning-rate schedule, so they
show what more steps of *that* run bought, not what a shorter run would reach. The plot shows every
point against samples seen, so runs of other lengths or batch sizes line up.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROWS = {  # (task, metric) -> short label
    ("caption -> RGB", "named colours shown"): "caption->RGB colours shown",
    ("caption -> RGB", "colours shown not named"): "caption->RGB false alarms",
    ("RGB -> caption", "colour + shape named right"): "RGB->caption colour+shape",
    ("caption -> image retrieval", "recall@5"): "retrieval R@5",
    ("RGB -> semseg", "mIoU"): "semseg mIoU",
    ("RGB -> boxes", "recall @ IoU 0.5"): "boxes recall",
}


def summarise(path: Path) -> dict:
    import yaml
    from object_probe import probe

    from fourm.data.corpus import CorpusReader
    from fourm.model.fourm import FourM
    from fourm.tokenization.base import load_tokenizers

    checkpoint = (path / "state.json").is_file()
    run = path.parents[2] if checkpoint else path  # RUN/fourm/checkpoints/step-XXXXXXX
    config = yaml.safe_load((run / "fourm" / "config.yaml").read_text())
    batch = config["data"]["batch_size"]
    steps = json.loads((path / "state.json").read_text())["step"] if checkpoint else config["train"]["steps"]
    model_dir = path / "model" if checkpoint else run / "fourm" / "model"
    evaluation = path / "evaluation.json" if checkpoint else run / "evaluation.json"
    if not evaluation.is_file():  # a checkpoint: evaluated as the demo evaluates its final model
        from fourm.demo.stages import load_demo_config
        from fourm.eval.evaluate import EvaluateConfig, run_evaluation

        e = load_demo_config(None, []).evaluate
        run_evaluation(EvaluateConfig(model=str(model_dir), tokenizers=str(run / "tokenizers"),
                                      corpus=str(run / "heldout"), samples=e.samples, seed=e.seed, steps=e.steps,
                                      temperature=e.temperature, out=str(evaluation)))
    model = FourM.from_pretrained(model_dir).eval()
    names = ["caption"] + (["tok_rgb"] if "tok_rgb" in model.specs else [])
    words = probe(model, load_tokenizers(run / "tokenizers", names),
                  CorpusReader(run / "heldout", ["rgb", "caption"]).head(None))
    table = json.loads(evaluation.read_text())
    rows = {ROWS[(r["task"], r["metric"])]: r["model"] for r in table["rows"] if (r["task"], r["metric"]) in ROWS}
    name = f"{run.name}@{steps}" if checkpoint else run.name
    return {"run": name, "steps": steps, "samples": steps * batch,
            "colour nll": words["colour"]["given rgb"], "shape nll": words["shape"]["given rgb"], **rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("object_rows.png"))
    args = parser.parse_args(argv)
    results = sorted((summarise(r) for r in args.runs), key=lambda r: r["samples"])
    keys = [k for k in results[0] if k not in ("run", "steps", "samples")]
    print(f"{'run':16}{'steps':>7}" + "".join(f"{k:>28}" for k in keys))
    for r in results:
        print(f"{r['run']:16}{r['steps']:7d}" + "".join(f"{r.get(k, float('nan')):28.3f}" for k in keys))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (nll, rows) = plt.subplots(1, 2, figsize=(12, 3.6))
    samples = [r["samples"] for r in results]
    for key, chance in (("colour nll", 2.079), ("shape nll", 1.386)):
        line = nll.plot(samples, [r[key] for r in results], marker="o", label=key)[0]
        nll.axhline(chance, ls=":", color=line.get_color(), label=f"{key.split()[0]} chance")
    nll.set(xscale="log", xlabel="training samples seen", ylabel="nats (held-out)", title="caption words given RGB")
    nll.legend(fontsize=7)
    for key in ROWS.values():
        rows.plot(samples, [r.get(key, float("nan")) for r in results], marker="o", label=key)
    rows.set(xscale="log", xlabel="training samples seen", ylim=(0, 1), title="evaluation rows (held-out scenes)")
    rows.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
