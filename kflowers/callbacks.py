"""Callbacks for transfer learning with `model.fit`."""

import keras


class UnfreezeBackbone(keras.callbacks.Callback):
    """Unfreeze the backbone at the start of epoch `epoch`, in the same `fit`.

    Keras fixes a model's trainable variables, and the variables its optimizer
    updates, when training starts: flipping `trainable` from a callback is not
    enough. At the switch this callback makes the backbone trainable (its
    BatchNorm layers then switch from inference to training mode), starts the
    optimizer afresh (its moments and other slots as a new optimizer of the
    same kind and configuration has them, at `learning_rate`, the step
    counter carried on) and rebuilds the training step. This is what the
    PyTorch lesson does between its two stages, without a second `fit`.

    On the torch and tensorflow backends the optimizer is built, from the
    start of `fit`, for every variable that trains after the switch, so its
    variables never change: `keras.callbacks.BackupAndRestore` saves and
    restores them across the switch like any others (a run resumed after the
    switch keeps its moments and step count). jax's optimizers update exactly
    the variables they were built for, so there the optimizer is rebuilt at
    the switch, and a backup from after the switch restores the weights but
    not the optimizer's moments.

    Args:
        epoch: 0-based index of the first epoch with a trainable backbone
            (`epoch=5`: five frozen epochs, then the rest unfrozen).
        learning_rate: the learning rate from the switch on; `None` keeps the
            optimizer's.
        layer: name of the backbone layer.

    Example:
    >>> kflowers.model_parts(model).backbone.trainable = False
    >>> model.compile(keras.optimizers.SGD(1e-2), loss, metrics=["accuracy"])
    >>> model.fit(train_ds, epochs=10,
    ...           callbacks=[UnfreezeBackbone(epoch=5, learning_rate=1e-4)])
    """

    def __init__(self, epoch, learning_rate=None, layer="backbone", verbose=1):
        super().__init__()
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)
        self.learning_rate = learning_rate
        self.layer = layer
        self.verbose = verbose
        self._prepared = None  # the optimizer this callback built for the variables after the switch

    def set_model(self, model):
        # Called when fit gathers its callbacks: after fit has built the optimizer,
        # before any callback's on_train_begin (BackupAndRestore loads there).
        super().set_model(model)
        backbone = model.get_layer(self.layer)
        if backbone.trainable or keras.backend.backend() == "jax" or model.optimizer is None:
            return
        if model.optimizer is self._prepared:
            return
        backbone.trainable = True
        after_switch = model.trainable_variables
        backbone.trainable = False
        model.optimizer = self._prepared = rebuilt_optimizer(model.optimizer, after_switch)

    def on_epoch_begin(self, epoch, logs=None):
        backbone = self.model.get_layer(self.layer)
        if epoch < self.epoch or backbone.trainable:
            return
        backbone.trainable = True
        if keras.backend.backend() == "jax":
            self.model.optimizer = rebuilt_optimizer(
                self.model.optimizer, self.model.trainable_variables, self.learning_rate
            )
        elif epoch == self.epoch:
            # The switch itself; an epoch past it is a run resumed from a backup that holds
            # the optimizer's state after the switch.
            restart_optimizer(self.model.optimizer, self.model.trainable_variables, self.learning_rate)
        self.model.make_train_function(force=True)
        if self.verbose:
            rate = "" if self.learning_rate is None else f", learning rate {self.learning_rate:g}"
            print(f"\nEpoch {epoch + 1}: backbone unfrozen{rate}")


def restart_optimizer(optimizer, variables, learning_rate=None):
    """Give `optimizer`, built for `variables`, a new one's state (at `learning_rate`), keeping its step count."""
    fresh = rebuilt_optimizer(optimizer, variables, learning_rate)
    for variable, value in zip(optimizer.variables, fresh.variables):
        if variable is not optimizer.iterations:
            variable.assign(value)


def rebuilt_optimizer(optimizer, variables, learning_rate=None):
    """A fresh copy of `optimizer`, built for `variables`.

    Its configuration is the old one's (with `learning_rate` when given) and
    its step counter continues from the old one's.
    """
    config = optimizer.get_config()
    if learning_rate is not None:
        if "learning_rate" not in config:
            raise ValueError(f"{type(optimizer).__name__} has no single learning rate to set; pass learning_rate=None")
        config["learning_rate"] = learning_rate
    fresh = type(optimizer).from_config(config)
    fresh.build(variables)
    fresh.iterations.assign(optimizer.iterations)
    return fresh


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
