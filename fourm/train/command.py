"""The `fourm train` command, shared by the ``fourm`` CLI and ``python -m fourm.train``: its arguments
and the one library call it makes. Cheap to import (the CLI builds every sub-command's parser);
torch and the trainer load when it runs."""

from __future__ import annotations

import argparse

from fourm.config import load_config
from fourm.errors import run_command

HELP = "train FourM on token corpora (resumes from the last checkpoint in its out folder)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config, e.g. configs/fourm/demo.yaml")
    p.add_argument("--out", help="run folder (overrides the config's)")
    p.add_argument("overrides", nargs="*", help="key=value settings, e.g. train.steps=200 model.size=nano")


def run(args: argparse.Namespace) -> None:
    from fourm.train.pretrain import FourMTrainConfig, run_training  # torch: only when training

    run_training(load_config(FourMTrainConfig, args.config, args.overrides, out=args.out))


def main(argv: list[str] | None = None) -> int:
    """``python -m fourm.train [-v] [--config ...] [--out ...] [key=value ...]``, as ``fourm train``."""
    parser = argparse.ArgumentParser(prog="python -m fourm.train", description=HELP)
    parser.add_argument("-v", "--verbose", action="store_true")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_command("fourm train", lambda: run(args), args.verbose)
