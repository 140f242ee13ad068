"""A training run on disk: everything `kflowers train` writes to `--out RUN`.

    RUN/model.keras     the trained model (loads with keras.models.load_model)
    RUN/history.csv     one row per epoch: loss, accuracy, test_loss, test_accuracy, seconds
    RUN/metrics.json    test_accuracy (final), best_test_accuracy, test_loss, per_class, epochs, wall_seconds,
                        seconds (scan, build_model, feature_pass, training, evaluation, writing)
    RUN/curves.png      loss and accuracy, train against test
    RUN/confusion.png   the test confusion matrix
    RUN/top_losses.png  the test photos with the highest loss: true and predicted class
    RUN/split.json      classes, and the train and test image paths
    RUN/config.json     every argument, the backend, package versions
    RUN/report.html     all of the above on one self-contained page (`kflowers.runs.report`)

A run directory belongs to one run. A lock (`RUN/.kflowers.lock`, held while
the run lives and released by the operating system when it dies) makes a
second run into the same directory stop at once. A new run replaces the
previous run's files only once it has everything it needs (data scanned,
split made, model built); a resumed run first checks that its arguments and
split are the ones in `config.json` and `split.json`.

Every file is written atomically; temporary files left by a killed process
are removed when the next run starts. Training state is backed up after every
epoch (`RUN/backup/`), so `--resume` continues a killed run from its last
completed epoch; a finished run removes its backup.
"""

import contextlib
import csv
import dataclasses
import io
import logging
import os
import platform
import signal
import time

import numpy as np

from kflowers.training import backup
from kflowers.training import distributed
from kflowers.errors import BackupMismatch
from kflowers.errors import KflowersError
from kflowers.errors import TrainingDiverged
from kflowers.files import NotARegularFile
from kflowers.files import open_regular
from kflowers.files import read_json
from kflowers.files import read_text
from kflowers.files import strict_json
from kflowers.files import write_json
from kflowers.files import write_text
from kflowers.options import PRECISIONS
from kflowers.options import RunOptions  # noqa: F401 - re-exported: kflowers.runs.RunOptions
from kflowers.models.parts import model_parts
from kflowers.models.saving import remember_class_names
from kflowers.inference.predict import log_softmax
from kflowers.inference.predict import softmax
from kflowers.runs.directory import LOCK_FILE  # noqa: F401 - re-exported
from kflowers.runs.directory import RunLock
from kflowers.runs.directory import check_not_inside
from kflowers.runs.directory import claim
from kflowers.runs.directory import remove_temporaries
from kflowers.runs.directory import write_marker
from kflowers.runs.report import write_run_report

log = logging.getLogger("kflowers")

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


def _mean_of_views(model, views):
    """Log of the mean probability over `views` (datasets of the same images): logits of the averaged model."""
    probabilities = np.mean([softmax(model.predict(view, verbose=0)) for view in views], axis=0)
    return np.log(np.maximum(probabilities, np.finfo("float64").tiny))


