"""Callbacks for transfer learning with `model.fit`."""

import os

import keras


class UnfreezeBackbone(keras.callbacks.Callback):
    """Unfreeze the backbone at the start of epoch `epoch`, in the same `fit`.

    This is the stock two-`fit` idiom (freeze, compile, fit; unfreeze,
    recompile, fit again) inside one `fit`: at the switch the backbone
    becomes trainable (its BatchNorm layers then switch from inference to
    training mode), the model gets a fresh optimizer of the same kind and
    configuration (`fresh_optimizer`: at `learning_rate` when given, step
    count, moments and weight averages starting anew, as after a
    recompile), and the training step is rebuilt. Every optimizer option
    and wrapper carries over: `use_ema` (at the switch the frozen epochs'
    averages replace the weights, as at the end of a `fit`, and new
    averages start from there), mixed-float16 loss scaling (the loss scale carries on),
    `gradient_accumulation_steps`, clipping, schedules (which start again
    at step 0) and `MultiOptimizer`. Until the switch, `model.optimizer` is
    the optimizer you compiled with.

    With `kflowers.callbacks.BackupAndRestore` (Keras's, which also records
    the stage), a `fit` resumed before or after the switch ends exactly as
    the uninterrupted one, optimizer state included. With Keras's own, a
    `fit` resumed after the switch restores the weights and starts the
    optimizer afresh (Keras skips optimizer variables saved for another set
    of variables, with its warning). `kflowers train --resume` is exact too.

    Args:
        epoch: 0-based index of the first epoch with a trainable backbone
            (`epoch=5`: five frozen epochs, then the rest unfrozen).
        learning_rate: the learning rate from the switch on; `None` keeps the
            optimizer's (its schedule, if it has one). Not for a
            `MultiOptimizer`, whose parts each have their own.
        layer: name of the backbone layer.
        verbose: print a line at the switch.
        optimizer: `None`, or a function of the model that returns the
            optimizer to train with from the switch on (a Keras optimizer,
            not yet built), instead of a fresh copy of the compiled one; with
            `learning_rate=None`. `kflowers.compile_for` passes the unfrozen
            stage's optimizer (`stage_optimizer`), the one `kflowers train`
            compiles between its two `fit`s.

    Example:
    ```python
    kflowers.model_parts(model).backbone.trainable = False
    model.compile(keras.optimizers.SGD(1e-2), loss, metrics=["accuracy"])
    model.fit(train_ds, epochs=4, callbacks=[UnfreezeBackbone(epoch=2, learning_rate=1e-4)])
    ```
    """

    def __init__(self, epoch, learning_rate=None, layer="backbone", verbose=1, optimizer=None):
        super().__init__()
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if optimizer is not None and learning_rate is not None:
            raise ValueError("pass learning_rate or optimizer, not both: the optimizer has its own rate")
        self.epoch = int(epoch)
        self.learning_rate = learning_rate
        self.layer = layer
        self.verbose = verbose
        self.optimizer = optimizer
        self.switched = False  # in this fit

    def on_train_begin(self, logs=None):
        self.switched = False

    def on_epoch_begin(self, epoch, logs=None):
        backbone = self.model.get_layer(self.layer)
        if epoch < self.epoch or self.switched:
            return
        self.switched = True
        compiled = self.model.optimizer
        resumed = backbone.trainable  # past the switch already: BackupAndRestore restored the unfrozen stage
        if resumed and epoch == self.epoch:
            return  # trainable from the start: nothing to switch
        if not resumed:
            compiled.finalize_variable_values(self.model.trainable_variables)  # as the end of a fit does
        backbone.trainable = True
        variables = self.model.trainable_variables
        if self.optimizer is None:
            new = fresh_optimizer(compiled, variables, self.learning_rate)
        else:
            new = replacing(compiled, self.optimizer(self.model), variables)
        if resumed and len(new.variables) == len(compiled.variables):  # the restored state, in the stage's optimizer
            for mine, restored in zip(new.variables, compiled.variables):
                mine.assign(restored)
        self.model.optimizer = new
        self.model.make_train_function(force=True)
        if self.verbose and not resumed:
            rate = "" if self.learning_rate is None else f", learning rate {self.learning_rate:g}"
            print(f"\nEpoch {epoch + 1}: backbone unfrozen{rate}")


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras's `BackupAndRestore`, which also records whether the backbone trains, so that a `fit` with
    `UnfreezeBackbone` resumes exactly after the switch too.

    Keras restores the optimizer before any other callback runs, into an
    optimizer built for the variables that train at the start (the frozen
    stage's); after the switch the backup holds the unfrozen stage's. This
    callback makes the backbone trainable first, when the backup was taken
    after the switch, so the restored optimizer state fits; `UnfreezeBackbone`
    then carries it into the unfrozen stage's optimizer. Everything else is
    Keras's (arguments, files, deleting the backup at the end).

    Args:
        backup_dir: as Keras's.
        layer: name of the backbone layer. Defaults to `"backbone"`.
        **kwargs: Keras's other arguments (`save_freq`, ...).

    Example:
    ```python
    callbacks = [kflowers.callbacks.BackupAndRestore("backup"), UnfreezeBackbone(epoch=5, learning_rate=1e-4)]
    model.fit(train_ds, epochs=10, callbacks=callbacks)  # run again after a crash: it goes on exactly
    ```
    """

    STAGE_FILE = "kflowers_stage.json"

    def __init__(self, backup_dir, layer="backbone", **kwargs):
        super().__init__(backup_dir, **kwargs)
        self.layer = layer
        self._recorded = None

    def _stage_path(self):
        return os.path.join(self.backup_dir, self.STAGE_FILE)

    def on_train_begin(self, logs=None):
        from kflowers.files import read_json

        backbone = self.model.get_layer(self.layer)
        path = self._stage_path()
        recorded = read_json(path) if os.path.exists(path) else {}
        if recorded.get("backbone_trainable") and not backbone.trainable:
            backbone.trainable = True  # as when the backup was taken
            optimizer = self.model.optimizer
            if optimizer is not None and optimizer.built:  # built for the frozen stage (jax's fit builds early)
                self.model.optimizer = type(optimizer).from_config(optimizer.get_config())
        super().on_train_begin(logs)

    def _record(self):
        trainable = bool(self.model.get_layer(self.layer).trainable)
        if trainable != self._recorded:
            from kflowers.files import write_json

            os.makedirs(self.backup_dir, exist_ok=True)
            write_json(self._stage_path(), {"backbone_trainable": trainable})
            self._recorded = trainable

    def on_train_batch_end(self, batch, logs=None):
        self._record()  # before Keras's backup of this batch, if it takes one
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._record()
        super().on_epoch_end(epoch, logs)


def fresh_optimizer(optimizer, variables, learning_rate=None):
    """A new optimizer of `optimizer`'s kind and configuration, built for `variables`.

    What a recompile with a new optimizer gives: step count, moments and
    weight averages start anew. A `LossScaleOptimizer` keeps its current
    loss scale (the scale it found is still right for the model).

    Args:
        optimizer: a Keras optimizer, a `LossScaleOptimizer` or a `MultiOptimizer`.
        variables: the variables the new optimizer updates.
        learning_rate: the new optimizer's learning rate (a float or a
            schedule); `None` keeps `optimizer`'s configuration.

    Raises:
        ValueError: `learning_rate` for an optimizer without a single one.

    Example:
    ```python
    model.optimizer = fresh_optimizer(model.optimizer, model.trainable_variables, 1e-4)
    ```
    """
    config = optimizer.get_config()
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    if learning_rate is not None:
        target = config["inner_optimizer"]["config"] if scaled else config
        if "learning_rate" not in target:
            raise ValueError(f"{type(optimizer).__name__} has no single learning rate to set; pass learning_rate=None")
        if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            learning_rate = keras.optimizers.schedules.serialize(learning_rate)
        target["learning_rate"] = learning_rate
    fresh = type(optimizer).from_config(config)
    fresh.build(variables)
    if scaled:
        fresh.dynamic_scale.assign(optimizer.dynamic_scale)
    return fresh


def replacing(optimizer, new, variables):
    """`new` built for `variables`, in place of `optimizer`: wrapped in a `LossScaleOptimizer` at its current
    loss scale when `optimizer` is one (as `compile` wraps it under `mixed_float16`)."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        new = keras.optimizers.LossScaleOptimizer(new)
        new.build(variables)
        new.dynamic_scale.assign(optimizer.dynamic_scale)
    else:
        new.build(variables)
    return new


class SetDatasetEpoch(keras.callbacks.Callback):
    """Tell a `FlowerDataset` which epoch is starting.

    The dataset counts epochs itself; this keeps it right when `fit` starts
    at a later epoch (`initial_epoch`, or resuming with `BackupAndRestore`),
    so a resumed run shuffles and augments exactly as an uninterrupted one.
    """

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset
        dataset.follow_fit_epochs()

    def on_epoch_begin(self, epoch, logs=None):
        self.dataset.set_epoch(epoch)
