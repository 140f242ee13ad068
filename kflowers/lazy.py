"""Names a package exports from its modules, imported on first use (some modules import Keras or torch).

Example (a package's `__init__.py`):
```python
_EXPORTS = {"FlowerDataset": "kflowers.data.dataset"}
__getattr__ = lazy_exports(__name__, _EXPORTS)
```
"""

import importlib


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
