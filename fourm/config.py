"""Typed configs: dataclass defaults, then a YAML file, then dotted ``key=value`` overrides.

OmegaConf does the merging and the checking: an unknown key or a value of the wrong type is an
error that names it. YAML is read with a safe loader only.
"""

from __future__ import annotations

import dataclasses
import os
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
        if path is not None:
            cfg = OmegaConf.merge(cfg, read_yaml_mapping(path))
        explicit = {k: v for k, v in values.items() if v is not None}
        if explicit:
            cfg = OmegaConf.merge(cfg, explicit)
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"config{f' key {key!r}' if key else ''}: {str(e).splitlines()[0]}") from None


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


def config_to_yaml(cfg) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg, path: str | os.PathLike) -> None:
    """Write the resolved config next to a run's outputs, so the run can be read and repeated."""
    with atomic_path(path) as tmp:
        tmp.write_text(config_to_yaml(cfg))


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
