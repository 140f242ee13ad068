"""Issue 34, item 6: kflowers's public namespaces import the way Keras's do (`import kflowers.callbacks`,
`from kflowers.export import export_model`), and each short name is the module it stands for, not a copy."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.one_backend  # import machinery: the torch pass covers it

PATHS = [
    ("callbacks", "kflowers.training.callbacks", "UnfreezeBackbone"),
    ("strategies", "kflowers.training.strategies", "discriminative_optimizer"),
    ("distributed", "kflowers.training.distributed", "init_torch_distributed"),
    ("predict", "kflowers.inference.predict", "iter_predictions"),
    ("explain", "kflowers.inference.explain", "explain_images"),
    ("export", "kflowers.inference.export", "export_model"),
]
CHECK = (
    "import importlib, kflowers\n"
    "for short, module, name in {paths!r}:\n"
    "    real = importlib.import_module(module)\n"
    "    assert found[short] is getattr(real, name), short + ': a copy'\n"
    "    assert importlib.import_module('kflowers.' + short) is real and getattr(kflowers, short) is real, short\n"
    "print('ok')"
)


@pytest.mark.parametrize(
    "spelling",
    [
        "from kflowers.{short} import {name} as x",  # the spelling that failed (ModuleNotFoundError)
        "import kflowers.{short}; x = kflowers.{short}.{name}",
        "import kflowers; x = kflowers.{short}.{name}",  # the attribute first, the import after
    ],
)
def test_short_names_import_every_way_and_are_the_modules(spelling):
    # A fresh interpreter per spelling: what was imported before must not be what makes it work.
    lines = ["found = {}"] + [spelling.format(short=s, name=n) + f"; found[{s!r}] = x" for s, _, n in PATHS]
    code = "\n".join(lines) + "\n" + CHECK.format(paths=PATHS)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "ok", result.stderr[-1500:]
