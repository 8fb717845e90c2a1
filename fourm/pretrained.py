"""``save_pretrained`` / ``from_pretrained``: a folder with ``config.json`` and ``model.safetensors``.

``config.json`` holds the class's registry name, a format version and the dataclass config, so a
folder can be loaded without knowing its class (:func:`load_pretrained`), and loading is strict:
every weight must match. Nothing is unpickled. A folder is written under a temporary name and
renamed into place, so a kill never leaves half a checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar

from fourm.config import nested_configs, upgrade_config
from fourm.io import atomic_dir, load_weights, read_json
from fourm.registry import Registry

FORMAT_VERSION = 1
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
_CLASSES: Registry[type] = Registry("pretrained class", sort=True)  # the "class" of config.json -> the class


@contextlib.contextmanager
def inference(module):
    """``module`` in eval mode without gradients for the block, then back in the mode it was in."""
    import torch

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def register_pretrained(name: str):
    """Class decorator: ``name`` identifies the class in config.json."""

    def deco(cls):
        cls.pretrained_name = name
        _CLASSES[name] = cls
        return cls

    return deco


def resolve_path(path_or_id: str | os.PathLike) -> Path:
    """A local folder as it is; otherwise a hub id, fetched (or found in the hub cache)."""
    path = Path(path_or_id)
    if path.is_dir():
        return path
    if path.exists() or str(path_or_id).startswith((".", "/")) or str(path_or_id).count("/") != 1:
        raise FileNotFoundError(f"{path_or_id} is not a pretrained folder (no such directory, and not a hub id)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_id)))
    except Exception as e:
        raise FileNotFoundError(f"cannot fetch {path_or_id} from the hub: {type(e).__name__}") from None


def read_config(path_or_id: str | os.PathLike) -> dict:
    path = resolve_path(path_or_id)
    file = path / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{path} has no {CONFIG_NAME}: not a fourm pretrained folder")
    config = read_json(file, {"format_version": int, "class": str, "config": dict})
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{file}: format_version {config.get('format_version')} is not {FORMAT_VERSION}")
    return config


def build_config(cls, data: dict):
    """Dataclass ``cls`` from a saved dict, nested dataclasses included; keys renamed since it was
    saved are upgraded (:func:`fourm.config.upgrade_config`), unknown keys are an error."""
    return _build(cls, upgrade_config(cls, data))


def _build(cls, data: dict):
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
    nested = nested_configs(cls)
    return cls(**{key: _build(nested[key], value) if key in nested and isinstance(value, dict) else value
                  for key, value in data.items()})


class PretrainedMixin:
    """For ``nn.Module`` classes with a dataclass ``self.config`` and ``__init__(self, config)``."""

    pretrained_name: ClassVar[str]
    config_class: ClassVar[type]

    def extra_state(self) -> dict[str, Any]:
        """JSON-serialisable facts beside the config (e.g. class names); given back to ``__init__``."""
        return {}

    def config_record(self) -> dict[str, Any]:
        """What ``config.json`` holds: enough to rebuild the model (its class, config and extra state)."""
        return {"format_version": FORMAT_VERSION, "class": self.pretrained_name,
                "config": dataclasses.asdict(self.config), **self.extra_state()}

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        from safetensors.torch import save_model  # torch: this module itself stays torch-free

        with atomic_dir(path) as tmp:
            (tmp / CONFIG_NAME).write_text(json.dumps(self.config_record(), indent=2, sort_keys=True) + "\n")
            save_model(self, str(tmp / WEIGHTS_NAME))  # handles tied (shared) weights
        return Path(path)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, device: str = "cpu"):
        path = resolve_path(path_or_id)
        saved = read_config(path)
        if saved["class"] != cls.pretrained_name and saved["class"] not in _CLASSES:
            _import_known_classes()  # to name what the folder holds instead of failing on its fields
        if saved["class"] != cls.pretrained_name and saved["class"] in _CLASSES:
            target = _CLASSES[saved["class"]]
            if not issubclass(target, cls):
                raise ValueError(f"{path} holds a {saved['class']}, not a {cls.pretrained_name}")
            cls = target
        extra = {k: v for k, v in saved.items() if k not in ("format_version", "class", "config")}
        model = cls(build_config(cls.config_class, saved["config"]), **extra)
        load_weights(model, path / WEIGHTS_NAME)
        return model.to(device).eval()


def load_pretrained(path_or_id: str | os.PathLike, device: str = "cpu"):
    """Whatever fourm model the folder holds, by the class name in its config.json."""
    name = read_config(path_or_id)["class"]
    if name not in _CLASSES:
        _import_known_classes()
    _CLASSES.check(name, context=str(path_or_id))  # "<folder>: unknown pretrained class 'x'; known: ..."
    return _CLASSES[name].from_pretrained(path_or_id, device)


def _import_known_classes() -> None:
    for module in ("fourm.model.fourm", "fourm.model.expert", "fourm.tokenization.vqvae",
                   "fourm.tokenization.mlp_vqvae",
                   "fourm.tokenization.diffusion", "fourm.tokenization.text", "fourm.tokenization.point_vqvae",
                   "fourm.tokenization.series_vqvae", "fourm.tokenization.video",
                   "fourm.tokenization.speech_vqvae"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # the module exists but something it needs is missing: say so
                raise
