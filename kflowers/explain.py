"""`kflowers.explain` is `kflowers.inference.explain` (the Python tour's short name)."""

from kflowers.lazy import alias_module

alias_module(__name__, "kflowers.inference.explain")
