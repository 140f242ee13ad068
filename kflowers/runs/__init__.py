"""The runs layer: everything `kflowers train` writes to a run directory.

run        `train_run`: prepare, build, train, evaluate, write
directory  who owns a folder: the marker, the lock, temporaries
report     `report.html`: a run on one page
"""

from kflowers.lazy import lazy_exports


_EXPORTS = {
    "RUN_FILES": "kflowers.runs.run",
    "evaluate_model": "kflowers.runs.run",
    "StopOnInterrupt": "kflowers.runs.run",
    "check_out": "kflowers.runs.run",
    "check_resumable": "kflowers.runs.run",
    "RunSplit": "kflowers.runs.run",
    "run_split": "kflowers.runs.run",
    "finished_metrics": "kflowers.runs.run",
    "train_run": "kflowers.runs.run",
    "default_workers": "kflowers.runs.run",
    "learning_rates": "kflowers.runs.run",
    "history_columns": "kflowers.runs.run",
    "read_history": "kflowers.runs.run",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
