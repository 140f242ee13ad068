"""The runs layer: a training run and what is done with finished ones.

run        `train_run`: prepare, build, train, evaluate, write
record     the run directory's files (config, split, history, metrics), read and written in one place
evaluate   `evaluate_model`, and which images of a folder `kflowers evaluate` scores
compare    `compare_strategies`: several strategies on one split, one table
lr_find    `lr_find`: the learning-rate range test on a folder, as `kflowers lr-find` runs it
interrupt  Ctrl-C: stop after the batch and save
directory  who owns a folder: the marker, the lock, temporaries, deletions
report     `report.html`: a run on one page
"""

from kflowers.lazy import lazy_exports


_EXPORTS = {
    "RUN_FILES": "kflowers.runs.record",
    "check_setup_files": "kflowers.runs.record",
    "run_identity": "kflowers.runs.record",
    "finished_metrics": "kflowers.runs.record",
    "learning_rates": "kflowers.runs.record",
    "history_columns": "kflowers.runs.record",
    "read_history": "kflowers.runs.record",
    "evaluate_model": "kflowers.runs.evaluate",
    "evaluate_folder": "kflowers.runs.evaluate",
    "RunSplit": "kflowers.runs.evaluate",
    "run_split": "kflowers.runs.evaluate",
    "compare_strategies": "kflowers.runs.compare",
    "lr_find": "kflowers.runs.lr_find",
    "StopOnInterrupt": "kflowers.runs.interrupt",
    "check_out": "kflowers.runs.directory",
    "train_run": "kflowers.runs.run",
    "default_workers": "kflowers.runs.run",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
