"""The object rows of several `fourm demo` runs against their training compute, as a table and a plot.

    python benchmarks/object_rows.py RUN [RUN ...] [--out object_rows.png]

For each run folder: its training steps and samples seen (from ``fourm/config.yaml``), the colour and
shape word nll given RGB (``object_probe.py``), and the evaluation rows that need objects (caption ->
RGB, RGB -> caption, retrieval, semseg, boxes) from its ``evaluation.json``. The plot shows them against
samples seen, so runs of other lengths or batch sizes line up.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROWS = {  # (task, metric) -> short label
    ("caption -> RGB", "named colours shown"): "caption->RGB colours shown",
    ("RGB -> caption", "colour + shape named right"): "RGB->caption colour+shape",
    ("caption -> image retrieval", "recall@5"): "retrieval R@5",
    ("RGB -> semseg", "mIoU"): "semseg mIoU",
    ("RGB -> boxes", "recall @ IoU 0.5"): "boxes recall",
}


def summarise(run: Path) -> dict:
    import yaml
    from object_probe import probe

    from fourm.data.corpus import CorpusReader
    from fourm.model.fourm import FourM
    from fourm.tokenization.base import load_tokenizers

    config = yaml.safe_load((run / "fourm" / "config.yaml").read_text())
    steps, batch = config["train"]["steps"], config["data"]["batch_size"]
    model = FourM.from_pretrained(run / "fourm" / "model").eval()
    names = ["caption"] + (["tok_rgb"] if "tok_rgb" in model.specs else [])
    words = probe(model, load_tokenizers(run / "tokenizers", names),
                  CorpusReader(run / "heldout", ["rgb", "caption"]).head(None))
    table = json.loads((run / "evaluation.json").read_text())
    rows = {ROWS[(r["task"], r["metric"])]: r["model"] for r in table["rows"] if (r["task"], r["metric"]) in ROWS}
    return {"run": run.name, "steps": steps, "samples": steps * batch,
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

    fig, (nll, rows) = plt.subplots(1, 2, figsize=(10, 3.6))
    samples = [r["samples"] for r in results]
    for key, chance in (("colour nll", 2.079), ("shape nll", 1.386)):
        line = nll.plot(samples, [r[key] for r in results], marker="o", label=key)[0]
        nll.axhline(chance, ls=":", color=line.get_color(), label=f"{key.split()[0]} chance")
    nll.set(xscale="log", xlabel="training samples seen", ylabel="nats (held-out)", title="caption words given RGB")
    nll.legend(fontsize=7)
    for key in ROWS.values():
        rows.plot(samples, [r.get(key, float("nan")) for r in results], marker="o", label=key)
    rows.set(xscale="log", xlabel="training samples seen", ylim=(0, 1), title="evaluation rows (held-out scenes)")
    rows.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
