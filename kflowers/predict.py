"""`kflowers.predict` is `kflowers.inference.predict` (the Python tour's short name)."""

from kflowers.lazy import alias_module

alias_module(__name__, "kflowers.inference.predict")
