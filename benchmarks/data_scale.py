"""Training data at scale: loader throughput and peak memory against corpus size, in memory vs streamed.

    python benchmarks/data_scale.py [--sizes 1000 10000 100000 1000000] [--root /tmp/fourm-scale]

Token corpora at the demo's shapes (five 64-token image modalities, caption, boxes, caption vector,
and the 64 px RGB as PNG) are written once under ``--root`` (10^6 samples: about 17 GB):
``--template`` distinct synthetic samples (random ids, smooth random images) fill one shard's tars,
and every shard is those tars with its own keys patched in, which costs the loader the same as new
content and writes 10^6 samples at disk speed. Each (size, loader) is measured in a fresh process:
the time to open the data (read, split off 64 held-out samples, count token frequencies), then
batches of 16 drawn and masked with the demo's budgets (128 inputs, 96 targets) and mixture
defaults, as `fourm train` draws them (one process, no DataLoader workers): samples/s, batches/s,
and the process' peak RSS; and the rate at which shards are read and decoded alone (decode/s), the
part of a stream's work that each DataLoader worker repeats for its windows. Compare batches/s with
the training step on the same machine (the demo's model: ~0.25-0.3 s a step on 2 AVX2 cores, so
>= 4 batches/s keeps it fed).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHARD = 1000
IMAGES = ["tok_rgb", "tok_depth", "tok_normal", "tok_semseg", "tok_canny_edge"]


def template(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ramp = np.linspace(0, 1, 64)
        base = rng.uniform(0, 255, 3) * ramp[:, None, None] + rng.uniform(0, 255, 3) * ramp[None, :, None]
        rgb = np.clip(base / 2 + rng.normal(0, 8, (64, 64, 3)), 0, 255).astype(np.uint8)
        sample = {m: rng.integers(0, 1024, 64).astype(np.int16) for m in IMAGES}
        sample["caption"] = np.array([*rng.integers(204, 8192, int(rng.integers(15, 40))), 3], dtype=np.int16)
        sample["det"] = np.array([*rng.integers(204, 8192, int(rng.integers(5, 30))), 3], dtype=np.int16)
        sample["tok_caption_global"] = rng.integers(0, 16, 8).astype(np.int16)
        sample["rgb"] = rgb
        out.append(sample)
    return out


def _patch_keys(tar: bytes, offsets: np.ndarray, prefix: bytes) -> bytes:
    """``tar`` with each member name's first bytes replaced by ``prefix`` (same length) and the header
    checksums redone: a shard's tar is its template's with new keys, without re-encoding anything."""
    data = np.frombuffer(tar, dtype=np.uint8).copy()
    data[offsets[:, None] + np.arange(len(prefix))] = np.frombuffer(prefix, dtype=np.uint8)
    data[offsets[:, None] + np.arange(148, 156)] = ord(" ")  # the checksum counts its own field as spaces
    sums = data[offsets[:, None] + np.arange(512)].sum(axis=1, dtype=np.int64)
    digits = np.array([[ord(c) for c in f"{v:06o}"] + [0, ord(" ")] for v in sums], dtype=np.uint8)
    data[offsets[:, None] + np.arange(148, 156)] = digits
    return data.tobytes()


def write_corpus(root: Path, size: int, samples: list[dict]) -> None:
    """A token corpus of ``size`` samples in shards of SHARD, repeating ``samples`` under new keys."""
    import io
    import tarfile

    import webdataset as wds
    from tqdm import tqdm

    from fourm.data.codecs import encode
    from fourm.data.corpus import record_path, shard_path, storage_entry, write_manifest
    from fourm.io import atomic_path, write_json
    from fourm.modalities import CORPUS, Storage

    storages = {m: Storage("npy", "int16") for m in [*IMAGES, "caption", "det", "tok_caption_global"]}
    storages["rgb"] = CORPUS["rgb"].storage
    templates = {}  # one shard's tar per series, keys "000000-0000"..., and where each header lies
    for m, st in storages.items():
        buffer = io.BytesIO()
        with wds.TarWriter(buffer, encoder=False, mtime=0, user="fourm", group="fourm") as tar:
            for j in range(SHARD):
                tar.write({"__key__": f"000000-{j:04d}", st.ext: encode(samples[j % len(samples)][m], st)})
        data = buffer.getvalue()
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            offsets = np.array([t.offset_data - 512 for t in tar])  # the ustar headers
        templates[m] = data, offsets
    for shard in tqdm(range((size + SHARD - 1) // SHARD), desc=f"writing {size} samples", unit="shard"):
        count = min(SHARD, size - shard * SHARD)
        keys = [f"{shard:06d}-{j:04d}" for j in range(count)]
        for m, (data, offsets) in templates.items():
            if count < SHARD:  # the last, short shard: cut after its last member (then the end blocks)
                data = data[: offsets[count]] + b"\0" * 1024
            with atomic_path(shard_path(root, m, shard)) as tmp:
                tmp.write_bytes(_patch_keys(data, offsets[:count], f"{shard:06d}".encode()))
        write_json(record_path(root, shard), {"index": shard, "num_samples": count, "keys": keys,
                                              "modalities": sorted(storages)})
    info = {m: {"vocab_size": 1024, "num_tokens": 64} for m in IMAGES}
    info |= {"caption": {"vocab_size": 8192, "max_tokens": 256},
             "det": {"vocab_size": 8192, "max_tokens": 256},
             "tok_caption_global": {"vocab_size": 16, "num_tokens": 8}, "rgb": {"copied_from": "rgb"}}
    write_manifest(root, {"modalities": {m: storage_entry(st, **info[m]) for m, st in storages.items()},
                          "image_size": 64, "scale": {"image_size": 64, "patch_size": 8, "patch_sizes": {}}})


def measure(root: str, loader: str, batches: int) -> dict:
    """In this process: open the corpus as `fourm train` does, then draw and mask ``batches`` batches."""
    from fourm.data.loader import modalities_from_manifest, read_token_manifest, train_batches, unigram_baseline
    from fourm.data.masking import Masker, MaskingConfig, TextSpecials
    from fourm.data.stream import ShardStream, open_token_data

    start = time.perf_counter()
    table = modalities_from_manifest(read_token_manifest(root))
    train, held = open_token_data([root], table, loader=loader).split(64)
    unigram_baseline(train, held)
    opened = time.perf_counter() - start
    rss_open = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stream = train_batches(train, Masker(table, MaskingConfig(input_budget=128, target_budget=96), TextSpecials()),
                           batch_size=16)
    for _ in range(5):  # warm-up: the first window
        next(stream)
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # reading and decoding alone (what every DataLoader worker of a stream repeats for its windows)
    start = time.perf_counter()
    whole = ShardStream(root, table)
    decoded = len(whole._read(whole.shards[:2]))
    decode = decoded / (time.perf_counter() - start)
    return {"open_s": opened, "rss_after_open_mb": rss_open, "batches_per_s": batches / elapsed,
            "samples_per_s": 16 * batches / elapsed, "peak_rss_mb": peak, "decode_per_s": decode}


def train(root: str, steps: int) -> dict:
    """In this process: `fourm train` (the demo's model, streamed data) for ``steps`` steps."""
    import tempfile

    from fourm.config import load_config
    from fourm.train.curves import read_metrics
    from fourm.train.pretrain import FourMTrainConfig, run_training

    out = tempfile.mkdtemp(prefix="fourm-scale-train-")
    cfg = load_config(FourMTrainConfig, overrides=[
        f"data.corpora=[{root}]", f"out={out}", "data.loader=stream", "data.batch_size=16", "data.num_workers=0",
        "model.size=nano", "model.overrides.dim=128", "model.overrides.heads=4", "masking.input_budget=128",
        "masking.target_budget=96", f"train.steps={steps}", "train.eval_every=0", "train.save_every=0",
        "train.use_tensorboard=false"])
    run_training(cfg, progress=False)
    step_s = [r["s_per_step"] for r in read_metrics(Path(out) / "metrics.jsonl") if "s_per_step" in r][1:]
    return {"s_per_step": float(np.median(step_s)),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--root", type=Path, default=Path("/tmp/fourm-scale"))
    parser.add_argument("--template", type=int, default=2000, help="distinct synthetic samples")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--memory-max", type=int, default=100_000,
                        help="largest corpus also measured in memory (10^6 at 64 px needs ~16 GB)")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="also train the demo's model this many steps on each corpus, streamed")
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)  # ROOT LOADER: one measurement, as JSON
    parser.add_argument("--train", help=argparse.SUPPRESS)  # ROOT: one training run, as JSON
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure[0], args.measure[1], args.batches)))
        return
    if args.train:
        print(json.dumps(train(args.train, args.train_steps)))
        return

    samples = None
    print(f"{'samples':>9} {'loader':>7} {'open s':>7} {'samples/s':>10} {'batches/s':>10} {'peak RSS MB':>12} "
          f"{'decode/s':>9}")
    for size in args.sizes:
        root = args.root / f"n{size}"
        if not (root / "manifest.json").is_file():
            samples = samples or template(args.template)
            write_corpus(root, size, samples)
        for loader in ["memory", "stream"] if size <= args.memory_max else ["stream"]:
            cmd = [sys.executable, __file__, "--measure", str(root), loader, "--batches", str(args.batches)]
            result = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"{size:>9} {loader:>7} {r['open_s']:>7.1f} {r['samples_per_s']:>10.0f} {r['batches_per_s']:>10.1f} "
                  f"{r['peak_rss_mb']:>12.0f} {r['decode_per_s']:>9.0f}", flush=True)
    if args.train_steps:
        print(f"\n`fourm train`, {args.train_steps} steps of the demo's model on the streamed corpus (in one process):")
        print(f"{'samples':>9} {'s/step':>7} {'peak RSS MB':>12}")
        for size in args.sizes:
            cmd = [sys.executable, __file__, "--train", str(args.root / f"n{size}"), "--train-steps",
                   str(args.train_steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"{size:>9} {r['s_per_step']:>7.3f} {r['peak_rss_mb']:>12.0f}", flush=True)


if __name__ == "__main__":
    main()