def evaluate_model(model, dataset, class_names, features=None, tta=False):
    """Accuracy, loss, per-class precision/recall/F1 and the confusion matrix.

    `features`: the `pool` outputs of `dataset`'s images, when already known
    (the feature cache): then only the head runs. `tta`: score each image as
    the mean of its and its mirror image's probabilities (a `FlowerDataset`;
    the whole model runs, whatever `features` says).

    Returns:
        `{"accuracy", "loss", "per_class": {name: {precision, recall, f1, support}},
        "confusion": [[...]], "predictions", "labels"}`.
    """
    from sklearn.metrics import classification_report
    from sklearn.metrics import confusion_matrix

    if tta:
        logits = _mean_of_views(model, [dataset.in_order(), dataset.mirrored()])
    elif features is not None:
        import keras

        parts = model_parts(model)
        logits = np.concatenate(
            [
                keras.ops.convert_to_numpy(parts.apply_head(features[i : i + 1024], training=False))
                for i in range(0, len(features), 1024)
            ]
        )
    else:
        if hasattr(dataset, "in_order"):
            dataset = dataset.in_order()
        logits = model.predict(dataset, verbose=0)
    predictions = np.argmax(logits, axis=-1)
    labels = np.asarray(dataset.labels)
    loss = float(-np.mean(log_softmax(logits)[np.arange(len(labels)), labels])) if len(labels) else None
    indices = list(range(len(class_names)))
    report = classification_report(
        labels, predictions, labels=indices, target_names=class_names, output_dict=True, zero_division=0
    )
    per_class = {
        name: {
            "precision": report[name]["precision"],
            "recall": report[name]["recall"],
            "f1": report[name]["f1-score"],
            "support": int(report[name]["support"]),
        }
        for name in class_names
    }
    return {
        "accuracy": float(np.mean(predictions == labels)),
        "loss": loss,
        "per_class": per_class,
        "confusion": confusion_matrix(labels, predictions, labels=indices).tolist(),
        "predictions": predictions,
        "labels": labels,
        "logits": logits,
    }


class StopOnInterrupt:
    """Ctrl-C while training: finish the current batch, then stop and save.

    A context manager whose `event` (a `threading.Event`) is set by the first
    Ctrl-C; pass it to `training.train(stop=...)`. A second Ctrl-C stops at once.
    Off the main thread (a run started from a worker thread) no handler is
    installed (Python allows none there): set `event` yourself to stop.
    """

    def __init__(self):
        import threading

        self.event = threading.Event()

    def __enter__(self):
        def handler(signum, frame):
            if self.event.is_set():
                raise KeyboardInterrupt
            self.event.set()
            print("\nInterrupted: stopping after this batch and saving the run (Ctrl-C again to abort).", flush=True)

        import threading

        self._previous = None
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            self._previous = signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def check_out(out, data=None, force=False):
    """Refuse an `--out` that can't be a run directory, before any work: a file, a folder inside
    the dataset, or a folder that holds files kflowers did not write (unless `force`)."""
    from kflowers.runs.directory import foreign_entries

    if os.path.lexists(out) and not os.path.isdir(out):
        raise KflowersError(f"--out {out} is a file, not a folder: choose another --out")
    check_not_inside(out, data)
    if not force and foreign_entries(out):
        claim(out, force=False)  # raises with the one line


def check_resumable(out, options, strategy, train_split, test_split):
    """Raise `BackupMismatch` unless the run in `out` was started with these
    arguments and this split; called before a resumed run touches anything."""

    config = _read_small_json(os.path.join(out, "config.json"))
    split = _read_small_json(os.path.join(out, "split.json"))
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
    """The arguments that make a run what it is (a resumed run must repeat them)."""
    return {
        "data": os.path.realpath(options.data),
        "strategy": strategy.name,
        "epochs": strategy.epochs,
        "lr": options.lr,
        "batch_size": options.batch_size,
        "image_size": options.image_size,
        "weights": _weights(options, strategy),
        "augment": options.augment,
        "seed": options.seed,
        "early_stopping": options.early_stopping,
        "test_size": options.test_size,
        "feature_cache": options.feature_cache,
        "precision": options.precision,
        "recipe": options.recipe,
        "without": options.without,
    }


def _replace_previous_run(out):
    """Remove another run's files from `out` (a new run is about to write its own)."""
    old = [name for name in RUN_FILES if os.path.exists(os.path.join(out, name))]
    if old:
        log.info("replacing the previous run in %s", out)
    for name in old:
        os.remove(os.path.join(out, name))


