from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from fourm.config import ConfigError, load_config, read_yaml_mapping, save_config, upgrade_config


@dataclass
class Inner:
    rate: float = 0.1
    names: list[str] = field(default_factory=lambda: ["a"])


@dataclass
class Outer:
    steps: int = 10
    name: str | None = None
    inner: Inner = field(default_factory=Inner)


def test_merge_order_defaults_yaml_flags_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 20\ninner:\n  rate: 0.5\n")
    cfg = load_config(Outer, path, ["inner.names=[x, y]", "steps=30"], name="run", steps=None)
    assert cfg == Outer(steps=30, name="run", inner=Inner(rate=0.5, names=["x", "y"]))
    assert isinstance(cfg.inner, Inner)


def test_a_config_extends_another_with_only_its_differences(tmp_path):
    (tmp_path / "base.yaml").write_text("steps: 20\ninner:\n  rate: 0.5\n  names: [a, b]\n")
    (tmp_path / "presets").mkdir()
    child = tmp_path / "presets" / "child.yaml"
    child.write_text("extends: ../base.yaml\ninner:\n  names: [c]\n")  # relative to the file that extends
    assert load_config(Outer, child, ["steps=5"]) == Outer(steps=5, inner=Inner(rate=0.5, names=["c"]))
    (tmp_path / "base.yaml").write_text("extends: presets/child.yaml\nsteps: 1\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(Outer, child)
    child.write_text("extends: ../missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml does not exist"):
        load_config(Outer, child)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(Outer, overrides=["inner.rate=2.5"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(Outer, tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("override, match", [
    (["stpes=3"], "stpes"),
    (["steps=many"], "steps"),
    (["steps"], "key=value"),
])
def test_bad_keys_and_values_are_one_line_errors(override, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config(Outer, overrides=override)
    assert "\n" not in str(e.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, "/nonexistent.yaml")


@pytest.mark.parametrize("text, match", [
    ("steps: [1\n", "not valid YAML at line 2"),
    ("- 1\n- 2\n", "not a list"),
    ("5\n", "not a single value"),
    ("steps: !!python/object:os.system x\n", "not valid YAML"),
])
def test_bad_yaml_files_are_named(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_config(Outer, path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_yaml_numbers_read_as_numbers_in_untyped_fields(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 3\n")
    assert read_yaml_mapping(path) == {"steps": 3}
    path.write_text("extra: {w: 1e-3}\n")  # PyYAML alone reads 1e-3 as a string; OmegaConf's loader a float
    assert read_yaml_mapping(path) == {"extra": {"w": 0.001}}
    path.write_text("")
    assert read_yaml_mapping(path) == {}


@dataclass
class Renamed:
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"fast": "use_fast", "rate": "inner.rate"}

    use_fast: bool = False
    inner: Inner = field(default_factory=Inner)
    nested: Outer | None = None


def test_saved_configs_with_old_keys_are_upgraded_and_user_ones_told_the_new_name(tmp_path):
    saved = {"fast": True, "rate": 0.5, "inner": {"names": ["b"]}, "nested": {"steps": 3}}
    assert upgrade_config(Renamed, saved) == {"use_fast": True, "inner": {"names": ["b"], "rate": 0.5},
                                              "nested": {"steps": 3}}
    assert saved == {"fast": True, "rate": 0.5, "inner": {"names": ["b"]}, "nested": {"steps": 3}}  # untouched
    assert upgrade_config(Renamed, {"fast": True, "use_fast": False}) == {"use_fast": False}  # the new key wins
    with pytest.raises(ConfigError, match="config key 'fast' was renamed: use 'use_fast'") as e:
        load_config(Renamed, overrides=["fast=true"])
    assert "\n" not in str(e.value)
    path = tmp_path / "c.yaml"
    path.write_text("rate: 0.5\n")
    with pytest.raises(ConfigError, match="config key 'rate' was renamed: use 'inner.rate'"):
        load_config(Renamed, path)


@pytest.mark.parametrize("override, new", [
    ("train.compile=true", "train.use_compile"),
    ("train.tensorboard=false", "train.use_tensorboard"),
    ("masking.fill_inputs=false", "masking.use_input_fill"),
])
def test_the_renamed_training_flags_name_their_new_keys(override, new):
    from fourm.train.pretrain import FourMTrainConfig

    with pytest.raises(ConfigError, match=f"use {new!r}"):
        load_config(FourMTrainConfig, overrides=[override])
