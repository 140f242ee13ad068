"""The errors a user can cause and fix, and how each becomes one line.

Every kflowers error derives from `KflowersError`, which imports nothing
heavy, so the command line tells them apart from programming errors without
importing Keras. `user_message(error)` is the one place that decides what a
user sees: the first line of a `KflowersError`, or, for an operating-system
error caused by the user's paths, permissions or disk (`OSError` with such an
`errno`, anywhere in the exception's chain), what failed, on which file, and
what to do. Anything else is a programming error and keeps its traceback.
"""

import errno


class KflowersError(Exception):
    """Something the user can fix; the message says what and how."""


class DataError(KflowersError, ValueError):
    """A dataset that can't be used; the message says why and what to do."""


class NotAClassifier(KflowersError, ValueError):
    """A Keras model without a kflowers classifier's parts (preprocess, backbone, pool, head)."""


class WeightsError(KflowersError, ValueError):
    """Weights or a model file that can't be loaded; the message names the problem."""


class BackupMismatch(KflowersError, ValueError):
    """A backup that belongs to another run (other data, split or arguments)."""


class OptionsError(KflowersError, ValueError):
    """Arguments of a run that are unknown or don't go together (`RunOptions`)."""


class BudgetTooShort(KflowersError, ValueError):
    """`--budget` minutes too few for one epoch here; the message says how long one takes."""


class RunDirectoryBusy(KflowersError):
    """Another live process holds the run directory's lock."""


class TrainingDiverged(KflowersError, ArithmeticError):
    """The training loss became NaN or infinite."""


# What to do about an operating-system error the user's environment caused.
ADVICE = {
    errno.ENOSPC: "free some space and run again (a training run: with --resume)",
    errno.EDQUOT: "free some space and run again (a training run: with --resume)",
    errno.EACCES: "check its permissions or choose another place",
    errno.EPERM: "check its permissions or choose another place",
    errno.EROFS: "the filesystem is read-only: choose another place",
    errno.ENAMETOOLONG: "choose a shorter name",
    errno.EEXIST: "a file is in the way: move it or choose another name",
    errno.ENOTDIR: "a file is in the way where a folder is needed",
    errno.EISDIR: "a folder is in the way where a file is needed",
    errno.ENOENT: "check the path",
    errno.ELOOP: "a symbolic link points to itself",
}


def first_line(error):
    """The first line of `error`'s message (its type's name when it has none)."""
    return (str(error).strip() or type(error).__name__).splitlines()[0]


def user_message(error):
    """The one line a user sees for `error`, or `None` for a programming error.

    Example:
    ```python
    user_message(OSError(28, "No space left on device", "run/model.keras"))
    # 'No space left on device: run/model.keras (free some space and run again ...)'
    ```
    """
    if isinstance(error, KflowersError):
        return first_line(error)
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in ADVICE:
            where = f": {error.filename}" if error.filename else ""
            return f"{error.strerror or first_line(error)}{where} ({ADVICE[error.errno]})"
        error = error.__cause__ or error.__context__
    return None


def display_name(name):
    """`name` as text that can be printed and drawn: a file name that is not
    valid UTF-8 (kept by Python as surrogate escapes) gets U+FFFD for its bad
    bytes, and control characters (a terminal's escape sequences start with
    one) are shown as `\\xNN` instead of reaching the terminal."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" for c in text)