class RunSplit:
    """Which images `kflowers evaluate` scores, and which of them the model trained on (see `run_split`)."""

    def __init__(self, side, data, chosen=None, train=None, train_root=None, test=None):
        self.side, self.data, self.chosen, self.train, self.train_root = side, data, chosen, train, train_root
        self.test = test

    def keep(self, path):
        name = os.path.relpath(path, self.data)
        if self.side == "unseen":
            return name not in (self.train or ())
        return self.chosen is None or name in self.chosen

    def describe(self):
        if self.side == "unseen":
            return f"every image in {self.data} the model did not train on"
        return f"every image in {self.data}" if self.chosen is None else f"the run's {self.side} split"

    def missing(self, paths):
        """How many images of the chosen side are not among `paths` (not in the data folder given). By default
        (`"unseen"`) the run's test images count, when the folder is the run's (holds any of its images)."""
        names = {os.path.relpath(p, self.data) for p in paths}
        if self.side == "unseen":
            ours = (self.train or set()) | (self.test or set())
            return len(self.test - names) if self.test and names & ours else 0
        return 0 if self.chosen is None else len(self.chosen - names)

    def trained_on(self, paths):
        """How many of `paths` the model trained on: the same file (by path in the data folder) or the
        same bytes (by SHA-256 against the run's training images, where they can be read)."""
        if not self.train:
            return 0
        same_path = {p for p in paths if os.path.relpath(p, self.data) in self.train}
        digests = set()
        for name in self.train if self.train_root and os.path.isdir(self.train_root) else ():
            with contextlib.suppress(OSError):
                digests.add(_sha256(os.path.join(self.train_root, name)))
        same_bytes = set()
        for path in paths:
            if path not in same_path and digests:
                with contextlib.suppress(OSError):
                    if _sha256(path) in digests:
                        same_bytes.add(path)
        return len(same_path) + len(same_bytes)


def _sha256(path):
    """The SHA-256 of a regular file's first 64 MiB (a FIFO or a device is refused: `open_regular`)."""
    import hashlib

    with open_regular(path, limit=None) as f:
        return hashlib.sha256(f.read(64 << 20)).hexdigest()


def run_split(run_dir, data, paths, side=None):
    """The images of `paths` (found under `data`) that `kflowers evaluate --split side` scores.

    Reads `split.json` and `config.json` in `run_dir` (the model's folder):
    `side` is `"test"`, `"train"`, `"all"`, or `None` (the default):
    `"unseen"`, every image the model did not train on: the run's test side
    on its own data, all of a folder of new photos. Images are matched by
    their path inside the data folder, however `--data` is spelt.

    Raises:
        KflowersError: `side` is test or train and there is no readable split.json.
    """
    split = _read_small_json(os.path.join(run_dir, "split.json"))
    config = _read_small_json(os.path.join(run_dir, "config.json")) or {}
    valid = isinstance(split, dict) and all(isinstance(split.get(k), list) for k in ("train", "test"))
    if not valid:
        if side in ("test", "train"):
            raise KflowersError(
                f"--split {side}: no readable split.json beside the model (in {run_dir}); use --split all"
            )
        return RunSplit("all", data)
    run_data = config.get("data") if isinstance(config, dict) and isinstance(config.get("data"), str) else None

    def relative(names):
        return {os.path.relpath(str(p), run_data) if run_data else str(p) for p in names}

    side = side or "unseen"
    train, test = relative(split["train"]), relative(split["test"])
    chosen = None if side in ("all", "unseen") else test if side == "test" else train
    return RunSplit(side, data, chosen, train, run_data, test)


def _read_small_json(path):
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
    metrics = _read_small_json(path)
    if not isinstance(metrics, dict):
        raise BackupMismatch(
            f"{path} is damaged and {out} holds no backup to resume from; start afresh without --resume"
        )
    return None if metrics.get("interrupted") else metrics


