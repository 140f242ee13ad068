"""A training run: prepare, build, train, evaluate and write `--out RUN` (the files' formats: `record.py`).

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
import dataclasses
import logging
import os
import time

import numpy as np

from kflowers.training import backup
from kflowers.training import distributed
from kflowers.errors import TrainingDiverged
from kflowers.options import PRECISIONS
from kflowers.recipes import epoch_image_sizes
from kflowers.models.saving import remember_class_names
from kflowers.runs import record
from kflowers.runs.directory import RunLock
from kflowers.runs.directory import check_not_inside
from kflowers.runs.directory import check_out
from kflowers.runs.directory import claim
from kflowers.runs.directory import remove_run_files
from kflowers.runs.directory import remove_temporaries
from kflowers.runs.directory import write_marker
from kflowers.runs.evaluate import evaluate_model
from kflowers.runs.interrupt import StopOnInterrupt
from kflowers.runs.report import write_run_report

log = logging.getLogger("kflowers")


def data_root(data):
    """`data`, or when it is `None` the flowers dataset's folder, downloaded once (under torchrun by each
    machine's first process, the others waiting: `distributed.main_process_first`)."""
    if data is not None:
        return data
    from kflowers.data.download import download_flowers

    return distributed.main_process_first(download_flowers)


def train_run(options, folder=None, split=None, on_scanned=None):
    """Train one strategy and write its run directory; return `metrics.json`'s dict.

    Under `torchrun` every process trains on its shard and only rank 0 writes
    (the others return `None`); under jax, batches are spread over all local
    devices (see `kflowers.distributed`).

    Args:
        options: a `RunOptions` (`data=None`: the flowers dataset, downloaded).
        folder: an already scanned `ImageFolder` (scanned from
            `options.data` otherwise).
        split: an already made `(train, test)` split (made otherwise).
        on_scanned: called with the scanned `ImageFolder` by the main process
            before training (the CLI prints its class counts).
    """
    started = time.perf_counter()  # before Keras loads: a --budget counts its seconds too
    import keras

    from kflowers.data.folders import scan_folder

    out = options.out
    check_out(out, options.data, options.force)  # before anything is downloaded or scanned
    if options.resume:
        done = record.finished_metrics(out)
        if done is not None:
            print(f"{out} holds a finished run; nothing to resume (its files are unchanged)")
            return done
    if folder is None:
        options = dataclasses.replace(options, data=data_root(options.data))
        folder = scan_folder(options.data)
    if on_scanned is not None and distributed.is_main_process():
        on_scanned(folder)
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
    budget_plan: object = None  # with --budget: the `training.budget.BudgetPlan` that chose the epochs

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
    if options.budget is not None:
        _plan_budget(run, model, train_ds, test_ds, started)
    train_ds.image_sizes = epoch_image_sizes(run.recipe, options.image_size, run.strategy.epochs)
    # The run has everything it needs: it now owns the directory (a resumed run keeps its setup files).
    if not run.resuming and run.main_process:
        backup.remove(run.backup_dir)
        write_marker(options.out, "run")
        remove_run_files(options.out, record.RUN_FILES)  # the previous run's: this one writes its own
        record.write_setup(
            options.out,
            options,
            run.strategy,
            run.recipe,
            run.folder,
            *run.split,
            processes,
            _workers(options),
            budget_plan=run.budget_plan,
        )
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
    from kflowers.data.folders import split_dataset
    from kflowers.recipes import get_recipe
    from kflowers.training.strategies import get_strategy

    strategy = get_strategy(options.strategy).with_epochs(options.epochs)
    recipe = get_recipe(options.recipe, strategy.name, options.without)
    train_split, test_split = split or split_dataset(folder, test_size=options.test_size, seed=options.seed)
    # Under torchrun all processes hold the same weights: rank 0 alone writes the backup (and the run),
    # and every process resumes from it.
    backup_dir = os.path.join(options.out, "backup")
    if rank == 0:
        remove_temporaries(backup_dir)
    resuming = options.resume and os.path.exists(os.path.join(backup_dir, backup.FILE_NAME))
    distributed.barrier()  # no process decides on resuming after rank 0 has started to write
    if resuming:
        record.check_setup_files(options.out)  # whether the backup is this run's: its own check, in `train`
    if strategy.freeze and strategy.weights_for(options.weights) is None:
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
            weights=run.strategy.weights_for(options.weights),
            image_size=None if run.recipe.progressive else options.image_size,  # progressive: any size
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
    workers = _workers(options)
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


