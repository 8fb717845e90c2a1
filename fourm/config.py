"""Typed configs: dataclass defaults, then a YAML file, then dotted ``key=value`` overrides.

OmegaConf does the merging and the checking: an unknown key or a value of the wrong type is an
error that names it. YAML is read with a safe loader only.

Renamed fields: a config dataclass lists its old field names in ``RENAMED_KEYS`` (old -> new; a dotted
new name is a field of a nested config, as FourMConfig's ``image_size`` -> ``scale.image_size``).
Saved artefacts (a model's config.json, a checkpoint) go through :func:`upgrade_config` and load as
they are; a user's YAML or override with an old name is an error naming the new one.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import TypeVar

from fourm.io import atomic_path

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value that does not fit the schema."""


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: list[str] | tuple = (),
                **values) -> T:
    """Build ``cls`` from its defaults, the YAML at ``path``, ``values`` and ``overrides`` (in that order).

    ``values`` are explicit settings (CLI flags); ``None`` entries are ignored so unset flags keep the
    file's value. ``overrides`` are ``"a.b=value"`` strings whose values are parsed as YAML.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
    try:
        cfg = OmegaConf.structured(cls)
        for layer in read_config_layers(path) if path is not None else ():
            cfg = OmegaConf.merge(cfg, layer)
        explicit = {k: v for k, v in values.items() if v is not None}
        if explicit:
            cfg = OmegaConf.merge(cfg, explicit)
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        if key:  # an old name in a user's YAML or override: say the new one, upgrade nothing
            check_renamed(getattr(e, "object_type", None), [key.rpartition(".")[2]], key.rpartition(".")[0])
        raise ConfigError(f"config{f' key {key!r}' if key else ''}: {str(e).splitlines()[0]}") from None


def check_renamed(cls, keys, path: str = "") -> None:
    """A ConfigError if one of ``keys`` (given to dataclass ``cls``, at the dotted ``path`` of a user's
    config) is an old name in ``cls.RENAMED_KEYS``: the message says the new one."""
    renamed = getattr(cls, "RENAMED_KEYS", {})
    old = next((k for k in keys if k in renamed), None)
    if old is not None:
        prefix = f"{path}." if path else ""
        raise ConfigError(f"config key {prefix + old!r} was renamed: use {prefix + renamed[old]!r}")


def nested_configs(cls) -> dict[str, type]:
    """The fields of dataclass ``cls`` that hold a dataclass (also as ``X | None``), with its type."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        sub = next((t for t in options if dataclasses.is_dataclass(t)), None)
        if sub is not None:
            out[f.name] = sub
    return out


def upgrade_config(cls, data: dict) -> dict:
    """A saved config of dataclass ``cls`` (a dict, as config.json holds it) with the old keys of
    ``cls.RENAMED_KEYS`` and of its nested configs' moved to their new names. Where a saved dict has
    both, the new key wins. ``data`` itself is left as it is."""
    out = dict(data)
    for old, new in getattr(cls, "RENAMED_KEYS", {}).items():
        if old not in out:
            continue
        *parents, leaf = new.split(".")
        node = out
        for name in parents:
            child = dict(node.get(name) or {})  # a copy: the caller's nested dicts stay as they are
            node[name] = child
            node = child
        node.setdefault(leaf, out.pop(old))
    for name, sub in nested_configs(cls).items():
        if isinstance(out.get(name), dict):
            out[name] = upgrade_config(sub, out[name])
    return out


def read_yaml_mapping(path: str | os.PathLike) -> dict:
    """The mapping at the top of a YAML file; anything else is a ConfigError naming the file.

    Read by OmegaConf's loader (PyYAML's safe loader, with ``1e-3`` read as a number, not a string).
    """
    import yaml
    from omegaconf import OmegaConf

    if not Path(path).is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = OmegaConf.to_container(OmegaConf.load(path)) if Path(path).read_text().strip() else None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    except OSError:  # OmegaConf refuses a top-level scalar (with an OSError)
        data = "scalar"
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings (key: value), "
                          f"not a {'list' if isinstance(data, list) else 'single value'}")
    return data


def read_config_layers(path: str | os.PathLike) -> list[dict]:
    """The YAML at ``path`` after the files it extends, the first base first: a file that starts with
    ``extends: other.yaml`` (relative to it) holds only what it changes (mappings merge, lists and
    values replace), so a preset is its differences from the one it builds on."""
    layers: list[dict] = []
    chain: list[Path] = []
    next_path: Path | None = Path(path)
    while next_path is not None:
        here = next_path.resolve()
        if here in chain:
            raise ConfigError(f"config file {chain[0]} extends itself (through {here})")
        chain.append(here)
        data = read_yaml_mapping(next_path)
        parent = data.pop("extends", None)
        if parent is not None and not isinstance(parent, str):
            raise ConfigError(f"config file {next_path}: extends must name a YAML file, not {parent!r}")
        layers.insert(0, data)
        next_path = None if parent is None else next_path.parent / parent
    return layers


def config_to_yaml(cfg) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg, path: str | os.PathLike) -> None:
    """Write the resolved config next to a run's outputs, so the run can be read and repeated."""
    with atomic_path(path) as tmp:
        tmp.write_text(config_to_yaml(cfg))


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
