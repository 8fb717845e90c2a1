"""Files written so that a kill or a power loss at any moment leaves either the old file or the new
one, never half; and files read so that a damaged one is an error that names it.

A rename is atomic, but on its own it is not durable: after a power loss the new name can point at a
file whose data never reached the disk. So the data is fsynced before the rename, and the folder
after it, before anything (a completion record, a manifest) can say that the file is there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or a folder's contents (for a folder: its entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    for sub in sorted(path.rglob("*"), reverse=True):  # files before the folders that name them
        fsync_path(sub)
    fsync_path(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary sibling of ``path`` to write; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)  # atomic on POSIX within one file system
        fsync_path(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary sibling folder to fill; it takes ``path``'s place only if the block succeeds.

    A folder cannot be swapped in one step: the old one is moved aside first and dropped after, so
    at every moment one complete folder exists under ``path`` or its aside name.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        fsync_tree(tmp)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        fsync_path(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike, schema: dict[str, type | tuple[type, ...]] | None = None):
    """The JSON in ``path``; with ``schema``, an object holding each of its keys with a value of its type.

    A file that is not JSON, or not of that shape, is a ValueError that names it: a damaged record
    must not surface as a KeyError deep inside whatever reads it.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is damaged: not valid JSON ({getattr(e, 'msg', e)})") from None
    return data if schema is None else check_schema(data, schema, path)


def check_schema(data, schema: dict[str, type | tuple[type, ...]], path: str | os.PathLike):
    """``data`` if it is a dict holding each key of ``schema`` with a value of its type, else a
    ValueError saying that the file at ``path`` is damaged."""
    if not isinstance(data, dict):
        raise ValueError(f"{path} is damaged: a JSON object was expected, not {type(data).__name__}")
    for key, kind in schema.items():
        if key not in data:
            raise ValueError(f"{path} is damaged: it has no {key!r}")
        if not isinstance(data[key], kind) or (kind is int and isinstance(data[key], bool)):
            raise ValueError(f"{path} is damaged: {key!r} is a {type(data[key]).__name__}")
    return data


def _safetensors_damaged(path, e: Exception) -> ValueError:
    return ValueError(f"{path} is damaged or not a safetensors file ({' '.join(str(e).split())})")


def load_tensors(path: str | os.PathLike) -> dict:
    """Every tensor in a safetensors file (never a pickle), or a ValueError naming a damaged file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise _safetensors_damaged(path, e) from None


def load_weights(model, path: str | os.PathLike) -> None:
    """Load a safetensors file into ``model`` (strict: every weight, no extra); a damaged file is named."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        load_model(model, str(path), strict=True)
    except SafetensorError as e:
        raise _safetensors_damaged(path, e) from None
