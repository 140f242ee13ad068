"""Atomic file writes: a crash never leaves a half-written file behind."""

import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """Yield a temporary path beside `path`; rename it over `path` on success.

    If the block raises, the temporary file is removed and `path` keeps its
    previous contents.

    Example:
    >>> with atomic_path("run/model.keras", suffix=".keras") as tmp:
    ...     model.save(tmp)
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp" + suffix, dir=folder)
    os.close(fd)
    os.remove(tmp)  # writers such as model.save want to create the file
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text):
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_json(path, data):
    """Write `data` as indented JSON to `path` atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
