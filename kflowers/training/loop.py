"""Training a strategy: one owner of a run's lifecycle.

`train(model, strategy, train_data, test_data)` runs a strategy
(`kflowers.strategies`) as a list of stages, each an ordinary `fit` over a
range of epochs:

    cached     frozen backbone, the head trained on features computed once
    frozen     frozen backbone, trained through the network
    unfrozen   everything trains (two-stage's second stage: a fresh optimizer
               of the same kind at the new learning rate, step count carried)
    trainable  the strategy's own compile (scratch, finetune, discriminative)

After every finished epoch it records the history row, updates early stopping
and writes the backup (`kflowers.training.backup`). An epoch cut short by a stop
request is neither recorded nor backed up, so resuming repeats it from its
start. A stop request or early stopping ends the whole run, whatever stage it
is in. With early stopping the model ends with the best epoch's weights. A
loss that becomes NaN or infinite stops the run at that batch and raises
`TrainingDiverged`; the backup keeps the last finished epoch.

Freezing is `model_parts(model).backbone.trainable = False`. In Keras a
non-trainable BatchNormalization layer also runs in inference mode: it
normalises with its stored statistics and leaves them untouched. (The PyTorch
lesson set `requires_grad=False` but kept `model.train()`, so its "frozen"
backbone still drifted its BatchNorm statistics towards the flowers.)
"""

import dataclasses
import hashlib
import json
import logging
import time

import keras
import numpy as np

from kflowers.training import backup
from kflowers.training.distributed import agree
from kflowers.training.distributed import is_main_process
from kflowers.errors import TrainingDiverged
from kflowers.models.parts import model_parts
from kflowers.recipes import LESSON
from kflowers.recipes import get_recipe
from kflowers.training.strategies import compile_stage
from kflowers.training.strategies import get_strategy
from kflowers.training.strategies import stage_loss
from kflowers.training.strategies import stage_optimizer

log = logging.getLogger("kflowers")


class TrainingResult:
    """What `train` leaves behind, besides the trained model.

    Attributes:
        rows: one dict per finished epoch (`epoch`, `loss`, `accuracy`,
            `test_loss`, `test_accuracy`, `seconds`); an epoch cut short by
            an interruption is not among them.
        interrupted: Ctrl-C (or `stop.set()`) ended the run early.
        stopped_early: early stopping ended the run.
        best_epoch: with early stopping, the epoch whose weights the model
            holds at the end (1-based), else `None`.
        test_features: the test images' pooled features, when the backbone
            never changed (a run that trained on cached features only).
        feature_seconds: the feature cache's pass over the images (0 without it).
    """

    def __init__(
        self, rows=(), interrupted=False, stopped_early=False, best_epoch=None, test_features=None, feature_seconds=0.0
    ):
        self.feature_seconds = feature_seconds
        self.rows = list(rows)
        self.interrupted = interrupted
        self.stopped_early = stopped_early
        self.best_epoch = best_epoch
        self.test_features = test_features

    @property
    def finished(self):
        """Every epoch ran, or early stopping ended the run."""
        return not self.interrupted


