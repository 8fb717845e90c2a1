"""The package's shape, read from the source (no imports run, so every import is seen):

* the library (``fourm/`` but the CLI, ``python -m fourm`` and the demo) never imports the wings built on
  it (``pseudolabel``, ``tokenizers_train``, ``fourm.cli``, ``fourm.demo``), not even inside a function;
* fourm's modules import each other in no cycle (the imports that run when a module loads).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the app wing (``python -m fourm`` is the CLI): may import anything
APPS = ("fourm.cli", "fourm.demo", "fourm.__main__")
ABOVE = ("pseudolabel", "tokenizers_train", *APPS)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((ROOT / "fourm").rglob("*.py"))}


def within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, on_load: bool):
    """Import statements under ``node``; ``on_load``: only those that run when the module loads (not in
    function bodies, not under ``if TYPE_CHECKING``)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif on_load and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        elif on_load and isinstance(child, ast.If) and _is_type_checking(child):
            yield from (n for s in child.orelse for n in _walk(ast.Module([s], []), on_load))
        else:
            yield from _walk(child, on_load)


def imports(source: str, name: str, on_load: bool = False, modules=MODULES) -> list[tuple[str, int]]:
    """(imported module, line) for every import in ``source`` (module ``name``); ``from a import b`` names
    the module ``a.b`` when that is a module of ``modules``, else ``a``."""
    path = modules.get(name)
    package = name if path is not None and path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in _walk(ast.parse(source), on_load):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
            continue
        base = node.module or ""
        if node.level:  # relative: from the package, up level - 1
            anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            full = f"{base}.{alias.name}"
            found.append((full if full in modules else base, node.lineno))
    return found


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_library_never_imports_the_wings_above_it():
    upward = [f"{name}:{line} imports {target}"
              for name, path in MODULES.items() if not within(name, APPS)
              for target, line in imports(path.read_text(), name) if within(target, ABOVE)]
    assert not upward, "the library imports a wing built on it:\n" + "\n".join(upward)


def test_fourm_modules_import_in_no_cycle():
    graph = {name: {t for t, _ in imports(path.read_text(), name, on_load=True) if t in MODULES}
             for name, path in MODULES.items()}
    assert sum(map(len, graph.values())) > 50  # the walk found fourm's imports
    found = cycle(graph)
    assert found is None, "import cycle: " + " -> ".join(found)


def test_the_checks_see_imports_inside_functions_and_cycles():
    source = ("import os\nfrom fourm import io\nfrom . import config\nif TYPE_CHECKING:\n    import fourm.cli\n"
              "def f():\n    from pseudolabel.registry import lookup\n")
    modules = {"fourm.io": None, "fourm.config": None, "fourm.x": None}
    every = imports(source, "fourm.x", modules=modules)
    assert ("pseudolabel.registry", 7) in every and ("fourm.cli", 5) in every
    assert [t for t, _ in imports(source, "fourm.x", on_load=True, modules=modules)] == ["os", "fourm.io",
                                                                                           "fourm.config"]
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
