"""Resumable training state: weights (safetensors), optimizer and scheduler, step and RNG.

Optimizer state goes through ``torch.save`` and comes back with ``weights_only=True`` (tensors and
plain containers only: nothing arbitrary is unpickled). Each checkpoint is a folder written under a
temporary name and renamed, so a kill leaves the previous checkpoint intact.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from fourm.io import atomic_dir, load_tensors, load_weights, read_json
from fourm.pretrained import WEIGHTS_NAME, read_config

_STEP = re.compile(r"^step-(\d{7})$")


def checkpoint_dirs(out: str | Path) -> list[Path]:
    folder = Path(out) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _STEP.match(p.name) and (p / "state.json").is_file())


def latest_checkpoint(out: str | Path) -> Path | None:
    dirs = checkpoint_dirs(out)
    return dirs[-1] if dirs else None


def save_checkpoint(out: str | Path, step: int, model, optimizer, scheduler, keep_last: int) -> Path:
    path = Path(out) / "checkpoints" / f"step-{step:07d}"
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp / "model")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        save_file(rng, str(tmp / "rng.safetensors"))
        np_state = np.random.get_state()
        state = {"step": step, "python_rng": repr(random.getstate()),
                 "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
        (tmp / "state.json").write_text(json.dumps(state))  # written last: marks the checkpoint complete
    for old in checkpoint_dirs(out)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(path: str | Path, model, optimizer, scheduler) -> int:
    """Restore everything saved by :func:`save_checkpoint` into the given objects; return the step."""
    path = Path(path)
    load_weights(model, path / "model" / WEIGHTS_NAME)
    optim = torch.load(path / "optim.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    rng = load_tensors(path / "rng.safetensors")
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available() and "cuda0" in rng:
        torch.cuda.set_rng_state_all([rng[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in rng])
    state = read_json(path / "state.json", {"step": int, "python_rng": str, "numpy_rng": list})
    random.setstate(ast.literal_eval(state["python_rng"]))
    kind, keys, *rest = state["numpy_rng"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    return state["step"]


class CheckpointMismatch(ValueError):
    """A checkpoint of another model than the one being trained."""


def check_fits(path: str | Path, model) -> None:
    """Refuse a checkpoint whose saved model config differs from ``model``'s, naming the fields."""
    saved = read_config(Path(path) / "model")
    ours = json.loads(json.dumps(dataclasses.asdict(model.config)))  # tuples as JSON gives them back
    changed = sorted(k for k in {*saved["config"], *ours} if saved["config"].get(k) != ours.get(k))
    if saved["class"] != model.pretrained_name or changed:
        what = ", ".join(f"{k} {saved['config'].get(k)!r} -> {ours.get(k)!r}" for k in changed[:4])
        raise CheckpointMismatch(f"{Path(path).parent.parent} holds checkpoints of another model "
                         f"({what or saved['class']}{' ...' if len(changed) > 4 else ''}): "
                         "resume with its settings, or train into another out folder")


def resume_checkpoint(out: str | Path, model, optimizer, scheduler) -> int:
    """Restore the newest loadable checkpoint in ``out``; return its step (0 when there is none).

    A checkpoint of another model is an error, raised before anything is loaded. A damaged one (a cut or
    emptied file) is reported and the one before it tried: keeping ``keep_last`` checkpoints is what
    lets a run survive a bad disk write.
    """
    dirs = checkpoint_dirs(out)
    for path in reversed(dirs):
        try:
            check_fits(path, model)  # before anything is loaded
            return load_checkpoint(path, model, optimizer, scheduler)
        except CheckpointMismatch:
            raise
        except (ValueError, OSError, RuntimeError, EOFError, KeyError, pickle.UnpicklingError) as e:
            logging.getLogger(__name__).warning("checkpoint %s is damaged (%s); trying the one before it",
                                                path, " ".join(str(e).split())[:200])
    if dirs:
        raise ValueError(f"every checkpoint in {Path(out) / 'checkpoints'} is damaged: delete them to start over")
    return 0
