"""Retrieval recall@1/5/10 on held-out data, chance beside each: caption -> image and image -> image.

    python benchmarks/retrieval.py --model RUN/model --tokenizers TOKENIZERS --corpus HELDOUT [--limit 256]

HELDOUT is a corpus the model never saw, with rgb, caption and caption_global, e.g.
``fourm pseudolabel --source scenes:256 --labellers text_embedding --out HELDOUT seed=1`` (the
training corpora use seed 0). The rows and how each is made are described in
:mod:`fourm.eval.retrieval`; ``--json`` also writes them as JSON. Search speed on a synthetic gallery:
``--speed N`` times torch / faiss / faiss-hnsw search of 100 queries in N clustered 384-d vectors.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def search_speed(n: int, queries: int = 100, k: int = 10, repeats: int = 5) -> None:
    import torch

    from fourm.retrieval.search import SEARCH_BACKENDS, make_backend

    # embeddings cluster (scenes that share objects): vectors around 1000 directions, not uniform noise,
    # on which graph search (HNSW) has nothing to exploit
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(1000, 384, generator=g)

    def draw(count: int) -> torch.Tensor:
        x = centres[torch.randint(len(centres), (count,), generator=g)] + 0.5 * torch.randn(count, 384, generator=g)
        return torch.nn.functional.normalize(x, dim=1)

    gallery, q = draw(n), draw(queries)
    _, exact = make_backend("torch", gallery).search(q, k)
    print(f"search of {queries} queries, top-{k}, gallery {n} x 384 ({torch.get_num_threads()} threads); "
          f"median of {repeats} interleaved rounds")
    backends, built = {}, {}
    for name, cls in SEARCH_BACKENDS.items():
        if not cls.available()[0]:
            print(f"  {name:11} not installed")
            continue
        start = time.perf_counter()
        backends[name] = make_backend(name, gallery)
        built[name] = time.perf_counter() - start
    times = {name: [] for name in backends}
    for _ in range(repeats):  # rounds of every backend in turn: a load change hits all of them alike
        for name, backend in backends.items():
            start = time.perf_counter()
            _, found = backend.search(q, k)
            times[name].append(time.perf_counter() - start)
    for name, backend in backends.items():
        _, found = backend.search(q, k)
        overlap = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), exact.tolist(), strict=True)) / exact.numel()
        print(f"  {name:11} build {built[name]:7.3f} s  search {statistics.median(times[name]) * 1e3:8.2f} ms  "
              f"recall@{k} vs exact {overlap:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model")
    p.add_argument("--tokenizers")
    p.add_argument("--corpus", help="held-out corpus")
    p.add_argument("--limit", type=int, default=256, help="held-out samples (gallery size)")
    p.add_argument("--modality", default="tok_caption_global")
    p.add_argument("--steps", type=int, default=1, help="MaskGIT steps of each prediction")
    p.add_argument("--decode", default="argmax,expected", help="comma-separated: argmax (tokens) | expected (codes)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="write the rows here too")
    p.add_argument("--speed", type=int, help="also time the search backends on a random gallery of this size")
    args = p.parse_args()
    if args.model:
        from fourm.eval.retrieval import evaluate_retrieval, format_rows

        results = {}
        for decode in [d for d in args.decode.split(",") if d]:
            start = time.perf_counter()
            rows = evaluate_retrieval(args.model, args.tokenizers, args.corpus, args.limit, (1, 5, 10), args.modality,
                                      progress=True, steps=args.steps, batch_size=args.batch_size, device=args.device,
                                      decode=decode)
            print(f"model {args.model}, held-out {args.corpus}, {args.modality}, decode={decode}"
                  f"{f' ({args.steps} MaskGIT step(s))' if decode == 'argmax' else ''}, "
                  f"{time.perf_counter() - start:.0f} s")
            print(format_rows(rows))
            results[decode] = rows
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.speed:
        search_speed(args.speed)
    if not args.model and not args.speed:
        p.error("give --model/--tokenizers/--corpus, --speed N, or both")


if __name__ == "__main__":
    main()
