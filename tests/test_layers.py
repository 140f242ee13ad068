"""The package's layers point down only: data -> model -> training -> runs -> cli (docs/architecture.md).

Every `kflowers.X` import, at module level or inside a function, is read from the source with `ast`;
a module may import its own layer, the layers below it, and the helpers beside all layers.
"""

import ast
import os

import pytest

pytestmark = pytest.mark.one_backend  # the package's import graph: the torch pass covers it

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kflowers")

BESIDE_ALL = {"errors", "files", "options", "recipes"}
LAYERS = {
    "data": {"data", "images", "demo", "reports"},  # reports draws sample grids from images
    "model": {"model", "parts", "predict", "losses", "torch_kernels", "torch_layers", "torch_resnet"},
    "training": {"training", "strategies", "callbacks", "backup", "feature_cache", "lr_find", "distributed"},
    "runs": {"runs", "run_directory", "export", "explain"},
    "cli": {"cli", "__main__"},
}
ORDER = list(LAYERS)
MODULES = sorted(name[:-3] for name in os.listdir(PACKAGE) if name.endswith(".py") and name != "__init__.py")


def layer_of(module):
    return next((index for index, name in enumerate(ORDER) if module in LAYERS[name]), None)


def kflowers_imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kflowers"):
            parts = node.module.split(".")
            if len(parts) > 1:
                yield parts[1], node.lineno
            else:  # from kflowers import x: a module, or a name of the package itself (__version__)
                yield from ((alias.name, node.lineno) for alias in node.names if alias.name in MODULES)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("kflowers."):
                    yield alias.name.split(".")[1], node.lineno


def test_every_module_has_a_place():
    placed = BESIDE_ALL.union(*LAYERS.values())
    assert [m for m in MODULES if m not in placed] == []


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_down(module):
    mine = layer_of(module)
    upward = []
    for imported, line in kflowers_imports(os.path.join(PACKAGE, f"{module}.py")):
        if imported in BESIDE_ALL or imported == module:
            continue
        theirs = layer_of(imported)
        if module in BESIDE_ALL:
            if theirs is not None:  # a helper beside all layers imports no layer
                upward.append(f"line {line}: {imported}")
        elif theirs is None or theirs > mine:
            upward.append(f"line {line}: {imported} ({ORDER[theirs] if theirs is not None else '?'})")
    assert upward == [], f"kflowers/{module}.py ({ORDER[mine] if mine is not None else 'beside all'}) imports up"
