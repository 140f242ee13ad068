"""The package's layers point down only: data -> models -> training -> inference -> runs -> cli (docs/architecture.md).

The folders are the layers. Every `kflowers.X` import, at module level or inside a function, is read from
the source with `ast`; a module may import its own layer, the layers below it, and the helpers beside all
layers (the modules at the top of the package).
"""

import ast
import os

import pytest

pytestmark = pytest.mark.one_backend  # the package's import graph: the torch pass covers it

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kflowers")
ORDER = ["data", "models", "training", "inference", "runs", "cli"]
BESIDE_ALL = {"errors", "files", "options", "recipes", "plots", "tables", "native_logs", "lazy"}
# The short public names (`kflowers.callbacks` is `kflowers.training.callbacks`): the package's own namespace.
ALIASES = {"callbacks", "strategies", "distributed", "predict", "explain", "export"}


def modules():
    """Every module of the package, dotted (`kflowers.data.folders`), with its file."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                relative = os.path.relpath(os.path.join(folder, name), os.path.dirname(PACKAGE))[:-3]
                dotted = relative.replace(os.sep, ".").removesuffix(".__init__")
                found[dotted] = os.path.join(folder, name)
    return found


MODULES = modules()


def layer_of(dotted):
    """The layer's index, `"beside"` for the helpers beside all layers, `None` for the package itself."""
    parts = dotted.split(".")
    if len(parts) == 1 or parts[1] in ALIASES or parts[1] == "__main__":
        return ORDER.index("cli") if parts[1:] == ["__main__"] else None
    if parts[1] in ORDER:
        return ORDER.index(parts[1])
    return "beside" if parts[1] in BESIDE_ALL else "unplaced"


def kflowers_imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kflowers"):
            if node.module == "kflowers":  # from kflowers import x: a module, or a name of the package
                yield from ((f"kflowers.{a.name}", node.lineno) for a in node.names if f"kflowers.{a.name}" in MODULES)
            else:
                yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            yield from ((a.name, node.lineno) for a in node.names if a.name.startswith("kflowers."))


def test_every_module_has_a_place():
    assert [m for m in MODULES if layer_of(m) == "unplaced"] == []
    imported = {name for path in MODULES.values() for name, _ in kflowers_imports(path)}
    assert sorted(name for name in imported if name not in MODULES) == []  # no import of a module that moved


def test_the_folders_are_the_layers():
    assert sorted(
        name
        for name in os.listdir(PACKAGE)
        if os.path.isdir(os.path.join(PACKAGE, name, "")) and not name.startswith("__")
    ) == sorted(ORDER)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    mine = layer_of(module)
    upward = []
    for imported, line in kflowers_imports(MODULES[module]):
        theirs = layer_of(imported)
        if theirs in ("beside", None) or imported.startswith(module):
            continue
        if mine == "beside" or (mine is not None and theirs > mine):
            upward.append(f"line {line}: {imported}")
    assert upward == [], f"{module} imports upward"
