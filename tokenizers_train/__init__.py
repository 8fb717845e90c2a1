"""Training of every tokenizer family through the one loop in :mod:`fourm.train.loop`.

Each family module defines a ``Config`` dataclass (with a ``family`` field naming it and a
``train: TrainConfig``) and ``run(cfg, out, progress=True)`` that trains and saves the tokenizer.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from fourm.config import load_config, read_yaml_mapping, save_config
from fourm.registry import Registry

FAMILIES = Registry("tokenizer family", {  # family -> the module that trains it, imported when asked for
    "vqvae_image": "tokenizers_train.image",
    "vqvae_mlp": "tokenizers_train.vector",
    "wordpiece": "tokenizers_train.text",
    "diffusion": "tokenizers_train.diffusion",
    "vqvae_point": "tokenizers_train.points",
    "vqvae_series": "tokenizers_train.series",
    "vqvae_video": "tokenizers_train.video",
    "vqvae_speech": "tokenizers_train.speech",
    "patch_expert": "tokenizers_train.expert",  # no tokenizer: the CNN of FourM's hybrid pixel stem
}, sort=True)


def family_module(name: str):
    return importlib.import_module(FAMILIES[name])


def train_tokenizer(config: str | os.PathLike, corpus: str | None, out: str | os.PathLike,
                    overrides: list[str] | tuple = (), progress: bool = True):
    """Train the tokenizer a YAML config describes (its ``family`` key picks the trainer) into ``out``."""
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer config {config} does not exist")
    family = read_yaml_mapping(path).get("family")
    if family is None:
        raise ValueError(f"{config} names no tokenizer family (family: {' | '.join(FAMILIES)})")
    module = family_module(family)
    cfg = load_config(module.Config, path, overrides, corpus=corpus)
    Path(out).mkdir(parents=True, exist_ok=True)
    model = module.run(cfg, Path(out), progress=progress)  # checks a resumed run before recording it
    save_config(cfg, Path(out) / "config.yaml")
    return model
