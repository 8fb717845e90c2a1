"""The `fourm` command: each sub-command parses its arguments and calls one library function."""

from __future__ import annotations

import argparse
import functools
import sys

from fourm.config import load_config
from fourm.errors import run_command
from fourm.modalities import CORPUS, ModalityScale
from fourm.train import command as train_command
from pseudolabel.registry import lookup
from tokenizers_train import train_tokenizer

COMMANDS = {}


def command(name: str, help: str):
    """Register ``fn(parser)`` as the argument builder of sub-command ``name``; it returns the runner."""

    def deco(fn):
        COMMANDS[name] = (help, fn)
        return fn

    return deco


@command("modalities", "list the modality registry")
def _modalities(p: argparse.ArgumentParser):
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--patch-size", type=int, default=16)

    def run(args):
        scale = ModalityScale(image_size=args.image_size, patch_size=args.patch_size)

        print(f"{'corpus':18} {'storage':14} {'render':10} {'labeller':16} description")
        for m in CORPUS.values():
            storage = f"{m.storage.ext}/{m.storage.dtype or '-'}"
            print(f"{m.key:18} {storage:14} {m.render:10} {m.labeller or 'source':16} {m.description}")
        print(f"\n{'model':22} {'kind':19} {'source':16} {'tokenizer':12} {'vocab':>6} {'tokens':>6}")
        for m in scale.resolve_all().values():
            print(f"{m.key:22} {m.kind_name:19} {m.source:16} {m.tokenizer or '-':12} "
                  f"{m.vocab_size or '-':>6} {m.tokens:>6}")

    return run


@command("pseudolabel", "label a source and write an aligned corpus (resumable)")
def _pseudolabel(p: argparse.ArgumentParser):
    p.add_argument("--source",
                   help="scenes:N | folder:PATH | wds:PATTERN | points:PATH | audio:PATH | rasters:PATH | csv:PATH")
    p.add_argument("--out", help="corpus folder")
    p.add_argument("--labellers", help="comma-separated labeller names (default: all that apply)")
    p.add_argument("--shard-size", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="key=value settings, e.g. options.depth.model=PATH")

    def run(args):
        from pseudolabel.pipeline import PseudolabelConfig, run_pipeline

        labellers = [s for s in args.labellers.split(",") if s] if args.labellers else None
        cfg = load_config(PseudolabelConfig, args.config, args.overrides, source=args.source, out=args.out,
                          labellers=labellers, shard_size=args.shard_size, workers=args.workers,
                          image_size=args.image_size)
        manifest = run_pipeline(cfg)
        print(f"{cfg.out}: {manifest['num_samples']} samples in {manifest['num_shards']} shards, "
              f"{len(manifest['modalities'])} modalities ({', '.join(manifest['modalities'])}); "
              f"{manifest['skipped']['count']} skipped {manifest['skipped']['by_reason'] or ''}".rstrip())
        if manifest.get("not_run"):
            print(f"default labellers not run: {', '.join(manifest['not_run'])} (reasons in the manifest's not_run)")

    return run


@command("show", "render every modality of one corpus sample to a PNG")
def _show(p: argparse.ArgumentParser):
    p.add_argument("corpus")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--out", default="sample.png")
    p.add_argument("--modalities", help="comma-separated subset (default: all)")

    def run(args):
        from fourm.viz.show import save_sample_grid

        path = save_sample_grid(args.corpus, args.index, args.out, args.modalities)
        print(path)

    return run


@command("train-tokenizer", "train a tokenizer from a corpus (family, model and schedule from a YAML config)")
def _train_tokenizer(p: argparse.ArgumentParser):
    p.add_argument("--config", required=True, help="configs/tokenizers/*.yaml")
    p.add_argument("--corpus", help="corpus folder (overrides the config's)")
    p.add_argument("--out", required=True, help="output folder: checkpoints, curves, model/")
    p.add_argument("overrides", nargs="*", help="key=value settings, e.g. train.steps=200")

    def run(args):
        train_tokenizer(args.config, args.corpus, args.out, args.overrides)

    return run