def train(
    model,
    strategy,
    train_data,
    test_data=None,
    epochs=None,
    learning_rate=None,
    callbacks=(),
    verbose=1,
    feature_cache=None,
    backup_dir=None,
    early_stopping=False,
    patience=3,
    stop=None,
    recipe=None,
    keep_backup=False,
    identity=None,
):
    """Compile `model` for `strategy` and train it: the lesson's run, in Keras.

    This is the one owner of a run's lifecycle. It splits the run into
    stages (frozen on cached features, frozen through the network,
    unfrozen), runs each as an ordinary `fit`, and after every finished
    epoch records the history row and, with `backup_dir`, writes everything
    a resumed run needs (see `kflowers.training.backup`). An epoch cut short by an
    interruption is not recorded; with `backup_dir`, calling `train` again
    with the same arguments continues from the last finished epoch and ends
    with the same weights and history as an uninterrupted run.

    Args:
        model: `keras.Model`. A model from `build_model` (with the
            strategy's weights).
        strategy: `Strategy` or str. The strategy or its name.
        train_data: `FlowerDataset`, or anything `fit` takes.
        test_data: `FlowerDataset` or `None`. Evaluated after every epoch
            (`validation_data`). Defaults to `None`.
        epochs: int or `None`. Overrides the strategy's number of epochs.
            Defaults to `None`.
        learning_rate: float or `None`. Overrides the strategy's learning
            rate. Defaults to `None`.
        callbacks: list of `keras.callbacks.Callback`. More callbacks,
            passed to every stage's `fit`. Defaults to `()`.
        verbose: int. Keras's progress bar setting. Defaults to `1`.
        feature_cache: bool or `None`. Train the frozen epochs (all of
            `frozen`, the first stage of `two-stage`) on backbone features
            computed once (`kflowers.training.feature_cache`). Defaults to
            `None`: whenever the backbone starts frozen and `train_data` is
            a `FlowerDataset` without augmentation.
        backup_dir: str or `None`. Keep the run's state here after every
            epoch, and resume from it when it holds one. Defaults to `None`.
        early_stopping: bool. Stop once the test loss has not improved for
            `patience` epochs, and end with the best epoch's weights.
            Defaults to `False`.
        patience: int. Epochs without improvement before early stopping.
            Defaults to `3`.
        stop: `threading.Event` or `None`. Once set, training stops after
            the current batch (the CLI sets it on Ctrl-C). Defaults to `None`.
        recipe: `kflowers.recipes.Recipe`, its name (`"lesson"`,
            `"modern"`) or `None`. How each stage trains (see
            `get_recipe`). Defaults to `None`: the lesson's. The modern
            recipe's augmentation and test-time flips belong to the datasets
            (`FlowerDataset(augment=..., random_erasing=...)`,
            `evaluate_model(tta=...)`).
        keep_backup: bool. Keep `backup_dir`'s backup once the run has
            finished (`kflowers.runs` removes it itself, after writing the
            run's files). Defaults to `False`: a finished run removes it,
            and a finished run's backup found at the start is refused, never
            silently "resumed" with nothing left to train.
        identity: dict or `None`. JSON values that also make the run what it
            is, recorded in the backup: a resumed run goes on only where they
            are the same (`kflowers.runs` passes the run's options and split,
            `record.run_identity`). Defaults to `None`.

    Returns:
        A `TrainingResult`.

    Raises:
        TrainingDiverged: the loss became NaN or infinite.
        BackupMismatch: `backup_dir` holds the backup of another run.

    Example:
    ```python
    model = build_model(weights="imagenet", image_size=64)
    result = train(model, "two-stage", train_ds, test_ds, epochs=4)
    result.rows[-1]["test_accuracy"]
    ```
    """
    strategy = get_strategy(strategy) if isinstance(strategy, str) else strategy
    strategy = strategy.with_epochs(epochs)
    if isinstance(recipe, str):  # a name, as `strategy` may be one
        recipe = get_recipe(recipe, strategy.name)
    loop = RunLoop(
        model,
        strategy,
        train_data,
        test_data,
        learning_rate=learning_rate,
        callbacks=callbacks,
        verbose=verbose,
        feature_cache=feature_cache,
        backup_dir=backup_dir,
        early_stopping=early_stopping,
        patience=patience,
        stop=stop,
        recipe=recipe,
        keep_backup=keep_backup,
        identity=identity,
    )
    return loop.run()


@dataclasses.dataclass(frozen=True)
class Stage:
    """A range of epochs `[start, end)` trained one way (`name`, see the module)."""

    name: str
    start: int
    end: int


def plan_stages(strategy, cached):
    """The stages of `strategy`; the first frozen one is `cached` when the cache serves it."""
    total = strategy.epochs
    if not strategy.freeze:
        return [Stage("trainable", 0, total)]
    switch = total if strategy.unfreeze_epoch is None else min(strategy.unfreeze_epoch, total)
    stages = [Stage("cached" if cached else "frozen", 0, switch)]
    if switch < total:
        stages.append(Stage("unfrozen", switch, total))
    return stages


