"""Global-embedding tokenizer quality and speed: cosine, retrieval fidelity, codebook use, vectors/s.

    python benchmarks/vector_tokenizers.py --corpus CORPUS [--tokenizers DIR] [--eval-corpus DIR]

Loads ``DIR/tok_caption_global`` (default ``/tmp/tok_vector``), or trains it first from
``--config`` on ``--corpus`` when it is missing. Held-out vectors are the last ``eval_samples`` of the
training corpus (the run's own split) and, with ``--eval-corpus``, a corpus made with another seed
(``fourm pseudolabel --source scenes:1000 --labellers text_embedding seed=1``).

Retrieval fidelity (recall@1): a query is the decoded reconstruction of a held-out vector, and it
hits when its most cosine-similar original in a gallery is its own original (duplicates count as
hits). Galleries: the held-out set, and the held-out set plus the whole training corpus (harder).
Speeds: vectors/s of ``encode`` (float16 values in, ids out) and ``decode`` (ids in, float16 values
out) in batches of ``--batch``, median of 3 timed passes after a warm-up, at ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from timing import timed

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True, help="training corpus with caption_global (e.g. scenes:2000)")
    p.add_argument("--tokenizers", default="/tmp/tok_vector", help="tokenizers folder (trained into if missing)")
    p.add_argument("--config", default=str(REPO / "configs" / "tokenizers" / "caption_global.yaml"))
    p.add_argument("--eval-corpus", help="a corpus made with another seed, scored as a second held-out set")
    p.add_argument("--eval-limit", type=int, default=1000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import torch

    from fourm.config import load_config
    from fourm.tokenization.mlp_vqvae import VectorVQVAE, values_to_vectors
    from tokenizers_train import vector
    from tokenizers_train.data import load_series
    from tokenizers_train.family import code_stats

    torch.set_num_threads(args.threads)
    folder = Path(args.tokenizers)
    run_config = folder / "runs" / "tok_caption_global" / "config.yaml"
    cfg = load_config(vector.Config, run_config if run_config.is_file() else args.config, corpus=args.corpus)
    path = vector.tokenizer_dir(folder, cfg.modality)
    if not (path / "config.json").is_file():
        print(f"training {cfg.modality} into {folder} ({args.config})", flush=True)
        start = time.perf_counter()
        vector.run(cfg, folder, progress=False)
        print(f"trained in {time.perf_counter() - start:.0f} s", flush=True)
    model = VectorVQVAE.from_pretrained(path)
    c = model.config
    print(f"{path}: {c.quantizer} {c.vocab_size} codes x {c.num_tokens} tokens, input {c.input_dim}, "
          f"MLP {c.dim} x {c.depth}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")

    train_x, eval_x = vector.load_vectors(cfg)
    sets = {f"held-out ({len(eval_x)}, same corpus)": eval_x}
    if args.eval_corpus:
        values, _, _ = load_series(args.eval_corpus, c.source, 0, args.eval_limit)
        sets[f"other seed ({len(values)})"] = values_to_vectors(values, c)
    print(f"\n{'set':28} {'cos':>7} {'R@1 set':>8} {'R@1 +train':>10} {'usage':>6} {'perplexity':>10}")
    with torch.no_grad():
        for name, x in sets.items():
            s = vector.evaluate_vectors(model, x)
            recon = model.decode_vectors(model.encode(x))
            wide = vector.recall_at_1(recon, x, torch.cat([x, train_x]))  # gallery: this set + training corpus
            print(f"{name:28} {s['cos']:7.4f} {s['recall@1']:8.3f} {wide:10.3f} {s['usage']:6.3f} "
                  f"{s['perplexity']:10.1f}")
        s = code_stats(model.encode(train_x), model.vocab_size)
        print(f"{'training set (' + str(len(train_x)) + ')':28} {'':>7} {'':>8} {'':>10} {s['usage']:6.3f} "
              f"{s['perplexity']:10.1f}")

        values = list(train_x[:args.batch].half().numpy())
        ids = model.encode(values)
        encode_s = timed(lambda: model.encode(values))
        decode_s = timed(lambda: model.decode(ids))
    print(f"\nencode {len(values) / encode_s:10.0f} vectors/s   decode {len(values) / decode_s:10.0f} vectors/s "
          f"(batch {len(values)}, {args.threads} thread(s))")


if __name__ == "__main__":
    main()
