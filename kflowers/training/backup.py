"""A training run's state on disk: what `--resume` needs to continue exactly.

One file, `state.npz`, written atomically after every finished epoch: the
model's weights, the optimizer's variables (with the stage they belong to,
since freezing and unfreezing change the set of variables an optimizer
updates), early stopping's best weights and counters, the history rows, and
a fingerprint of the run's arguments. A process killed while writing leaves
the previous epoch's file in place.
"""

import dataclasses
import json
import os

import numpy as np

from kflowers.files import atomic_path
from kflowers.files import check_regular
from kflowers.errors import BackupMismatch

FILE_NAME = "state.npz"
# What a backup may declare it unpacks to: ResNet18's weights, Adam's two moments and early stopping's best
# weights are about 200 MB; anything near this is a damaged or hostile file, refused before it is unpacked.
MAX_BACKUP_BYTES = 4 << 30


@dataclasses.dataclass
class RunState:
    """Everything a resumed run restores.

    Attributes:
        epoch: epochs finished (the next epoch's 0-based index).
        stage: the name of the stage the optimizer's variables belong to.
        rows: the history rows of the finished epochs.
        early_stopping: `{"best", "wait", "best_epoch"}` or `None`.
        weights: the model's weights (`model.get_weights()` order).
        optimizer: the optimizer's variables (`optimizer.variables` order).
        best_weights: early stopping's best weights, or `None`.
        fingerprint: what identifies the run (see `kflowers.training`).
    """

    epoch: int
    stage: str
    rows: list
    early_stopping: object
    weights: list
    optimizer: list
    best_weights: object
    fingerprint: dict


def save(folder, state):
    """Write `state` to `folder/state.npz` atomically."""
    meta = {
        "epoch": state.epoch,
        "stage": state.stage,
        "rows": state.rows,
        "early_stopping": state.early_stopping,
        "fingerprint": state.fingerprint,
        "weights": len(state.weights),
        "optimizer": len(state.optimizer),
        "best_weights": None if state.best_weights is None else len(state.best_weights),
    }
    arrays = {"meta": np.array(json.dumps(meta))}
    arrays.update({f"weights_{i}": w for i, w in enumerate(state.weights)})
    arrays.update({f"optimizer_{i}": w for i, w in enumerate(state.optimizer)})
    arrays.update({f"best_{i}": w for i, w in enumerate(state.best_weights or [])})
    os.makedirs(folder, exist_ok=True)
    with atomic_path(os.path.join(folder, FILE_NAME), suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())


def load(folder):
    """The `RunState` in `folder`, or `None` when there is none.

    Raises:
        BackupMismatch: the file is damaged (truncated, not an archive, or its
            contents don't fit together); the message names it.
    """
    import zipfile

    path = os.path.join(folder, FILE_NAME)
    if not os.path.exists(path):
        return None
    check_regular(path)  # a FIFO would block the zip reader forever
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(item.file_size for item in archive.infolist())
        if declared > MAX_BACKUP_BYTES:
            raise BackupMismatch(
                f"the backup {path} declares {declared:,} bytes unpacked (at most {MAX_BACKUP_BYTES:,}): it is "
                "damaged; remove it, or start afresh without --resume"
            )
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            best = meta["best_weights"]
            if int(meta["epoch"]) != len(meta["rows"]):
                raise BackupMismatch(
                    f"the backup {path} records {int(meta['epoch'])} finished epoch(s) but the history of "
                    f"{len(meta['rows'])}: it is damaged; remove it, or start afresh without --resume"
                )
            return RunState(
                epoch=int(meta["epoch"]),
                stage=str(meta["stage"]),
                rows=list(meta["rows"]),
                early_stopping=meta["early_stopping"],
                fingerprint=dict(meta["fingerprint"]),
                weights=[data[f"weights_{i}"] for i in range(meta["weights"])],
                optimizer=[data[f"optimizer_{i}"] for i in range(meta["optimizer"])],
                best_weights=None if best is None else [data[f"best_{i}"] for i in range(best)],
            )
    except BackupMismatch:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, RecursionError) as error:
        if isinstance(error, OSError) and not isinstance(error, EOFError) and error.errno is not None:
            raise  # the user's environment (permissions, a full disk): errors.user_message names it
        reason = (str(error).splitlines() or [""])[0]
        raise BackupMismatch(
            f"the backup {path} is damaged ({type(error).__name__}: {reason}); remove it, or start afresh "
            "without --resume"
        ) from error


def check_fingerprint(theirs, ours, folder):
    """Raise `BackupMismatch` unless a backup's fingerprint (`theirs`) is this run's (`ours`): the one check
    of a resumed run. Its `"run"` entry (the run's options and split, when it has one) is checked first, and
    a difference there is named by option."""
    theirs = dict(theirs)
    theirs.setdefault("backend", ours["backend"])  # backups from before it was recorded
    if "run" in ours:
        theirs.setdefault("run", ours["run"])  # backups from before the run recorded its options
        mine, recorded = ours["run"], theirs["run"] if isinstance(theirs["run"], dict) else {}
        options = [key for key in mine if recorded.get(key) != mine[key]]
        if options:
            raise BackupMismatch(
                f"--resume: this run differs from the one in {os.path.dirname(folder) or folder} in "
                f"{', '.join(options)}; repeat its arguments (see its config.json) or start afresh without --resume"
            )
    if theirs != ours:
        different = [k for k in ours if theirs.get(k) != ours[k]]
        raise BackupMismatch(
            f"the backup in {folder} is of another run ({', '.join(different)} differ); "
            "start afresh without --resume or use another --out"
        )


def remove(folder):
    """Remove what `save` wrote under `folder` (its `state.npz`, a rank's `rankN/state.npz`, their
    temporaries) and then the folders left empty; anything else there stays."""
    from kflowers.files import is_temporary

    if not os.path.isdir(folder) or os.path.islink(folder):
        return
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith("rank") and name[4:].isdigit() and os.path.isdir(path) and not os.path.islink(path):
            remove(path)
        elif name == FILE_NAME or is_temporary(name):
            if os.path.isdir(path) and not os.path.islink(path):
                continue  # not a file kflowers wrote
            os.remove(path)
    if not os.listdir(folder):
        os.rmdir(folder)


def assign(variables, values, what):
    """Assign `values` to `variables` after checking that they fit one to one."""
    shapes = [tuple(v.shape) for v in variables]
    if shapes != [tuple(np.shape(v)) for v in values]:
        raise BackupMismatch(
            f"the backup's {what} ({len(values)} arrays) do not fit this run's ({len(variables)} variables)"
        )
    for variable, value in zip(variables, values):
        variable.assign(value)
