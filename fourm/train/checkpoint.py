"""Resumable training state: weights (safetensors), optimizer and scheduler, step and RNG.

Optimizer state goes through ``torch.save`` and comes back with ``weights_only=True`` (tensors and
plain containers only: nothing arbitrary is unpickled). Each checkpoint is a folder written under a
temporary name and renamed, so a kill leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from fourm.io import atomic_dir
from fourm.pretrained import WEIGHTS_NAME

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
    from safetensors.torch import save_file

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
    import ast

    from safetensors.torch import load_file, load_model

    path = Path(path)
    load_model(model, str(path / "model" / WEIGHTS_NAME), strict=True)
    optim = torch.load(path / "optim.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available() and "cuda0" in rng:
        torch.cuda.set_rng_state_all([rng[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in rng])
    state = json.loads((path / "state.json").read_text())
    random.setstate(ast.literal_eval(state["python_rng"]))
    kind, keys, *rest = state["numpy_rng"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    return state["step"]