def train_run(options, folder=None, split=None):
    """Train one strategy and write its run directory; return `metrics.json`'s dict.

    Under `torchrun` every process trains on its shard and only rank 0 writes
    (the others return `None`); under jax, batches are spread over all local
    devices (see `kflowers.distributed`).

    Args:
        options: a `RunOptions`.
        folder: an already scanned `ImageFolder` (scanned from
            `options.data` otherwise).
        split: an already made `(train, test)` split (made otherwise).
    """
    import keras

    started = time.perf_counter()
    out = options.out
    check_out(out, options.data, options.force)
    if options.resume:
        done = finished_metrics(out)
        if done is not None:
            print(f"{out} holds a finished run; nothing to resume (its files are unchanged)")
            return done
    backend = keras.backend.backend()
    rank, processes = distributed.init_torch_distributed() if backend == "torch" else (0, 1)
    main_process = rank == 0
    if backend == "jax":
        distributed.enable_jax_data_parallel()
    if main_process:
        check_not_inside(out, options.data)
        claim(out, kind="run", force=options.force, mark=False)
    else:
        os.makedirs(out, exist_ok=True)
    with RunLock(out) if main_process else contextlib.nullcontext():
        return _train_locked(options, folder, split, started, rank, processes)


@dataclasses.dataclass
class _Run:
    """What one run works with, step by step (`_train_locked`)."""

    options: object
    strategy: object
    recipe: object
    folder: object
    train_split: object
    test_split: object
    backup_dir: str
    resuming: bool
    rank: int
    processes: int
    seconds: dict = dataclasses.field(default_factory=dict)

    @property
    def main_process(self):
        return self.rank == 0

    @property
    def split(self):
        return self.train_split, self.test_split


def _train_locked(options, folder, split, started, rank, processes):
    """A run, in order: prepare, build, own the directory, train, evaluate and write (rank 0 only)."""
    if rank == 0:  # under torchrun, before any process can have started writing
        remove_temporaries(options.out)
    run = _prepare(options, folder, split, rank, processes)
    model = _build(run)
    train_ds, test_ds = _datasets(run)
    # The run has everything it needs: it now owns the directory (a resumed run keeps its setup files).
    if not run.resuming and run.main_process:
        backup.remove(run.backup_dir)
        write_marker(options.out, "run")
        _replace_previous_run(options.out)
        _write_setup(options.out, options, run.strategy, run.recipe, run.folder, *run.split, processes)
    clock = time.perf_counter()
    result = _fit(run, model, train_ds, test_ds)
    if not run.main_process:
        return None
    run.seconds["feature_pass"] = result.feature_seconds
    run.seconds["training"] = time.perf_counter() - clock - result.feature_seconds
    metrics = _finish(run, model, test_ds, result, started)
    if result.finished:
        backup.remove(os.path.join(options.out, "backup"))  # only an interrupted run needs it
    return metrics


def _prepare(options, folder, split, rank, processes):
    """The strategy, recipe, data, split and backup of a run, checked against the run it resumes."""
    from kflowers.data.folders import scan_folder
    from kflowers.data.folders import split_dataset
    from kflowers.recipes import get_recipe
    from kflowers.training.strategies import get_strategy

    strategy = get_strategy(options.strategy).with_epochs(options.epochs)
    recipe = get_recipe(options.recipe, strategy.name, options.without)
    if folder is None:
        folder = scan_folder(options.data)
    train_split, test_split = split or split_dataset(folder, test_size=options.test_size, seed=options.seed)
    # Under torchrun all processes hold the same weights: rank 0 alone writes the backup (and the run),
    # and every process resumes from it.
    backup_dir = os.path.join(options.out, "backup")
    if rank == 0:
        remove_temporaries(backup_dir)
    resuming = options.resume and os.path.exists(os.path.join(backup_dir, backup.FILE_NAME))
    distributed.barrier()  # no process decides on resuming after rank 0 has started to write
    if resuming:
        check_resumable(options.out, options, strategy, train_split, test_split)
    if strategy.freeze and _weights(options, strategy) is None:
        log.warning(
            "%s starts with a frozen backbone, but --weights none leaves it random: only the "
            "head will learn, from random features",
            strategy.name,
        )
    run = _Run(options, strategy, recipe, folder, train_split, test_split, backup_dir, resuming, rank, processes)
    run.seconds["scan"] = folder.seconds
    return run


