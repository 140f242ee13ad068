"""The `kflowers` command line.

main      parse, check before the heavy imports, run; one-line errors
parser    the arguments
commands  what each command does
"""

from kflowers.cli.main import main  # light: Keras and torch load inside the commands

__all__ = ["main"]
