"""fourm.registry: one error for an unknown name, the same from every table that uses it."""

import importlib

import pytest

from fourm.registry import Registry, UnknownNameError


def test_unknown_names_fail_on_one_line_that_lists_the_known_ones():
    table = Registry("colour", {"red": 1})
    table.register("blue")(2)
    assert table["blue"] == 2 and table.check("red") == "red" and list(table) == table.names() == ["red", "blue"]
    with pytest.raises(UnknownNameError, match="^unknown colour 'green'; known: red, blue$"):
        table["green"]
    with pytest.raises(ValueError, match="^tok_rgb: unknown colour 'green'; known: red, blue$"):
        table.check("green", context="tok_rgb")
    assert table.get("green") is None and "green" not in table  # only [name] and check raise
    assert Registry("x", {"b": 0, "a": 0}, sort=True).names() == ["a", "b"]
    with pytest.raises(LookupError, match="^no codec for 'z'; known: a$"):
        Registry("codec", {"a": 0}, error="no codec for {name!r}; known: {known}")["z"]


@pytest.mark.parametrize("module, function, args, message", [
    ("fourm.retrieval.search", "backend_class", ["annoy"], "unknown search backend 'annoy'; known: torch, faiss, "),
    ("fourm.generation.sampling", "tokens_per_step", [4, 2, "square"], "unknown mask schedule 'square'; known: "),
    ("fourm.model.blocks", "make_norm", ["batchnorm", 8], "unknown norm 'batchnorm'; known: layernorm, rmsnorm"),
    ("tokenizers_train", "family_module", ["bpe"], "unknown tokenizer family 'bpe'; known: diffusion, patch_expert, "),
    ("pseudolabel.registry", "lookup", ["source", "camera"], "unknown source 'camera'; known: "),
])
def test_the_tables_share_the_error(module, function, args, message):
    with pytest.raises(UnknownNameError) as e:
        getattr(importlib.import_module(module), function)(*args)
    assert str(e.value).startswith(message)
