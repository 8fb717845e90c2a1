"""Resumable training state: weights (safetensors), optimizer and scheduler, step and RNG.

Optimizer state goes through ``torch.save`` and comes back with ``weights_only=True`` (tensors and
plain containers only: nothing arbitrary is unpickled). Each checkpoint is a folder written under a
temporary name and renamed, so a kill leaves the previous checkpoint intact.

A model sharded by FSDP (``fourm.train.parallel``) is checkpointed sharded: every process writes its
shards of the weights and optimizer state with ``torch.distributed.checkpoint`` into ``sharded/``
(no process ever holds the whole model), and its own RNG state; the main process adds the model's
config, the scheduler and ``state.json`` last, then renames the folder. Such a checkpoint resumes on
any number of processes (the shards are re-split on loading).
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

from fourm.config import upgrade_config
from fourm.io import atomic_dir, fsync_path, fsync_tree, load_tensors, load_weights, read_json, write_json
from fourm.pretrained import CONFIG_NAME, WEIGHTS_NAME, read_config
from fourm.train.parallel import is_sharded

_STEP = re.compile(r"^step-(\d{7})$")


def checkpoint_dirs(out: str | Path) -> list[Path]:
    folder = Path(out) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _STEP.match(p.name) and (p / "state.json").is_file())


def latest_checkpoint(out: str | Path) -> Path | None:
    dirs = checkpoint_dirs(out)
    return dirs[-1] if dirs else None


def _rng_state() -> dict[str, torch.Tensor]:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return rng


def _state(step: int) -> str:
    np_state = np.random.get_state()
    return json.dumps({"step": step, "python_rng": repr(random.getstate()),
                       "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]]})


def _prune(out: str | Path, keep_last: int) -> None:
    for old in checkpoint_dirs(out)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(out: str | Path, step: int, model, optimizer, scheduler, keep_last: int,
                    main: bool = True) -> Path:
    """Checkpoint step ``step``. Call it on every process: a sharded model is written by all of them
    (see the module notes), a replicated one by the ``main`` process alone."""
    path = Path(out) / "checkpoints" / f"step-{step:07d}"
    if is_sharded(model):
        _save_sharded(path, step, model, optimizer, scheduler, main)
    elif main:
        with atomic_dir(path) as tmp:
            model.save_pretrained(tmp / "model")
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
            save_file(_rng_state(), str(tmp / "rng.safetensors"))
            (tmp / "state.json").write_text(_state(step))  # written last: marks the checkpoint complete
    if main:
        _prune(out, keep_last)
    return path


def _save_sharded(path: Path, step: int, model, optimizer, scheduler, main: bool) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    from fourm.train.parallel import model_state

    tmp = path.with_name(f".{path.name}.tmp")  # one name for every process (atomic_dir's is per process)
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    dcp.save({"model": model_state(model, full=False), "optim": get_optimizer_state_dict(model, optimizer)},
             checkpoint_id=str(tmp / "sharded"))
    save_file(_rng_state(), str(tmp / f"rng-{dist.get_rank()}.safetensors"))
    dist.barrier()
    if main:
        write_json(tmp / "model" / CONFIG_NAME, model.config_record())
        torch.save({"scheduler": scheduler.state_dict()}, tmp / "optim.pt")
        (tmp / "state.json").write_text(_state(step))
        fsync_tree(tmp)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
        fsync_path(path.parent)
    dist.barrier()


def _load_sharded(path: Path, model, optimizer) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    from fourm.train.parallel import model_state

    state = {"model": model_state(model, full=False), "optim": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=str(path / "sharded"))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"])
    rank = dist.get_rank() if dist.is_initialized() else 0
    return load_tensors(path / f"rng-{rank}.safetensors") if (path / f"rng-{rank}.safetensors").is_file() else None


def load_checkpoint(path: str | Path, model, optimizer, scheduler) -> int:
    """Restore everything saved by :func:`save_checkpoint` into the given objects; return the step."""
    path = Path(path)
    sharded_file, sharded_model = (path / "sharded").is_dir(), is_sharded(model)
    if sharded_file != sharded_model:
        raise CheckpointMismatch(
            f"{path} was written by a {'sharded (fsdp)' if sharded_file else 'replicated (ddp)'} run and this run "
            f"is {'sharded' if sharded_model else 'replicated'}: resume with the train.parallel it was made with")
    optim = torch.load(path / "optim.pt", weights_only=True, map_location="cpu")
    if sharded_model:
        rng = _load_sharded(path, model, optimizer)
    else:
        load_weights(model, path / "model" / WEIGHTS_NAME)
        optimizer.load_state_dict(optim["optimizer"])
        rng = load_tensors(path / "rng.safetensors")
    scheduler.load_state_dict(optim["scheduler"])
    if rng is not None:  # a process that did not exist when the checkpoint was written keeps its seed
        _set_rng(rng)
    state = read_json(path / "state.json", {"step": int, "python_rng": str, "numpy_rng": list})
    random.setstate(ast.literal_eval(state["python_rng"]))
    kind, keys, *rest = state["numpy_rng"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    return state["step"]


def _set_rng(rng: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available() and "cuda0" in rng:
        torch.cuda.set_rng_state_all([rng[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in rng])


class CheckpointMismatch(ValueError):
    """A checkpoint of another model than the one being trained."""


def check_fits(path: str | Path, model) -> None:
    """Refuse a checkpoint whose saved model config differs from ``model``'s, naming the fields."""
    saved = read_config(Path(path) / "model")
    theirs = upgrade_config(type(model.config), saved["config"])  # a checkpoint of an older version
    ours = json.loads(json.dumps(dataclasses.asdict(model.config)))  # tuples as JSON gives them back
    changed = sorted(k for k in {*theirs, *ours} if theirs.get(k) != ours.get(k))
    if saved["class"] != model.pretrained_name or changed:
        what = ", ".join(f"{k} {theirs.get(k)!r} -> {ours.get(k)!r}" for k in changed[:4])
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
