"""Held-out loss of each target modality given whole input modalities, as a ratio to its unigram loss.

    python benchmarks/conditional_loss.py --model RUN/model --tokens TOKENS [--heldout 64]
        [--given all tok_rgb caption] [--tokenizers TOKENIZERS/caption]

A training run's own held-out figure (``eval/vs_unigram/*``) averages over the training mixture's
random inputs, most of which show a few tokens of a few modalities. This asks one direction at a time:
given the whole of one modality (``all``: of every other one), how far below the unigram baseline is
each target? Samples are the run's held-out split (the last ``--heldout`` of the token corpus, as
``fourm train`` keeps them); a cell is blank where the input is the target itself.
"""

from __future__ import annotations

import argparse

import torch


def conditional_ratios(model, task, given: list[str], batch_size: int = 32) -> dict[str, dict[str, float]]:
    """{target: {given: held-out loss / unigram loss}} with whole inputs and whole targets."""
    from fourm.data.loader import eval_batches
    from fourm.data.masking import DirichletComponent, Masker, MaskingConfig

    names = list(model.config.modalities)
    size = {n: task.modalities[n].tokens for n in names}  # grid size, or a sequence's maximum length
    out: dict[str, dict[str, float]] = {}
    for target in (n for n in names if n in task.baseline):
        out[target] = {}
        for g in given:
            if g == target:
                continue
            inputs = [n for n in names if n != target] if g == "all" else [g]
            # budgets of every token the modalities can hold (a target sequence: + its [S_0]), sequences
            # masked wholly or not at all: nothing is left out, and batches pad to no more than that
            cfg = MaskingConfig(input_budget=sum(size[n] for n in inputs), target_budget=size[target] + 1,
                                mask_rate=[1.0, 1.0], mixture=[DirichletComponent(
                                    1.0, {**{n: 1.0 for n in inputs}, "*": 0.0}, {target: 1.0, "*": 0.0})])
            masker = Masker(task.modalities, cfg, task.masker.specials)
            total = count = 0.0
            with torch.no_grad():
                for batch in eval_batches(task.heldout, masker, batch_size):
                    n = int(batch.dec_valid.sum())
                    total += float(model(batch).modality_losses[target]) * n
                    count += n
            out[target][g] = total / count / task.baseline[target]
    return out


def main(argv: list[str] | None = None) -> None:
    from fourm.model.fourm import FourM
    from fourm.train.pretrain import FourMTask, FourMTrainConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a trained FourM folder")
    parser.add_argument("--tokens", required=True, help="the token corpus it was trained on")
    parser.add_argument("--heldout", type=int, default=64, help="held-out samples at the end (as data.heldout)")
    parser.add_argument("--given", nargs="+", default=["all", "tok_rgb", "caption"])
    parser.add_argument("--tokenizers", help="a sequence tokenizer folder for the special ids (as data.tokenizers)")
    args = parser.parse_args(argv)

    model = FourM.from_pretrained(args.model).eval()
    cfg = FourMTrainConfig()
    cfg.data.corpora, cfg.data.heldout, cfg.data.tokenizers = [args.tokens], args.heldout, args.tokenizers
    cfg.model.modalities = list(model.config.modalities)  # the model's order of modality indices
    unknown = [g for g in args.given if g != "all" and g not in cfg.model.modalities]
    if unknown:
        parser.error(f"--given {', '.join(unknown)}: the model has {', '.join(cfg.model.modalities)}")
    ratios = conditional_ratios(model, FourMTask(cfg), args.given)
    print(f"held-out loss / unigram loss on {args.heldout} samples, target given the whole input")
    print(f"{'target':22}" + "".join(f"{g:>14}" for g in args.given))
    for target, row in ratios.items():
        print(f"{target:22}" + "".join(f"{row[g]:14.2f}" if g in row else f"{'':>14}" for g in args.given))


if __name__ == "__main__":
    main()
