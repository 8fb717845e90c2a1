"""The demo's report: one self-contained HTML page (pictures embedded as base64 PNG) from a demo folder.

It only gathers what the stages wrote (:mod:`fourm.demo.stages`): the corpus sample grids, tokenizer
reconstructions, training curves, generation and retrieval grids under ``pictures/``, the
evaluation table ``evaluation.json`` and the stage stamps (timings). A missing part is named on the
page with the reason its stage gave, so a partial demo still reports honestly.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Sequence
from pathlib import Path

from fourm.io import atomic_path

# (file under the demo folder, heading, what a reader should see in it)
SECTIONS: list[tuple[str, str, str]] = [
    ("pictures/sample-0.png", "A training scene, every modality",
     "The built-in scenes source renders exact RGB, depth, normals, classes, instances, boxes and a caption; "
     "labellers add edges, palette, metadata and caption vectors."),
    ("pictures/reconstructions.png", "Tokenizers: input and round trip",
     "Held-out scenes before (odd columns) and after (even columns) encode -> 64 tokens -> decode."),
    ("fourm/curves.png", "Training curves",
     "FourM's training loss, and held-out loss per target modality against the unigram baseline."),
    ("pictures/chain-caption.png", "Caption -> RGB -> depth -> normals -> segmentation -> edges",
     "Chained generation from a held-out caption alone: each finished modality becomes an input of the next."),
    ("pictures/rgb-to-all.png", "RGB -> every other modality",
     "From a held-out image alone (left), each modality generated in turn; the true values in the row below."),
    ("pictures/depth-to-rgb.png", "Depth -> RGB",
     "From depth alone back to an image: the model must invent colours and the caption-free scene layout."),
    ("pictures/retrieval.png", "Caption -> image retrieval",
     "For a held-out caption, the images whose predicted caption vector is closest; the true image is framed."),
]


def _png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _table(evaluation: dict) -> str:
    head = ("<tr><th>task</th><th>metric</th><th>model</th><th>baseline</th><th>upper bound</th>"
            "<th>baseline is</th></tr>")
    rows = []
    for r in evaluation["rows"]:
        def cell(x):
            return "-" if x is None else f"{x:.3f}"
        cls = {True: "good", False: "bad", None: ""}[r.get("beats_baseline")]
        rows.append(f"<tr><td>{html.escape(r['task'])}</td><td>{html.escape(r['metric'])}"
                    f"{' (lower is better)' if not r['higher_is_better'] else ''}</td>"
                    f"<td class='{cls}'>{cell(r['model'])}</td><td>{cell(r['baseline'])}</td>"
                    f"<td>{cell(r['upper'])}</td><td>{html.escape(r['baseline_is'])}</td></tr>")
    for name, why in evaluation.get("skipped", {}).items():
        rows.append(f"<tr><td>{html.escape(name)}</td><td colspan='5'>skipped: {html.escape(why)}</td></tr>")
    note = (f"<p>{evaluation['samples']} held-out scenes (rendered with a seed never trained on). Upper bound: the "
            "tokenizer round trip of the truth. Green: the model beats the baseline; red: it does not. "
            f"Captions are sampled {evaluation.get('draws', 1)} times per scene (greedy decoding would repeat "
            "the likeliest object); the other rows take each token's most likely value.</p>")
    return note + f"<table>{head}{''.join(rows)}</table>"


def _stages(root: Path, names: Sequence[str] | None) -> tuple[str, dict]:
    stamps = {}
    for path in sorted((root / "stages").glob("*.json")):
        stamps[path.stem] = json.loads(path.read_text())
    cells, skipped = [], {}
    for name in stamps if names is None else names:
        s = stamps.get(name)
        if s is None:
            cells.append(f"<tr><td>{name}</td><td>not run</td></tr>")
        elif "skipped" in s:
            skipped[name] = s["skipped"]
            cells.append(f"<tr><td>{name}</td><td>skipped: {html.escape(s['skipped'])}</td></tr>")
        else:
            cells.append(f"<tr><td>{name}</td><td>{s['seconds']:.0f} s</td></tr>")
    return f"<table><tr><th>stage</th><th>time</th></tr>{''.join(cells)}</table>", skipped


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
img{max-width:100%;image-rendering:pixelated;border:1px solid #ddd}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}td.good{background:#dfd}td.bad{background:#fdd}
.missing{color:#a00}"""


def write_report(root: str | os.PathLike, out: str | os.PathLike | None = None,
                 stages: Sequence[str] | None = None) -> Path:
    """Write ``root/report.html`` (or ``out``) from what the demo stages left in ``root``.

    ``stages``: the demo's stage names in order, each listed even when it has not run (the demo passes
    them, so this page never imports the demo); default: the stages that left a stamp.
    """
    root = Path(root)
    stages, skipped = _stages(root, stages)
    parts = ["<h1>fourm demo</h1>",
             "<p>An any-to-any model in the style of 4M-21, trained from scratch on the built-in procedural scenes "
             f"in <code>{html.escape(str(root))}</code>.</p>", "<h2>Stages</h2>", stages]
    evaluation = root / "evaluation.json"
    parts.append("<h2>Evaluation</h2>")
    if evaluation.is_file():
        parts.append(_table(json.loads(evaluation.read_text())))
    else:
        parts.append(f"<p class='missing'>no evaluation: {html.escape(skipped.get('evaluate', 'not run'))}</p>")
    for rel, title, caption in SECTIONS:
        parts.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(caption)}</p>")
        path = root / rel
        if path.is_file():
            parts.append(f"<img src='{_png(path)}' alt='{html.escape(title)}'>")
        else:
            parts.append(f"<p class='missing'>not produced ({html.escape(rel)})</p>")
    # the chains a config adds (`chains:`, such as configs/demo_omni.yaml's) have no section of their own
    listed = {rel for rel, _, _ in SECTIONS}
    for path in sorted((root / "pictures").glob("*.png")):
        if f"pictures/{path.name}" not in listed and not path.stem.startswith("sample-"):
            title = " -> ".join(part.replace("-", " ") for part in path.stem.split("-to-"))
            parts.append(f"<h2>{html.escape(title)}</h2><p>A chain of the run's config: from each held-out "
                         "sample's given modality (left), every target in turn; the truth in the row below.</p>"
                         f"<img src='{_png(path)}' alt='{html.escape(title)}'>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>fourm demo</title><style>{STYLE}</style>"
            f"</head><body>{''.join(parts)}</body></html>\n")
    target = Path(out) if out else root / "report.html"
    with atomic_path(target) as tmp:
        tmp.write_text(page)
    return target
