"""Scene graph and table tokenizers on held-out scenes: exact round trips, token counts, speed; the scenes
source's speed with and without the two series.

    python benchmarks/structured_tokenizer.py --tokenizers TOKENIZERS [--samples 1024] [--seed 1]

``TOKENIZERS`` holds the ``scene_graph`` and ``table`` folders that ``fourm train-tokenizer --config
configs/tokenizers/text.yaml`` writes from a corpus with ``series=[scene_graph,table]``. Held-out scenes are
rendered here with seed ``--seed`` (training corpora use seed 0). Rows: the round trip ``decode(encode(x))``
(graphs: exact; tables: every cell within half a level of its column's binning, words exact) beside a trivial
baseline, another scene's graph or table taken as this one's (``tokenizers_train.text`` measures both).
Speeds are per CPU second, one thread.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from timing import cpu_timed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizers", required=True, help="a folder with scene_graph/ and table/ tokenizers")
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--size", type=int, default=64, help="image size the scenes are rendered at")
    args = p.parse_args()

    import torch

    from fourm.tokenization.text import SequenceTokenizer
    from pseudolabel.sources.scenes import render_scene
    from tokenizers_train.text import round_trip

    torch.set_num_threads(1)
    seeds = [args.seed * 1_000_003 + i for i in range(args.samples)]
    scenes = [render_scene(s, args.size, ("scene_graph", "table")) for s in seeds]
    report: dict = {"samples": args.samples}
    for modality in ("scene_graph", "table"):
        tok = SequenceTokenizer.from_pretrained(Path(args.tokenizers) / modality)
        values = [s[modality] for s in scenes]
        ids = tok.encode(values)
        lengths = [len(row) for row in ids]
        other = values[1:] + values[:1]
        report[modality] = {
            "round_trip": round_trip(modality, values, tok.decode(ids), tok),
            "another_scene": round_trip(modality, values, other, tok),
            "mean_tokens": round(sum(lengths) / len(lengths), 1), "max_tokens": max(lengths),
            "truncated": sum(n > tok.max_tokens for n in map(len, tok.encode(values, truncate=False))),
            "encoded_per_s": round(len(values) / cpu_timed(lambda t=tok, v=values: t.encode(v)), 1),
            "decoded_per_s": round(len(values) / cpu_timed(lambda t=tok, i=ids: t.decode(i)), 1),
        }
    few = seeds[:256]
    for name, series in (("scenes_per_s", ()), ("scenes_per_s_with_graph_and_table", ("scene_graph", "table"))):
        report[name] = round(len(few) / cpu_timed(lambda s=series: [render_scene(x, args.size, s) for x in few]), 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