@command("tokenize", "turn a corpus into a token corpus with a folder of trained tokenizers (resumable)")
def _tokenize(p: argparse.ArgumentParser):
    p.add_argument("--corpus", required=True)
    p.add_argument("--tokenizers", required=True, help="folder with one tokenizer per modality")
    p.add_argument("--out", required=True)
    p.add_argument("--modalities", help="comma-separated model modalities (default: every tokenizer)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("overrides", nargs="*", help="key=value settings")

    def run(args):
        from fourm.data.tokenize import TokenizeConfig, tokenize_corpus

        modalities = [m for m in args.modalities.split(",") if m] if args.modalities else None
        cfg = load_config(TokenizeConfig, None, args.overrides, corpus=args.corpus, tokenizers=args.tokenizers,
                          out=args.out, modalities=modalities, batch_size=args.batch_size)
        manifest = tokenize_corpus(cfg)
        print(f"{cfg.out}: {manifest['num_samples']} samples, series: {', '.join(manifest['modalities'])}")

    return run


@command("train", train_command.HELP)
def _train(p: argparse.ArgumentParser):
    train_command.add_arguments(p)  # shared with `python -m fourm.train`
    return train_command.run


@command("evaluate", "measure a trained FourM on held-out scenes, beside a trivial baseline and the tokenizer bound")
def _evaluate(p: argparse.ArgumentParser):
    p.add_argument("--model", required=True, help="a FourM folder (a run's model/)")
    p.add_argument("--tokenizers", required=True, help="folder with one tokenizer per modality")
    p.add_argument("--corpus", required=True, help="held-out scenes, e.g. fourm pseudolabel --source scenes:128 seed=1")
    p.add_argument("--samples", type=int, help="how many held-out scenes (default: all)")
    p.add_argument("--out", help="also write the table as JSON here")
    p.add_argument("overrides", nargs="*", help="key=value settings, e.g. batch_size=8 seed=1 draws=8 device=cuda")

    def run(args):
        from fourm.eval.evaluate import EvaluateConfig, run_evaluation

        run_evaluation(load_config(EvaluateConfig, None, args.overrides, model=args.model, tokenizers=args.tokenizers,
                                   corpus=args.corpus, samples=args.samples, out=args.out))

    return run


@command("index", "embed a corpus into a global-embedding gallery for `fourm retrieve`")
def _index(p: argparse.ArgumentParser):
    p.add_argument("--corpus", required=True, help="corpus folder (its keys and, with --from corpus, its vectors)")
    p.add_argument("--out", required=True, help="index folder to write")
    p.add_argument("--model", help="FourM folder (needed with --from model; recorded for model-embedded queries)")
    p.add_argument("--tokenizers", help="tokenizers folder of the model")
    p.add_argument("--from", dest="from_", choices=["corpus", "model"], default="corpus",
                   help="the corpus' own vectors (e.g. caption_global) or the model's predictions from --inputs")
    p.add_argument("--modality", default="tok_caption_global", help="global-embedding modality")
    p.add_argument("--inputs", default="rgb", help="comma-separated inputs the model predicts from (--from model)")
    p.add_argument("--limit", type=int, help="embed only the first N samples")
    p.add_argument("overrides", nargs="*", help="EmbedSpec settings, e.g. steps=2 batch_size=64 device=cuda")

    def run(args):
        from fourm.retrieval.embed import parse_settings
        from fourm.retrieval.index import build_index

        index = build_index(args.corpus, args.modality, args.from_, [s for s in args.inputs.split(",") if s],
                            args.model, args.tokenizers, args.limit, **parse_settings(args.overrides))
        path = index.save(args.out)
        print(f"{path}: {len(index)} vectors of {index.modality} ({index.vectors.shape[1]}-d) from {args.from_}")

    return run


@command("retrieve", "rank an index's gallery for a query: prints keys and scores, writes a grid of the hits")
def _retrieve(p: argparse.ArgumentParser):
    p.add_argument("--index", required=True)
    p.add_argument("--query", action="append", required=True,
                   help='modality=value, repeatable: caption="a red cube", rgb=photo.png')
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--out", help="folder for hits.json and hits.png")
    p.add_argument("--embed", choices=["model", "labeller", "corpus"],
                   help="how the query becomes a vector (default: as the index records)")
    p.add_argument("--backend", default="torch", help="search backend: torch | faiss | faiss-hnsw")
    p.add_argument("--model", help="FourM folder (default: the index's; must be the one that built it)")
    p.add_argument("--tokenizers", help="tokenizers folder (default: the index's)")

    def run(args):
        from fourm.retrieval.embed import use_labellers
        from fourm.retrieval.index import retrieve

        use_labellers(functools.partial(lookup, "labeller"))  # queries embedded by the labeller run pseudolabel's
        hits = retrieve(args.index, args.query, args.k, args.out, args.embed, args.backend, model=args.model,
                        tokenizers=args.tokenizers)
        for hit in hits:
            print(f"{hit.rank:3d}  {hit.score:.4f}  {hit.key}")
        if args.out:
            print(f"{args.out}/hits.png")

    return run


@command("features", "encoder features of a corpus from any input subset, pooled, into a safetensors file")
def _features(p: argparse.ArgumentParser):
    p.add_argument("--model", required=True, help="FourM folder (save_pretrained)")
    p.add_argument("--tokenizers", help="tokenizers folder (for raw series that the model reads as tokens)")
    p.add_argument("--corpus", required=True, help="a raw corpus or a token corpus")
    p.add_argument("--inputs", default="rgb", help="comma-separated input modalities, e.g. rgb,depth")
    p.add_argument("--out", required=True, help="FILE.safetensors: features, valid, keys in its metadata")
    p.add_argument("--pool", default="mean", help="mean | modality (one mean per input) | none (every token)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, help="only the first N samples")
    p.add_argument("--device", default="cpu")

    def run(args):
        from fourm.transfer.features import run_features

        inputs = [s for s in args.inputs.split(",") if s]
        path, count, rate = run_features(args.model, args.corpus, inputs, args.out, args.tokenizers, args.pool,
                                         args.batch_size, args.limit, args.device)
        print(f"{path}: {count} samples, pool {args.pool}, {rate:.1f} samples/s through the encoder")

    return run


@command("finetune", "a task head on a trained FourM's encoder: frozen (probe), full or LoRA fine-tuning")
def _finetune(p: argparse.ArgumentParser):
    p.add_argument("--config", help="YAML config, e.g. configs/finetune/count.yaml")
    p.add_argument("--out", help="run folder (overrides the config's)")
    p.add_argument("overrides", nargs="*", help="key=value settings, e.g. regime=lora samples=256 train.steps=200")

    def run(args):
        from fourm.transfer.finetune import FinetuneConfig, run_finetune

        cfg = load_config(FinetuneConfig, args.config, args.overrides, out=args.out)
        _, scores = run_finetune(cfg)
        print(f"{cfg.out}: held-out " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))

    return run


@command("generate", "chained any-to-any generation: raw inputs in, each target as a file plus a grid PNG")
def _generate(p: argparse.ArgumentParser):
    p.add_argument("--model", required=True, help="FourM folder (save_pretrained)")
    p.add_argument("--tokenizers", required=True, help="folder with one tokenizer per modality")
    p.add_argument("--input", action="append", default=[],
                   help="modality=FILE (image, .npy, .json; .wav/.flac/.ogg for speech), caption=TEXT or "
                        "caption=@FILE (repeatable)")
    p.add_argument("--target", default="", help="comma-separated targets, generated in this order")
    p.add_argument("--schedule", help="YAML list of targets with their settings")
    p.add_argument("--out", required=True)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32", "int8"],
                   help="what MaskGIT and ROAR compute in (auto: bf16 where this machine runs it faster); "
                        "int8: every scheme on int8 linear weights (CPU; faster captions, outputs slightly changed)")
    for flag, kind in (("scheme", str), ("steps", int), ("temperature", float), ("guidance", float),
                       ("top-k", int), ("top-p", float)):
        p.add_argument(f"--{flag}", type=kind, help="default for every target that takes it")
    p.add_argument("--encode-every", type=int, help="MaskGIT and ROAR: encode the target's tokens whole every this "
                   "many steps, between them only those decided since and the other inputs afresh (default 1: exact; "
                   "more: faster, approximate; the number of steps: each token once)")
    p.add_argument("--temperature-schedule", help="constant | linear | cosine for image and global targets "
                   "(default linear: annealed over the steps); a caption's: caption.temperature_schedule=...")
    p.add_argument("overrides", nargs="*", help="per-target settings, e.g. tok_depth.steps=12 caption.temperature=0.7")

    def run(args):
        from fourm.generation.output import run_generate

        targets = [t.strip() for t in args.target.split(",") if t.strip()]
        written = run_generate(args.model, args.tokenizers, args.input, targets, args.out, args.schedule,
                               args.overrides, args.seed, args.num_samples, args.device, args.precision,
                               scheme=args.scheme,
                               steps=args.steps, temperature=args.temperature,
                               temperature_schedule=args.temperature_schedule, guidance=args.guidance,
                               top_k=args.top_k, top_p=args.top_p, encode_every=args.encode_every)
        print("\n".join(str(p) for p in written))

    return run


