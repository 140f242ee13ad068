"""Atomic file writes: a crash never leaves a half-written file behind."""

import contextlib
import json
import math
import os
import shutil
import tempfile

# Every temporary file kflowers writes starts with this: only such names are ever cleaned up.
TEMPORARY_PREFIX = ".kflowers-tmp-"
# The file that marks a folder as one kflowers made (a run directory); see `kflowers.runs.directory`.
RUN_MARKER = ".kflowers-run"


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
