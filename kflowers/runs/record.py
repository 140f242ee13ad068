"""The files of a run directory, each format in one place: written by a run, read by resume, evaluate,
compare and the report page.

    RUN/config.json     every argument, the backend, package versions (`write_setup`)
    RUN/split.json      classes, and the train and test image paths (`write_setup`)
    RUN/history.csv     one row per epoch (`write_history`, `read_history`)
    RUN/metrics.json    the saved model's test figures (`write_metrics`, `finished_metrics`)

Example:
```python
read_history("runs/latest")["test_accuracy"]  # [0.71, 0.78, ...]
```
"""

import csv
import dataclasses
import io
import os
import platform

from kflowers.errors import BackupMismatch
from kflowers.files import NotARegularFile
from kflowers.files import read_json
from kflowers.files import read_text
from kflowers.files import strict_json
from kflowers.files import write_json
from kflowers.files import write_text
from kflowers.options import NOT_IDENTITY

RUN_FILES = (
    "model.keras",
    "history.csv",
    "metrics.json",
    "curves.png",
    "confusion.png",
    "top_losses.png",
    "split.json",
    "config.json",
    "report.html",
)
HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "test_loss", "test_accuracy", "seconds"]


def read_run_json(path):
    """The JSON in a run file, or `None` when it is missing or not JSON; a FIFO, a device or an oversized
    file raises `NotARegularFile` (one line), since reading it would block or never end."""
    try:
        return read_json(path)
    except NotARegularFile:
        raise
    except (OSError, ValueError, RecursionError):
        return None


def finished_metrics(out):
    """`metrics.json` of a run in `out` that finished (no backup left to resume), or `None`."""

    path = os.path.join(out, "metrics.json")
    if os.path.exists(os.path.join(out, "backup")) or not os.path.exists(path):
        return None
    metrics = read_run_json(path)
    if not isinstance(metrics, dict):
        raise BackupMismatch(
            f"{path} is damaged and {out} holds no backup to resume from; start afresh without --resume"
        )
    return None if metrics.get("interrupted") else metrics


def check_resumable(out, options, strategy, train_split, test_split):
    """Raise `BackupMismatch` unless the run in `out` was started with these
    arguments and this split; called before a resumed run touches anything."""

    config = read_run_json(os.path.join(out, "config.json"))
    split = read_run_json(os.path.join(out, "split.json"))
    if not (isinstance(config, dict) and isinstance(split, dict)):
        raise BackupMismatch(
            f"{out} holds no readable config.json and split.json to resume from; start afresh without --resume"
        )
    ours = _identity(options, strategy)
    theirs = {key: config.get(key) for key in ours}
    theirs["precision"] = config.get("precision", "float32")
    theirs["recipe"] = config.get("recipe", "lesson")  # runs from before recipes were the lesson's
    theirs["without"] = config.get("without", [])
    theirs["data"] = os.path.realpath(str(config.get("data")))
    different = [key for key in ours if ours[key] != theirs[key]]
    if _relative(split.get("train"), config.get("data")) != _relative(train_split.paths, options.data) or _relative(
        split.get("test"), config.get("data")
    ) != _relative(test_split.paths, options.data):
        different.append("split (the images in the data folder changed)")
    if different:
        raise BackupMismatch(
            f"--resume: this run differs from the one in {out} in {', '.join(different)}; repeat its "
            "arguments (see its config.json) or start afresh without --resume"
        )


def _relative(paths, root):
    """`paths` relative to the data folder `root`: the same images, however `--data` was spelt."""
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths) or not isinstance(root, str):
        return None
    return [os.path.relpath(p, root) for p in paths]


def _identity(options, strategy):
    """The arguments that make a run what it is (a resumed run must repeat them): every option but
    `NOT_IDENTITY`, with the strategy's epochs and weights as the run resolved them."""
    identity = {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.name not in NOT_IDENTITY}
    return {
        **identity,
        "data": os.path.realpath(options.data),
        "strategy": strategy.name,
        "epochs": strategy.epochs,
        "weights": strategy.weights_for(options.weights),
    }