@command("serve", "an interactive page (Gradio) for chained generation and retrieval, at http://HOST:PORT")
def _serve(p: argparse.ArgumentParser):
    p.add_argument("--model", required=True, help="FourM folder (save_pretrained)")
    p.add_argument("--tokenizers", required=True, help="folder with one tokenizer per modality")
    p.add_argument("--index", help="a `fourm index` folder: enables search (its corpus gives the scenes)")
    p.add_argument("--corpus", help="held-out scenes to pick inputs from (default: the index's corpus)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other machines too")
    p.add_argument("--device", default="cpu")

    def run(args):
        from fourm.demo.page import serve
        from fourm.retrieval.embed import use_labellers

        use_labellers(functools.partial(lookup, "labeller"))  # caption queries embedded by MiniLM, as retrieve's
        serve(args.model, args.tokenizers, args.index, args.corpus, args.host, args.port, args.device)

    return run


@command("demo", "the main job on the built-in scenes: corpus, tokenizers, training, generation, evaluation, report")
def _demo(p: argparse.ArgumentParser):
    p.add_argument("--out", help="output folder (default runs/demo); finished stages in it are reused")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run (about 3 minutes)")
    p.add_argument("--config", help="demo settings (default configs/demo.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value settings, e.g. corpus.scenes=256")

    def run(args):
        from fourm.demo.stages import load_demo_config, run_demo

        run_demo(load_demo_config(args.config, args.overrides, quick=args.quick, out=args.out))

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fourm", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    runners = {name: build(sub.add_parser(name, help=help, description=help))
               for name, (help, build) in COMMANDS.items()}
    args = parser.parse_args(argv)
    # bad input (a wrong value, a missing or damaged file): one line that names the problem
    return run_command(f"fourm {args.command}", lambda: runners[args.command](args), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