def choose_stages(strategy, train_data, feature_cache):
    """`plan_stages` for `train`'s arguments: the cache serves the frozen stage when it can and is not
    refused (`feature_cache=None`), and must be able to when asked for (`True`)."""
    from kflowers.data.dataset import FlowerDataset

    cacheable = strategy.freeze and isinstance(train_data, FlowerDataset) and not train_data.augment
    if feature_cache is None:
        feature_cache = cacheable
    elif feature_cache and not cacheable:
        raise ValueError(
            "the feature cache needs a strategy with a frozen backbone and a FlowerDataset without augmentation"
        )
    stages = plan_stages(strategy, feature_cache)
    if strategy.unfreeze_epoch is not None and len(stages) == 1:
        log.warning(
            "%s over %d epoch(s) never unfreezes the backbone (it unfreezes after epoch %d): "
            "this run trains as 'frozen'",
            strategy.name,
            strategy.epochs,
            strategy.unfreeze_epoch,
        )
    return stages


def run_fingerprint(strategy, recipe, stages, data, learning_rate, early_stopping):
    """What a backup must agree with to be resumed by a run of these arguments (JSON values)."""
    return {
        "strategy": strategy.name,
        "epochs": strategy.epochs,
        "learning_rate": learning_rate,
        # As JSON values (a tuple is a list once saved), and absent for the lesson's as in backups before recipes.
        **({"recipe": json.loads(json.dumps(dataclasses.asdict(recipe)))} if recipe != LESSON else {}),
        "stages": [[stage.name, stage.start, stage.end] for stage in stages],
        "train_images": _digest(getattr(data, "paths", [])),
        "batch_size": getattr(data, "batch_size", None),
        "image_size": getattr(data, "image_size", None),
        "seed": getattr(data, "seed", None),
        "early_stopping": early_stopping is not None,
        "backend": keras.backend.backend(),
    }


class EarlyStopping:
    """Stop once the monitored loss has not improved for `patience` epochs; keep the best weights."""

    def __init__(self, patience=3):
        self.patience = patience
        self.best, self.wait, self.best_epoch, self.best_weights = np.inf, 0, None, None

    def update(self, epoch, value, model, verbose=0):
        """Record epoch `epoch`'s (0-based) `value`; return whether to stop (said, with `verbose`)."""
        if value < self.best:
            self.best, self.wait, self.best_epoch = float(value), 0, epoch + 1
            self.best_weights = model.get_weights()
        else:
            self.wait += 1
        stop = self.wait >= self.patience
        if stop and verbose:
            print(f"Early stopping after epoch {epoch + 1}: best test loss {self.best:.4f} at epoch {self.best_epoch}")
        return stop

    def state(self):
        return {"best": self.best if np.isfinite(self.best) else None, "wait": self.wait, "best_epoch": self.best_epoch}

    def restore_state(self, state, best_weights):
        self.best = np.inf if state["best"] is None else state["best"]
        self.wait, self.best_epoch, self.best_weights = state["wait"], state["best_epoch"], best_weights


class RunBackup:
    """A run's backup in `folder` (`kflowers.training.backup`; no backup when `folder` is `None`): written by
    the main process after every finished epoch, and read back only by a run of the same `fingerprint`."""

    def __init__(self, folder, fingerprint):
        self.folder, self.fingerprint = folder, fingerprint

    def load(self):
        """The saved `backup.RunState`, or `None`; raises `BackupMismatch` when it is another run's."""
        state = backup.load(self.folder) if self.folder else None
        if state is not None:
            backup.check_fingerprint(state.fingerprint, self.fingerprint, self.folder)
        return state

    def save(self, epoch, stage, rows, early, model, optimizer):
        """The state after `epoch` epochs (1-based) in `stage`, with its early stopping (or `None`)."""
        if not self.folder or not is_main_process():  # under torchrun all processes hold the same state
            return
        state = backup.RunState(
            epoch=epoch,
            stage=stage.name,
            rows=rows,
            early_stopping=early.state() if early else None,
            weights=model.get_weights(),
            optimizer=[keras.ops.convert_to_numpy(v) for v in optimizer.variables],
            best_weights=early.best_weights if early else None,
            fingerprint=self.fingerprint,
        )
        backup.save(self.folder, state)