def _build(run):
    """The run's model, seeded, built under the run's precision policy (its layers keep it)."""
    import keras

    from kflowers.models.resnet import build_model

    options = run.options
    keras.utils.set_random_seed(options.seed)
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(PRECISIONS[options.precision])
    clock = time.perf_counter()
    try:
        model = build_model(
            num_classes=len(run.folder.class_names),
            weights=_weights(options, run.strategy),
            image_size=options.image_size,
        )
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    remember_class_names(model, run.folder.class_names)  # any .keras file of it keeps them (ModelCheckpoint too)
    run.seconds["build_model"] = time.perf_counter() - clock
    return model


def _datasets(run):
    """The training dataset (shuffled, augmented as the recipe says, this process's shard) and the test one."""
    from kflowers.data.dataset import FlowerDataset

    options, recipe = run.options, run.recipe
    workers = options.workers or default_workers()
    train_ds = FlowerDataset.from_folder(
        run.train_split,
        batch_size=options.batch_size,
        image_size=options.image_size,
        shuffle=True,
        augment=recipe.augment or options.augment,
        random_erasing=recipe.random_erasing,
        seed=options.seed,
        workers=workers,
    )
    if run.processes > 1:
        train_ds = train_ds.shard(run.rank, run.processes)
    test_ds = FlowerDataset.from_folder(run.test_split, batch_size=256, image_size=options.image_size, workers=workers)
    return train_ds, test_ds


def _fit(run, model, train_ds, test_ds):
    """`training.train` with the run's options, stopped cleanly by Ctrl-C; returns its `TrainResult`."""
    from kflowers.training.loop import train

    options = run.options
    callbacks = [distributed.SyncReplicas()] if run.processes > 1 else []
    verbose = 0 if options.quiet or not run.main_process else 2 if _not_a_terminal() else 1
    with StopOnInterrupt() as interrupt:
        return train(
            model,
            run.strategy,
            train_ds,
            test_ds,
            learning_rate=options.lr,
            callbacks=callbacks,
            verbose=verbose,
            feature_cache=options.feature_cache if run.processes == 1 else False,  # the cache is per process
            backup_dir=run.backup_dir,
            early_stopping=options.early_stopping,
            stop=interrupt.event,
            recipe=run.recipe,
            keep_backup=True,  # removed once the run's files are written
        )


def _finish(run, model, test_ds, result, started):
    """Evaluate the final model (at the recipe's test side), save it, and write the run's files and plots."""
    from kflowers import reports
    from kflowers.data.dataset import FlowerDataset
    from kflowers.inference.explain import plot_top_losses
    from kflowers.models.saving import save_model
    from kflowers.recipes import test_image_size
    from kflowers.training.strategies import classification_loss

    options, out, class_names = run.options, run.options.out, run.folder.class_names
    # Every figure in metrics.json is of the model saved beside it, but best_test_accuracy: the best of the
    # epochs' plain (no test-time augmentation) test accuracies and the saved model's.
    clock = time.perf_counter()
    features = result.test_features
    test_size = test_image_size(run.recipe, options.image_size)
    if test_size != options.image_size:  # the saved model takes the test side
        model = _for_test_size(model, test_size)
        test_ds = FlowerDataset.from_folder(
            run.test_split, batch_size=256, image_size=test_size, workers=test_ds.threads
        )
        features = None
    results = evaluate_model(model, test_ds, class_names, features=features, tta=run.recipe.tta)
    if not np.all(np.isfinite(results["logits"])):  # the training loss can stay finite while the model is not
        raise TrainingDiverged(
            "the trained model's outputs on the test images are not finite (NaN or infinite): training "
            "diverged (a learning rate too high?); no model was saved"
        )
    run.seconds["evaluation"] = time.perf_counter() - clock
    clock = time.perf_counter()
    if run.recipe.label_smoothing and model.optimizer is not None:
        # saved with Keras's own loss, so that plain keras.models.load_model reads it
        model.compile(optimizer=model.optimizer, loss=classification_loss(), metrics=["accuracy"])
    save_model(model, os.path.join(out, "model.keras"), class_names)
    rows = result.rows
    _write_history_csv(os.path.join(out, "history.csv"), rows)
    if rows:
        reports.plot_history(history_columns(rows), os.path.join(out, "curves.png"), title=run.strategy.name)
    reports.plot_confusion(results["confusion"], class_names, os.path.join(out, "confusion.png"))
    plot_top_losses(
        run.test_split.paths,
        results["labels"],
        results["logits"],
        class_names,
        os.path.join(out, "top_losses.png"),
        image_size=test_size,
    )
    test_accuracies = [row["test_accuracy"] for row in rows if "test_accuracy" in row]
    metrics = {
        "strategy": run.strategy.name,
        "test_accuracy": results["accuracy"],
        "best_test_accuracy": max(test_accuracies + [results["accuracy"]]),
        "test_loss": results["loss"],
        "test_image_size": test_size,
        "per_class": results["per_class"],
        "confusion": results["confusion"],
        "epochs": len(rows),
        "interrupted": result.interrupted,
        "stopped_early": result.stopped_early,
        "best_epoch": result.best_epoch,
        "wall_seconds": time.perf_counter() - started,
    }
    run.seconds["writing"] = time.perf_counter() - clock
    metrics["seconds"] = run.seconds  # where the wall time went (scan: before the run started)
    write_json(os.path.join(out, "metrics.json"), metrics)
    write_run_report(out)  # from the files above: it says nothing they don't
    log.info("seconds: %s", ", ".join(f"{key} {value:.1f}" for key, value in run.seconds.items()))
    return metrics