def _plan_budget(run, model, train_ds, test_ds, started):
    """With `--budget`: the run's epochs, from the plan in `config.json` when resuming (a resumed run
    equals the uninterrupted one), else measured now and planned for the minutes left
    (`kflowers.training.budget`; under torchrun every process takes the fewest epochs any planned)."""
    from kflowers.training import budget
    from kflowers.training.loop import choose_stages

    options, strategy, recipe = run.options, run.strategy, run.recipe
    if run.resuming:
        plan = record.budget_plan(options.out)
    else:
        cache = options.feature_cache if run.processes == 1 else False
        stages = choose_stages(strategy.with_epochs(budget.MAX_EPOCHS), train_ds, cache)
        costs = budget.measure_costs(model, strategy, recipe, stages, train_ds, test_ds, options.lr)
        seconds_left = options.budget * 60 - (time.perf_counter() - started)
        layout = (strategy, recipe, costs, seconds_left, options.budget)
        cached = stages[0].name == "cached"
        plan = budget.plan_epochs(*layout, cached=cached)
        fewest = distributed.smallest(plan.epochs)
        if fewest != plan.epochs:
            plan = budget.plan_epochs(*layout, cached=cached, max_epochs=fewest)
        if run.main_process and not options.quiet:
            print(
                f"Budget {options.budget:g} min: {plan.epochs} epoch(s), planned to take "
                f"{plan.planned_seconds / 60:.1f} of the {plan.seconds_left / 60:.1f} min left "
                f"(measured: {_step_text(plan)})"
            )
    run.strategy = strategy.with_epochs(plan.epochs)
    run.budget_plan = plan


def _step_text(plan):
    steps = ", ".join(
        f"{stage} {seconds:.2f} s per batch at {side} px"
        for stage, sides in plan.step_seconds.items()
        for side, seconds in sides.items()
    )
    return f"{steps}; {plan.image_seconds * 1000:.1f} ms per test image"


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
            identity=record.run_identity(options, run.strategy, *run.split),
        )


def _finish(run, model, test_ds, result, started):
    """Evaluate the final model (at the recipe's test side), save it, and write the run's files and plots."""
    out = run.options.out
    clock = time.perf_counter()
    model, results, test_size = _evaluate_final(run, model, test_ds, result)
    run.seconds["evaluation"] = time.perf_counter() - clock
    clock = time.perf_counter()
    _write_results(run, model, results, result.rows, test_size)
    metrics = record.run_metrics(run.strategy.name, results, result, test_size, time.perf_counter() - started)
    run.seconds["writing"] = time.perf_counter() - clock
    metrics["seconds"] = run.seconds  # where the wall time went (scan: before the run started)
    record.write_metrics(out, metrics)
    write_run_report(out)  # from the files above: it says nothing they don't
    log.info("seconds: %s", ", ".join(f"{key} {value:.1f}" for key, value in run.seconds.items()))
    return metrics


def _evaluate_final(run, model, test_ds, result):
    """`(model, results, test_size)`: the model to save (rebuilt for the recipe's test side) and its test
    results; raises `TrainingDiverged` when its outputs are not finite."""
    from kflowers.data.dataset import FlowerDataset
    from kflowers.recipes import test_image_size

    features = result.test_features
    test_size = test_image_size(run.recipe, run.options.image_size)
    if test_size != run.options.image_size or run.recipe.progressive:  # the saved model takes the test side
        model = _for_test_size(model, test_size)
        test_ds = FlowerDataset.from_folder(
            run.test_split, batch_size=256, image_size=test_size, workers=test_ds.threads
        )
        features = None
    results = evaluate_model(model, test_ds, run.folder.class_names, features=features, tta=run.recipe.tta)
    if not np.all(np.isfinite(results["logits"])):  # the training loss can stay finite while the model is not
        raise TrainingDiverged(
            "the trained model's outputs on the test images are not finite (NaN or infinite): training "
            "diverged (a learning rate too high?); no model was saved"
        )
    return model, results, test_size


def _write_results(run, model, results, rows, test_size):
    """The saved model, `history.csv` and the three pictures."""
    from kflowers import plots
    from kflowers.inference.explain import plot_top_losses
    from kflowers.models.saving import save_model

    out, class_names = run.options.out, run.folder.class_names
    save_model(model, os.path.join(out, "model.keras"), class_names)
    record.write_history(out, rows)
    if rows:
        plots.plot_history(record.history_columns(rows), os.path.join(out, "curves.png"), title=run.strategy.name)
    plots.plot_confusion(results["confusion"], class_names, os.path.join(out, "confusion.png"))
    plot_top_losses(
        run.test_split.paths,
        results["labels"],
        results["logits"],
        class_names,
        os.path.join(out, "top_losses.png"),
        image_size=test_size,
    )


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


def _workers(options):
    return options.workers or default_workers()


def default_workers():
    """Data loading threads: 1 on a CPU (decoding shares the cores with training), up to 8 with a CUDA
    GPU to feed (the lesson's GPU run was bound by its loader)."""
    from kflowers.data.dataset import cuda_on_torch_backend

    if cuda_on_torch_backend():
        return max(1, min(8, (os.cpu_count() or 2) - 1))
    return 1


def _not_a_terminal():
    import sys

    return not sys.stdout.isatty()
