"""`kflowers.export` is `kflowers.inference.export` (the Python tour's short name)."""

from kflowers.lazy import alias_module

alias_module(__name__, "kflowers.inference.export")