def learning_rates(options, strategy, recipe):
    """The learning rates a run uses, by stage and part, for `config.json` (peaks, for a schedule)."""
    if recipe.name == "lesson":
        head = options.lr if options.lr is not None else strategy.learning_rate
        rates = {"head": head}
        if strategy.backbone_learning_rate is not None:
            rates["backbone"] = strategy.backbone_learning_rate
        if strategy.unfreeze_epoch is not None:
            rates["after_unfreeze"] = strategy.unfreeze_learning_rate
        return rates
    peak = options.lr if options.lr is not None else recipe.learning_rate
    rates = {"head_peak": peak, "schedule": "warmup then cosine to 0" if recipe.cosine else "fixed"}
    if recipe.backbone_rate is not None and strategy.name not in ("scratch", "frozen"):
        rates["backbone_peak"] = peak * recipe.backbone_rate
    if strategy.unfreeze_epoch is not None and recipe.unfrozen_rate is not None:
        rates["head_peak_after_unfreeze"] = peak * recipe.unfrozen_rate
        rates["backbone_peak_after_unfreeze"] = peak * recipe.unfrozen_rate * (recipe.backbone_rate or 1)
    return rates


def write_setup(out, options, strategy, recipe, folder, train_split, test_split, processes, workers):
    """Write `split.json` and `config.json`: what the run is, so that `--resume` and `evaluate` can check it."""
    import keras

    write_json(
        os.path.join(out, "split.json"),
        {
            "classes": folder.class_names,
            "train": train_split.paths,
            "test": test_split.paths,
        },
    )
    backend = keras.backend.backend()
    write_json(
        os.path.join(out, "config.json"),
        {
            **dataclasses.asdict(options),
            "strategy": strategy.name,
            "epochs": strategy.epochs,
            "weights": strategy.weights_for(options.weights),
            "learning_rates": learning_rates(options, strategy, recipe),
            "recipe_settings": dataclasses.asdict(recipe),
            "workers": workers,
            "backend": backend,
            "processes": processes,
            "devices": len(keras.distribution.list_devices()) if backend == "jax" else 1,
            "versions": _versions(),
            "skipped_files": [f"{p}: {reason}" for p, reason in folder.skipped],
        },
    )


def run_metrics(strategy, results, training, test_size, wall_seconds):
    """`metrics.json`'s figures. Every one is of the model saved beside it, but `best_test_accuracy`: the
    best of the epochs' plain (no test-time augmentation) test accuracies and the saved model's.

    Args:
        strategy: the strategy's name.
        results: `evaluate_model`'s dict for the saved model.
        training: the `TrainingResult` (`rows`, `interrupted`, `stopped_early`, `best_epoch`).
        test_size: the side of the test images the saved model was scored at.
        wall_seconds: the run's time so far.
    """
    test_accuracies = [row["test_accuracy"] for row in training.rows if "test_accuracy" in row]
    return {
        "strategy": strategy,
        "test_accuracy": results["accuracy"],
        "best_test_accuracy": max(test_accuracies + [results["accuracy"]]),
        "test_loss": results["loss"],
        "test_image_size": test_size,
        "per_class": results["per_class"],
        "confusion": results["confusion"],
        "epochs": len(training.rows),
        "interrupted": training.interrupted,
        "stopped_early": training.stopped_early,
        "best_epoch": training.best_epoch,
        "wall_seconds": wall_seconds,
    }


def write_metrics(out, metrics):
    """Write `metrics.json` (strict JSON: no NaN)."""
    write_json(os.path.join(out, "metrics.json"), metrics)


def history_columns(rows):
    """History rows (one dict per epoch) as columns: `{metric: [value per epoch]}`."""
    return {key: [row.get(key) for row in rows] for key in rows[0]} if rows else {}


def read_history_rows(out):
    """The `history.csv` of the run in `out`: one dict per epoch, floats (`None` where a cell is empty)."""
    text = read_text(os.path.join(out, "history.csv"))
    return [
        {key: float(value) if value not in ("", None) else None for key, value in row.items()}
        for row in csv.DictReader(io.StringIO(text))
    ]


def read_history(out):
    """The `history.csv` of the run in `out`, as columns of floats."""
    return history_columns(read_history_rows(out))


def write_history(out, rows):
    """Write `history.csv`: one row per epoch, the usual columns first."""
    buffer = io.StringIO()
    columns = list(HISTORY_COLUMNS)
    columns += [c for row in rows for c in row if c not in columns]
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(columns)))
    writer.writeheader()
    writer.writerows(strict_json(rows))
    write_text(os.path.join(out, "history.csv"), buffer.getvalue())


def _versions():
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for package in (
        "keras",
        "keras-hub",
        "torch",
        "jax",
        "tensorflow",
        "numpy",
        "albumentations",
        "scikit-image",
        "scikit-learn",
        "kflowers",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions
