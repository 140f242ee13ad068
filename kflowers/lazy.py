"""Names a package exports from its modules, imported on first use (some modules import Keras or torch), and
short module names that are another module (`kflowers.callbacks` is `kflowers.training.callbacks`).

Example (a package's `__init__.py`):
```python
_EXPORTS = {"FlowerDataset": "kflowers.data.dataset"}
__getattr__ = lazy_exports(__name__, _EXPORTS)
```
"""

import importlib
import sys


def lazy_exports(package, exports):
    """A module-level `__getattr__` for `package` that imports `exports[name]` when `name` is first used.

    Args:
        package: the package's `__name__`, for the error message.
        exports: `{name: module}`: where each exported name is defined.
    """

    def __getattr__(name):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def alias_module(name, target):
    """Make the module `name` (being imported) be the module `target`: one module under two names.

    `import kflowers.callbacks` and `from kflowers.callbacks import UnfreezeBackbone` then work as Keras's
    namespaces do, and `kflowers.callbacks is kflowers.training.callbacks`: nothing is copied.

    Args:
        name: the short module's `__name__`.
        target: the dotted name of the module it is.
    """
    sys.modules[name] = importlib.import_module(target)