class RunLoop:
    """Runs one strategy's stages; see `train` for the arguments (and their defaults, kept there alone).

    The one owner of a run's state (stage, optimizer, history rows), which every part of it reads and
    writes; the pieces that stand alone are functions beside it (`choose_stages`, `run_fingerprint`) or
    classes of their own (`EarlyStopping`, `RunBackup`, `FeatureCache`).
    """

    def __init__(
        self,
        model,
        strategy,
        train_data,
        test_data,
        *,
        learning_rate,
        callbacks,
        verbose,
        feature_cache,
        backup_dir,
        early_stopping,
        patience,
        stop,
        recipe,
        keep_backup,
        identity,
    ):
        from kflowers.data.dataset import FlowerDataset

        self.model, self.strategy = model, strategy
        self.parts = model_parts(model)
        self.train_data, self.test_data = train_data, test_data
        self.learning_rate = learning_rate
        self.recipe = recipe or LESSON
        self.keep_backup = keep_backup
        self.callbacks = list(callbacks)
        self.verbose = verbose
        self.early = EarlyStopping(patience) if early_stopping else None
        self.stop = stop
        self.is_flower_data = isinstance(train_data, FlowerDataset)
        self.stages = choose_stages(strategy, train_data, feature_cache)
        fingerprint = run_fingerprint(strategy, self.recipe, self.stages, train_data, learning_rate, self.early)
        if identity is not None:
            fingerprint["run"] = identity
        self.backup = RunBackup(backup_dir, fingerprint)
        self.cache = None
        self.rows = []
        self.optimizer = None  # the optimizer of the stage being trained
        self.stopped_early = False
        self.stop_all = False  # a stop request seen by any process (under torchrun: by all of them)
        self.diverged = None  # (epoch, batch, loss) once the loss is not finite

    # ------------------------------------------------------------ stages

    def _enter(self, stage):
        """Compile for `stage`: a fresh optimizer of the stage's own (see `strategies.compile_stage`)."""
        steps = len(self.train_data) if hasattr(self.train_data, "__len__") else 1
        epochs = stage.end - stage.start
        args = (self.strategy, self.recipe, stage.name, epochs, steps, self.learning_rate)
        compile_stage(self.model, *args)
        if stage.name == "cached":
            from kflowers.training.feature_cache import FeatureCache

            self.cache = FeatureCache(self.model, self.train_data, self.test_data, verbose=self.verbose)
            head_model = self.cache.head_model
            optimizer = stage_optimizer(self.model, *args)
            head_model.compile(optimizer=optimizer, loss=stage_loss(self.recipe, "cached"), metrics=["accuracy"])
            self.optimizer = head_model.optimizer
            self.optimizer.build(head_model.trainable_variables)
        else:
            self.optimizer = self.model.optimizer
            self.optimizer.build(self.model.trainable_variables)
        if stage.name == "unfrozen" and self.verbose:
            rates = _rates_text(self.recipe, self.strategy, stage, self.learning_rate)
            print(f"Epoch {stage.start + 1}: backbone unfrozen, {rates}")

    def _fit(self, stage, first_epoch):
        from kflowers.training.callbacks import SetDatasetEpoch

        recorder = _Recorder(self)
        if stage.name == "cached":
            self.cache.fit(first_epoch, stage.end, callbacks=[*self.callbacks, recorder], verbose=self.verbose)
            return
        callbacks = [*self.callbacks, recorder]
        if self.is_flower_data:
            callbacks.insert(0, SetDatasetEpoch(self.train_data))
        self.model.fit(
            self.train_data,
            validation_data=self.test_data,
            initial_epoch=first_epoch,
            epochs=stage.end,
            shuffle=False,
            verbose=self.verbose,
            callbacks=callbacks,
        )

    # ------------------------------------------------------------ backup

    def _restore(self, state):
        stage = next(s for s in self.stages if s.name == state.stage)
        self._enter(stage)
        backup.assign(self.model.weights, state.weights, "weights")
        backup.assign(self.optimizer.variables, state.optimizer, "optimizer variables")
        self.rows = list(state.rows)
        if self.early:
            self.early.restore_state(state.early_stopping, state.best_weights)
        return stage

    # ------------------------------------------------------------ the run

    def run(self):
        state = self.backup.load()
        first_epoch, current = 0, None
        if state is not None:
            current = self._restore(state)
            first_epoch = state.epoch
            if first_epoch >= current.end:  # that stage's fit had ended: do what the end of a fit does
                trained = self.cache.head_model if current.name == "cached" else self.model
                self.optimizer.finalize_variable_values(trained.trainable_weights)  # the EMA weights, if any
            if self.verbose and first_epoch:
                print(f"Resuming after epoch {first_epoch} of {self.strategy.epochs}")
        stopped = self.early is not None and self.early.wait >= self.early.patience
        if state is not None and (first_epoch >= self.strategy.epochs or stopped) and not self.keep_backup:
            raise backup.BackupMismatch(
                f"the backup in {self.backup.folder} is of a run that finished: nothing is left to train; "
                "remove it (or pass another backup_dir) to train again"
            )
        for stage in self.stages:
            if stage.end <= first_epoch or stopped:
                continue
            if stage != current:
                self._enter(stage)
                current = stage
            self._fit(stage, max(first_epoch, stage.start))
            if self.diverged:
                epoch, batch, loss = self.diverged
                raise TrainingDiverged(
                    f"training diverged: the loss became {loss} at epoch {epoch}, "
                    f"batch {batch}; try a lower learning rate (--lr)"
                )
            if self._stop_requested() or self.stopped_early:
                break
        interrupted = self._stop_requested()
        if self.early is not None and self.early.best_weights is not None and not interrupted:
            self.model.set_weights(self.early.best_weights)
        if not interrupted and self.backup.folder and not self.keep_backup and is_main_process():
            backup.remove(self.backup.folder)  # only an interrupted run needs it
        only_cached = self.cache is not None and all(s.name == "cached" for s in self.stages)
        return TrainingResult(
            self.rows,
            interrupted=interrupted,
            stopped_early=self.stopped_early or stopped,
            best_epoch=self.early.best_epoch if self.early else None,
            test_features=self.cache.test_features if only_cached else None,
            feature_seconds=self.cache.seconds if self.cache is not None else 0.0,
        )

    def _stop_requested(self):
        return self.stop_all or (self.stop is not None and self.stop.is_set())

    def on_epoch_end(self, epoch, logs):
        """Called by `_Recorder` after a whole epoch; returns whether to stop."""
        row = {"epoch": epoch + 1}
        for key, value in (logs or {}).items():
            row[key] = float(value)
        if getattr(self.train_data, "image_sizes", None):  # progressive resizing: the epoch's side
            row["image_size"] = self.train_data.side(epoch)
        self.rows = [r for r in self.rows if r["epoch"] <= epoch] + [row]
        stop = False
        if self.early is not None:
            stop = self.early.update(epoch, row.get("test_loss", row.get("loss")), self.model, self.verbose)
            self.stopped_early = self.stopped_early or stop
        stage = next(s for s in self.stages if s.start <= epoch < s.end)
        self.backup.save(epoch + 1, stage, self.rows, self.early, self.model, self.optimizer)
        return stop


