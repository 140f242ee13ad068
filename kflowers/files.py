"""Atomic file writes: a crash never leaves a half-written file behind."""

import contextlib
import json
import math
import os
import re
import shutil
import stat
import tempfile

from kflowers.errors import KflowersError

# Every temporary file kflowers writes starts with this: only such names are ever cleaned up.
TEMPORARY_PREFIX = ".kflowers-tmp-"
# What `atomic_path` names its temporaries: the prefix, the file's name, tempfile's 8 random characters,
# ".tmp" and the writer's suffix (an export's folder: a pid instead of the random part). Only names of this
# exact form are ever cleaned up (`is_temporary`): a user's `.kflowers-tmp-notes` is not one.
_TEMPORARY_NAME = re.compile(re.escape(TEMPORARY_PREFIX) + r".+\.[A-Za-z0-9_]+\.tmp(\.[A-Za-z0-9_]+)*")
# The most a JSON or CSV file kflowers reads may hold (config, split, metrics, history, markers).
MAX_RECORD_BYTES = 64 << 20
# The file that marks a folder as one kflowers made (a run directory); see `kflowers.runs.directory`.
RUN_MARKER = ".kflowers-run"


class NotARegularFile(KflowersError, OSError):
    """A file kflowers reads is a FIFO, a device, a folder, or larger than it may be (an `OSError`, so that
    readers that pass over unreadable files pass over these too)."""


def is_temporary(name):
    """Whether the file name `name` is one `atomic_path` makes (`.kflowers-tmp-NAME.XXXXXXXX.tmp...`).

    Example:
    ```python
    is_temporary(".kflowers-tmp-model.keras.k2j4_9xq.tmp.keras")  # True
    is_temporary(".kflowers-tmp-notes")  # False: a user's name that only starts like one
    ```
    """
    return _TEMPORARY_NAME.fullmatch(name) is not None


@contextlib.contextmanager
def open_regular(path, limit=MAX_RECORD_BYTES, follow_links=True):
    """Open `path` for reading in binary, only if it is a regular file of at most `limit` bytes.

    The one way kflowers opens a file it reads: a FIFO (which would block
    forever), a device (`/dev/zero` never ends), a folder or an oversized
    file is refused before a byte is read. The file is opened without
    blocking and checked on the open descriptor, so nothing can be swapped
    in between the check and the read.

    Args:
        path: str or path. The file.
        limit: int or `None`. The most bytes it may hold; `None` for no
            bound. Defaults to `MAX_RECORD_BYTES` (64 MiB).
        follow_links: bool. `False` refuses a symbolic link (`ELOOP`).
            Defaults to `True`.

    Raises:
        NotARegularFile: not a regular file, or larger than `limit`.
        OSError: it can't be opened (missing, permissions).

    Example:
    ```python
    with open_regular("runs/latest/config.json") as f:
        config = json.load(f)
    ```
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (0 if follow_links else getattr(os, "O_NOFOLLOW", 0))
    fd = os.open(path, flags)
    try:
        check_regular(path, os.fstat(fd), limit)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def check_regular(path, status=None, limit=None):
    """Raise `NotARegularFile` unless `path` (links followed; or its `os.stat` result `status`) is a regular
    file of at most `limit` bytes. For readers that take a path (Keras, torch, zipfile): call it first."""
    status = status or os.stat(path)
    if not stat.S_ISREG(status.st_mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(status.st_mode)
            else "a device"
            if stat.S_ISCHR(status.st_mode) or stat.S_ISBLK(status.st_mode)
            else "a folder"
            if stat.S_ISDIR(status.st_mode)
            else "a socket"
            if stat.S_ISSOCK(status.st_mode)
            else "not a regular file"
        )
        raise NotARegularFile(f"{os.fspath(path)} is {kind}, not a regular file: kflowers reads only plain files")
    if limit is not None and status.st_size > limit:
        raise NotARegularFile(
            f"{os.fspath(path)} holds {status.st_size:,} bytes, more than the {limit:,} kflowers reads: "
            "it is not the file kflowers wrote"
        )


def read_json(path, limit=MAX_RECORD_BYTES, follow_links=True):
    """The JSON in `path`, read through `open_regular` (a FIFO or a device is refused, the size bounded).

    Raises:
        NotARegularFile, OSError, ValueError: as `open_regular`, or not JSON.
    """
    with open_regular(path, limit, follow_links) as f:
        return json.loads(f.read().decode("utf-8"))


def read_text(path, limit=MAX_RECORD_BYTES):
    """The UTF-8 text in `path`, read through `open_regular`."""
    with open_regular(path, limit) as f:
        return f.read().decode("utf-8")


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """Yield a temporary path beside `path`; rename it over `path` on success.

    If the block raises, the temporary file is removed and `path` keeps its
    previous contents.

    Example:
    ```python
    with atomic_path("model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    ```
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f"{TEMPORARY_PREFIX}{os.path.basename(path)}.", suffix=".tmp" + suffix, dir=folder
    )
    os.close(fd)
    os.remove(tmp)  # writers such as model.save want to create the file
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.isdir(tmp):  # a writer that makes a folder (a SavedModel)
            shutil.rmtree(tmp)
        elif os.path.lexists(tmp):
            os.remove(tmp)


def write_text(path, text):
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_json(path, data):
    """Write `data` as strict, indented JSON to `path` atomically (see `strict_json`)."""
    write_text(path, json.dumps(strict_json(data), indent=2, allow_nan=False) + "\n")


def strict_json(data, digits=6):
    """`data` ready for strict JSON that people read: floats rounded to `digits`
    significant digits (float32 values print as `0.2`, not `0.20000000298023224`),
    NaN and infinity as `None` (JSON has no `NaN`), numpy numbers made plain.
    """
    if isinstance(data, dict):
        return {key: strict_json(value, digits) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [strict_json(value, digits) for value in data]
    if hasattr(data, "item") and getattr(data, "ndim", None) == 0:  # a numpy scalar
        data = data.item()
    if isinstance(data, float):
        return float(f"{data:.{digits}g}") if math.isfinite(data) else None
    return data
