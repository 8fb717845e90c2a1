"""Pseudo-labelling throughput: samples/s of the scene source and of each labeller.

    python benchmarks/labelling.py [--size 64] [--samples 128] [--threads 1] [--model NAME=PATH ...]

Labellers that need weights run only when given a model (``--model depth=/path/to/dpt``).
Each figure is the median of ``--repeats`` timed passes after one warm-up pass.
"""

from __future__ import annotations

import argparse

from timing import timed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", action="append", default=[], help="labeller=model path or hub id")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from pseudolabel.pipeline import plan_labellers
    from pseudolabel.registry import table
    from pseudolabel.sources.scenes import Scenes

    source = Scenes(count=args.samples, image_size=args.size)
    make = lambda: [s for s in source.shard(0, args.samples)]  # noqa: E731
    seconds = timed(make, args.repeats)
    print(f"{args.samples} samples at {args.size} px, {args.threads} thread(s)")
    print(f"{'scenes source':24} {args.samples / seconds:9.1f} samples/s")

    models = dict(m.split("=", 1) for m in args.model)
    names = [n for n, cls in table("labeller").items() if cls.default or n in models]
    options = {n: {"model": path} for n, path in models.items()}
    samples = make()
    have = set(Scenes.provides)
    for lab in plan_labellers(tuple(have - {"normal", "sam_instance"}), names, options):
        # scenes carry ground truth; labellers that it replaces are still timed on its images
        lab.setup({"semseg": list(source.extra_classes()["semseg"])})
        batches = [samples[i:i + args.batch] for i in range(0, len(samples), args.batch)]

        def run(lab=lab, batches=batches):
            for batch in batches:
                for sample, out in zip(batch, lab.label(batch), strict=True):
                    sample.update(out)

        seconds = timed(run, args.repeats)
        print(f"{lab.name:24} {args.samples / seconds:9.1f} samples/s")
    skipped = sorted(n for n, cls in table("labeller").items() if not cls.default and n not in models)
    print(f"not timed (need weights or packages; pass --model NAME=PATH): {', '.join(skipped)}")


if __name__ == "__main__":
    main()