def _rates_text(recipe, strategy, stage, learning_rate=None):
    """`"learning rate 0.0001"`, or `"peak learning rate 0.001 (backbone 0.0001)"`: `stage`'s rates."""
    rates = recipe.stage_rates(strategy, stage.name, learning_rate)
    peak = "peak " if recipe.scheduled else ""
    backbone = f" (backbone {rates['backbone']:g})" if "backbone" in rates else ""
    return f"{peak}learning rate {rates['head']:g}{backbone}"


def _digest(paths):
    return hashlib.sha256("\n".join(map(str, paths)).encode("utf-8", "surrogateescape")).hexdigest()[:16]


class _Recorder(keras.callbacks.Callback):
    """Times epochs, stops after the batch when asked to, and hands whole epochs to the `RunLoop`."""

    def __init__(self, loop):
        super().__init__()
        self.loop = loop

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        diverged = loss is not None and not np.isfinite(float(loss))
        # Under torchrun every process stops at the same batch, or the others would wait for it forever.
        diverged, stop = agree(diverged, self.loop._stop_requested())
        if diverged:
            self.loop.diverged = (self._epoch + 1, batch + 1, float(loss) if loss is not None else float("nan"))
            self.model.stop_training = True
        if stop:
            self.loop.stop_all = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        # The test split is called so in the progress bar too, as in the run's files: Keras's bar and
        # History come after every other callback, which have seen Keras's own `val_*` names.
        for key in [k for k in (logs or {}) if k.startswith("val_")]:
            logs["test_" + key[4:]] = logs.pop(key)
        if self.loop._stop_requested() or self.loop.diverged:
            return  # cut short: not a finished epoch
        logs = dict(logs or {}, seconds=time.perf_counter() - self._start)
        if self.loop.on_epoch_end(epoch, logs):
            self.model.stop_training = True
