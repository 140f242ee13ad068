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
import hashlib
import dataclasses
import io
import json
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


def check_setup_files(out):
    """Raise `BackupMismatch` unless `out` holds the readable `config.json` and `split.json` that a resumed run
    keeps (whether the backup is this run's is the backup's own check: `run_identity`)."""
    if not all(isinstance(read_run_json(os.path.join(out, name)), dict) for name in ("config.json", "split.json")):
        raise BackupMismatch(
            f"{out} holds no readable config.json and split.json to resume from; start afresh without --resume"
        )


def run_identity(options, strategy, train_split, test_split):
    """What makes a run what it is, as JSON values: every option but `NOT_IDENTITY` (with the strategy's epochs
    and weights as the run resolved them) and the split, as paths relative to the data folder. The run's
    backup records it, and `--resume` goes on only from a backup of the same identity."""
    identity = {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.name not in NOT_IDENTITY}
    train, test = ([os.path.relpath(p, options.data) for p in part.paths] for part in (train_split, test_split))
    split = "\n".join([*train, "/", *test])  # "/": no relative path
    identity.update(
        data=os.path.realpath(options.data),
        strategy=strategy.name,
        epochs=strategy.epochs,
        weights=strategy.weights_for(options.weights),
        split=hashlib.sha256(split.encode("utf-8", "surrogateescape")).hexdigest()[:16],
    )
    return json.loads(json.dumps(strict_json(identity)))


def learning_rates(options, strategy, recipe):
    """The learning rates a run uses, by stage and part, for `config.json`: `recipe.stage_rates`, the call the
    optimizers are built from (peaks, `head_peak`, when the recipe has a schedule; `*_after_unfreeze` for
    two-stage's second stage)."""
    from kflowers.training.loop import plan_stages

    suffix = "_peak" if recipe.scheduled else ""
    rates = {}
    for stage in plan_stages(strategy, cached=False):
        after = "_after_unfreeze" if stage.name == "unfrozen" else ""
        for part, rate in recipe.stage_rates(strategy, stage.name, options.lr).items():
            rates[f"{part}{suffix}{after}"] = rate
    if recipe.scheduled:
        warmup = "warmup then " if recipe.warmup_epochs else ""
        rates["schedule"] = warmup + ("cosine to 0" if recipe.cosine else "fixed")
    return rates


def budget_plan(out):
    """The `BudgetPlan` in `out`'s `config.json` (a run with `--budget`); raises `BackupMismatch` when there is
    none."""
    from kflowers.training.budget import BudgetPlan

    config = read_run_json(os.path.join(out, "config.json"))
    try:
        return BudgetPlan.from_json(config["budget_plan"])
    except (KeyError, TypeError) as error:
        raise BackupMismatch(
            f"--resume --budget: {out}/config.json holds no budget plan (was the run started without --budget?)"
        ) from error


def write_setup(out, options, strategy, recipe, folder, train_split, test_split, processes, workers, budget_plan=None):
    """Write `split.json` and `config.json`: what the run is, so that `--resume` and `evaluate` can check it
    (with `--budget`, the plan that chose the epochs: `budget_plan`)."""
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
            **({"budget_plan": budget_plan.to_json()} if budget_plan is not None else {}),
            **_progressive(options, strategy, recipe),
        },
    )


def _progressive(options, strategy, recipe):
    """`{"epoch_image_sizes": [side of each epoch]}` with progressive resizing, else `{}`."""
    from kflowers.recipes import epoch_image_sizes

    sizes = epoch_image_sizes(recipe, options.image_size, strategy.epochs)
    return {} if sizes is None else {"epoch_image_sizes": sizes}


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
