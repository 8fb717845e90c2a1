"""Caption -> RGB of a trained model under several MaskGIT temperature schedules: the colours its images
show (the evaluation's judge) and how much two draws of one caption differ.

    python benchmarks/caption_to_rgb.py --run runs/demo [--samples 128] [--draws 2] [--steps 8]
        [--schedules linear] [--encode-every 1,2,4,8]

``--encode-every`` runs each schedule with the image's tokens encoded whole every that many steps, the steps
between encoding only those decided since and the caption afresh (``Target.encode_every``; 1, the default, is
exact), all from the same seeds.

Each schedule draws ``--draws`` images per held-out caption (MaskGIT, ``--steps`` steps, temperature 1
scaled by the schedule; argmax is temperature 0). Printed per schedule: named colours shown / shown
colours not named (``fourm.eval.metrics.colour_hits``, as the evaluation judges), and the share of RGB
tokens in which the first two draws of a caption differ: 0 for argmax, which draws one image per caption.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from fourm.data.corpus import CorpusReader
from fourm.eval import metrics
from fourm.generation import Pipeline
from fourm.generation.sampling import TEMPERATURE_SCHEDULES
from fourm.generation.schedule import DEFAULT_TEMPERATURE_SCHEDULES

DEFAULT = DEFAULT_TEMPERATURE_SCHEDULES["maskgit"]
SCHEDULES = {  # name: Target settings
    **{name + (" (default)" if name == DEFAULT else ""): dict(temperature=1.0, temperature_schedule=name)
       for name in TEMPERATURE_SCHEDULES},
    "argmax": dict(temperature=0.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/demo", help="a `fourm demo` folder (fourm/model, tokenizers, heldout)")
    parser.add_argument("--model", help="default: RUN/fourm/model")
    parser.add_argument("--samples", type=int, default=None, help="held-out scenes (default: all)")
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--schedules", help="comma-separated names of SCHEDULES' rows (default: all)")
    parser.add_argument("--encode-every", default="1", help="comma-separated Target.encode_every values")
    args = parser.parse_args()
    chosen = {n.strip() for n in args.schedules.split(",")} if args.schedules else None
    unknown = chosen - {name.split(" ")[0] for name in SCHEDULES} if chosen else set()
    if unknown:
        parser.error(f"--schedules: unknown {', '.join(sorted(unknown))}; known: {', '.join(SCHEDULES)}")
    rows = [(name + (f", encode every {every}" if every > 1 else ""), dict(settings, encode_every=every))
            for name, settings in SCHEDULES.items() if chosen is None or name.split(" ")[0] in chosen
            for every in (int(k) for k in args.encode_every.split(","))]
    run = Path(args.run)
    pipe = Pipeline.from_pretrained(args.model or run / "fourm" / "model", run / "tokenizers")
    captions = [r["caption"] for r in CorpusReader(run / "heldout", ["caption"])][: args.samples]
    conditions = [{"caption": c} for c in captions]
    print(f"caption -> RGB on {len(captions)} held-out scenes, MaskGIT {args.steps} steps, {args.draws} draws each")
    print(f"{'schedule':32s} {'named':>7s} {'not named':>10s} {'tokens differing':>17s} {'s / draw':>9s}")
    for name, settings in rows:
        hits, tokens, start = [], [], time.perf_counter()
        for d in range(args.draws if settings["temperature"] else 1):
            made = pipe.generate(conditions, ["tok_rgb"], seed=d * len(captions), batch_size=16,
                                 steps=args.steps, **settings)["tok_rgb"]
            hits.append(metrics.colour_hits(made.values, captions))
            tokens.append(torch.as_tensor(made.tokens))
        # argmax draws one image; a sampled schedule with one draw has nothing to compare
        differ = f"{float((tokens[0] != tokens[1]).float().mean()):.3f}" if len(tokens) > 1 else (
            "0.000" if not settings["temperature"] else "-")
        named, unnamed = (np.mean([h[k] for h in hits]) for k in ("named", "false_alarms"))
        seconds = (time.perf_counter() - start) / len(hits)
        print(f"{name:32s} {named:7.3f} {unnamed:10.3f} {differ:>17s} {seconds:9.1f}", flush=True)


if __name__ == "__main__":
    main()