def _for_test_size(model, size):
    """`model` rebuilt for `size` inputs, compiled as the trained one was saved (stock loss, its optimizer's
    settings)."""
    import keras

    from kflowers.models.resnet import with_image_size
    from kflowers.training.strategies import classification_loss

    resized = with_image_size(model, size)
    optimizer = keras.optimizers.deserialize(keras.optimizers.serialize(model.optimizer))
    resized.compile(optimizer=optimizer, loss=classification_loss(), metrics=["accuracy"])
    optimizer.build(resized.trainable_variables)  # saved with its slots, so that loading it warns of nothing
    return resized


def default_workers():
    """Data loading threads: 1 on a CPU (decoding shares the cores with training), up to 8 with a CUDA
    GPU to feed (the lesson's GPU run was bound by its loader)."""
    from kflowers.data.dataset import cuda_on_torch_backend

    if cuda_on_torch_backend():
        return max(1, min(8, (os.cpu_count() or 2) - 1))
    return 1


def _weights(options, strategy):
    return strategy.weights if options.weights == "default" else options.weights


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


def _write_setup(out, options, strategy, recipe, folder, train_split, test_split, processes):
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
            "weights": _weights(options, strategy),
            "learning_rates": learning_rates(options, strategy, recipe),
            "recipe_settings": dataclasses.asdict(recipe),
            "workers": options.workers or default_workers(),
            "backend": backend,
            "processes": processes,
            "devices": len(keras.distribution.list_devices()) if backend == "jax" else 1,
            "versions": _versions(),
            "skipped_files": [f"{p}: {reason}" for p, reason in folder.skipped],
        },
    )


def _not_a_terminal():
    import sys

    return not sys.stdout.isatty()


def history_columns(rows):
    """History rows (one dict per epoch) as columns: `{metric: [value per epoch]}`."""
    return {key: [row.get(key) for row in rows] for key in rows[0]} if rows else {}


def read_history(out):
    """The `history.csv` of the run in `out`, as columns of floats."""
    text = read_text(os.path.join(out, "history.csv"))
    rows = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(io.StringIO(text))]
    return history_columns(rows)


def _write_history_csv(path, rows):
    buffer = io.StringIO()
    columns = ["epoch", "loss", "accuracy", "test_loss", "test_accuracy", "seconds"]
    columns += [c for row in rows for c in row if c not in columns]
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(columns)))
    writer.writeheader()
    writer.writerows(strict_json(rows))
    write_text(path, buffer.getvalue())


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
