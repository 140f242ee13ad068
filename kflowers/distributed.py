"""`kflowers.distributed` is `kflowers.training.distributed` (the Python tour's short name)."""

from kflowers.lazy import alias_module

alias_module(__name__, "kflowers.training.distributed")
