"""Which folders kflowers may write into, and what it may delete there.

kflowers deletes or replaces only what it wrote. A folder it writes a run
(or a comparison, or a demo) into must be new, empty, or one kflowers made
before: such a folder holds a marker file, `.kflowers-run`, with a run id.
A folder that holds anything else is refused in one line unless the user
passes `--force`; even then kflowers replaces only its own file names there
(`RUN_FILES`, its backup's `state.npz`, its own temporaries) and leaves every
other file alone.

The lock (`.kflowers.lock`) is opened without following links, so a link
planted in its place is an error, never a file overwritten elsewhere.

Example:
```python
claim("runs/latest", kind="run", force=False)   # raises RunDirectoryNotOurs for a user's folder
with RunLock("runs/latest"):
    ...
```
"""

import contextlib
import errno
import logging
import os
import platform
import uuid

from kflowers.errors import KflowersError
from kflowers.errors import RunDirectoryBusy
from kflowers.files import RUN_MARKER as MARKER
from kflowers.files import is_temporary
from kflowers.files import read_json
from kflowers.files import write_json

log = logging.getLogger("kflowers")

LOCK_FILE = ".kflowers.lock"


class RunDirectoryNotOurs(KflowersError):
    """`--out` holds files that kflowers did not write."""


def read_marker(folder):
    """The marker's contents (`{"kind", "run_id", ...}`) of a folder kflowers made, or `None`."""
    try:  # not through a link, and never a FIFO or a device (`open_regular`)
        marker = read_json(os.path.join(folder, MARKER), limit=4096, follow_links=False)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("run_id"), str) else None


def is_ours(folder):
    """Whether `folder` is one kflowers made: it holds a valid marker, or it is a run directory of a
    kflowers from before markers (its `config.json` names kflowers's version)."""
    return read_marker(folder) is not None or _run_before_markers(folder)


def _run_before_markers(folder):
    try:
        config = read_json(os.path.join(folder, "config.json"), limit=1 << 20, follow_links=False)
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(config, dict) and isinstance(config.get("versions"), dict) and "kflowers" in config["versions"]


def foreign_entries(folder):
    """The entries of `folder` that do not show it is kflowers's (sorted); `[]` for a new or empty folder."""
    if not os.path.isdir(folder) or is_ours(folder):
        return []
    return sorted(name for name in os.listdir(folder) if name != LOCK_FILE and not is_temporary(name))


def claim(folder, kind="run", force=False, mark=True):
    """Make `folder` kflowers's before anything is written there, or refuse.

    A new or empty folder, or one with a marker, is claimed (the marker is
    written when missing, see `mark`). A folder with anything else raises,
    unless `force`: then it is claimed too, and only kflowers's own file
    names are ever replaced there.

    Args:
        folder: the folder (`--out`).
        kind: what is written there: `"run"`, `"compare"` or `"demo"`.
        force: take a folder that holds other files.
        mark: write the marker now; `False` creates the folder only (a run
            marks it with `write_marker` once it has everything it needs, so
            a run that cannot start leaves nothing behind).

    Raises:
        RunDirectoryNotOurs: the folder holds files kflowers did not write and `force` is false.
        KflowersError: `folder` is a file.
    """
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise KflowersError(f"--out {folder} is a file, not a folder: choose another --out")
    others = foreign_entries(folder)
    if others and not force:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise RunDirectoryNotOurs(
            f"--out {folder} holds files kflowers did not write ({shown}); choose a new or empty folder, "
            "or pass --force to use it (kflowers then replaces only its own file names there)"
        )
    os.makedirs(folder, exist_ok=True)
    if mark:
        write_marker(folder, kind)


def write_marker(folder, kind="run"):
    """Mark `folder` as kflowers's (unless it is already)."""
    if not is_ours(folder):
        write_json(os.path.join(folder, MARKER), {"kind": kind, "run_id": uuid.uuid4().hex})


def check_not_inside(out, data):
    """Refuse an `--out` inside the dataset folder: its plots would become training images."""
    if data is None:
        return
    real_out, real_data = os.path.realpath(out), os.path.realpath(data)
    if os.path.commonpath([real_out, real_data]) == real_data:
        raise KflowersError(
            f"--out {out} is inside the dataset folder {data}: its pictures would be read as images; "
            "choose an --out outside it"
        )


def check_out(out, data=None, force=False):
    """Refuse an `--out` that can't be a run directory, before any work: a file, a folder inside
    the dataset, or a folder that holds files kflowers did not write (unless `force`)."""
    if os.path.lexists(out) and not os.path.isdir(out):
        raise KflowersError(f"--out {out} is a file, not a folder: choose another --out")
    check_not_inside(out, data)
    if not force and foreign_entries(out):
        claim(out, force=False)  # raises with the one line


def remove_temporaries(folder):
    """Remove the temporaries (kflowers's prefix) that a killed process left at the top of `folder`.

    Only `folder` itself is looked at, never its subfolders, and only names
    of the form kflowers's temporaries have (`files.is_temporary`). Call it only while no
    other process writes there (a run holds its lock).
    """
    import shutil

    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if not is_temporary(name):
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def remove_run_files(folder, names):
    """Remove the files called `names` (kflowers's own, such as `record.RUN_FILES`) from `folder`: a previous
    run's, about to be replaced. Nothing else in the folder is touched."""
    old = [name for name in names if os.path.lexists(os.path.join(folder, name))]
    if old:
        log.info("replacing the previous run in %s", folder)
    for name in old:
        os.remove(os.path.join(folder, name))


class RunLock:
    """Hold `out/.kflowers.lock` while a run lives; one run per directory.

    The lock is an advisory `flock`, so the operating system releases it
    when the process ends, however it ends: a lock file left by a killed run
    is simply taken over. The file names its holder (pid and host). It is
    opened without following links: a link in its place is refused.

    Raises:
        RunDirectoryBusy: another live process holds the lock.
        KflowersError: the lock's name is taken by a link or something that is not a plain file.
    """

    def __init__(self, out):
        self.path = os.path.join(out, LOCK_FILE)
        self.fd = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # no flock (Windows): no lock
            return self
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown process"
                os.close(fd)
                raise RunDirectoryBusy(
                    f"{os.path.dirname(self.path)} is in use by another kflowers run ({holder}); wait "
                    "for it to finish or choose another --out"
                ) from None
            except OSError as error:  # a filesystem without locks (some network mounts)
                os.close(fd)
                log.warning(
                    "cannot lock %s (%s): nothing stops a second run from using it meanwhile", self.path, error.strerror
                )
                return self
            try:  # the file we locked must still be the one at self.path (see __exit__)
                same = os.fstat(fd).st_ino == os.lstat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {platform.node()}".encode())
        self.fd = fd
        return self

    def _open(self):
        import stat

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise KflowersError(
                    f"{self.path} is not kflowers's lock file (a link or a folder); remove it and try again"
                ) from error
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise KflowersError(f"{self.path} is not kflowers's lock file (not a plain file); remove it and try again")
        return fd

    def __exit__(self, *exc):
        if self.fd is not None:
            with contextlib.suppress(FileNotFoundError):  # (someone removed the whole directory)
                os.remove(self.path)  # before unlocking, so no one locks a file about to vanish
            os.close(self.fd)
            self.fd = None
