"""Training strategies: from scratch, frozen, fine-tune, two-stage, discriminative.

Every strategy is an ordinary `compile` + `fit`; what differs is which weights
start pretrained, which are trainable, the optimizer, and (two-stage) a
callback. `STRATEGIES` holds the lesson's hyper-parameters; `train` runs one.

Freezing is `model.get_layer("backbone").trainable = False`. In Keras a
non-trainable BatchNormalization layer also runs in inference mode: it
normalises with its stored statistics and leaves them untouched. (The PyTorch
lesson set `requires_grad=False` but kept `model.train()`, so its "frozen"
backbone still drifted its BatchNorm statistics towards the flowers.)
"""

import dataclasses
import json
import os
import re

import keras


@dataclasses.dataclass(frozen=True)
class Strategy:
    """How to train: the lesson's recipe for one run.

    Attributes:
        name: the strategy's name.
        weights: backbone initialisation, `"imagenet"` or `None`.
        epochs: epochs in all.
        learning_rate: the optimizer's learning rate (the head's, for
            `discriminative`).
        optimizer: `"sgd"` or `"adam"`.
        freeze: start with a frozen backbone.
        unfreeze_epoch: two-stage: the 0-based epoch at which the backbone is
            unfrozen.
        unfreeze_learning_rate: two-stage: the learning rate after that.
        backbone_learning_rate: discriminative: the backbone's learning rate.
    """

    name: str
    weights: object = "imagenet"
    epochs: int = 5
    learning_rate: float = 1e-2
    optimizer: str = "sgd"
    freeze: bool = False
    unfreeze_epoch: object = None
    unfreeze_learning_rate: object = None
    backbone_learning_rate: object = None

    def with_epochs(self, epochs):
        """This strategy over `epochs` epochs (two-stage keeps its split in half)."""
        if epochs is None:
            return self
        changes = {"epochs": epochs}
        if self.unfreeze_epoch is not None:
            changes["unfreeze_epoch"] = max(1, epochs // 2) if epochs > 1 else 1
        return dataclasses.replace(self, **changes)


STRATEGIES = {
    s.name: s
    for s in [
        Strategy("scratch", weights=None, epochs=15),
        Strategy("frozen", freeze=True),
        Strategy("finetune"),
        Strategy("two-stage", epochs=10, freeze=True, unfreeze_epoch=5,
                 unfreeze_learning_rate=1e-4),
        Strategy("discriminative", optimizer="adam", learning_rate=1e-3,
                 backbone_learning_rate=1e-4),
    ]
}


def get_strategy(name):
    """The `Strategy` called `name` (`"fine-tune"` and `"finetune"` both work)."""
    key = {"fine-tune": "finetune", "fine_tune": "finetune", "two_stage": "two-stage"}.get(name, name)
    if key not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return STRATEGIES[key]


def make_optimizer(name, learning_rate):
    """`keras.optimizers.SGD` or `Adam` at `learning_rate`."""
    optimizers = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam}
    if name not in optimizers:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(optimizers)}")
    return optimizers[name](learning_rate=learning_rate)


def discriminative_optimizer(model, backbone_learning_rate=1e-4, head_learning_rate=1e-3,
                             optimizer="adam", layer="backbone"):
    """One optimizer, two learning rates: slow for the backbone, fast elsewhere.

    A `keras.optimizers.MultiOptimizer` whose map sends every variable of the
    backbone to an optimizer at `backbone_learning_rate` and everything else
    (the head, and any layer you add) to one at `head_learning_rate`.

    Example:
    >>> model.compile(discriminative_optimizer(model, 1e-4, 1e-3), loss, ["accuracy"])
    """
    from kflowers.parts import model_parts

    backbone = model.get_layer(layer) if layer != "backbone" else model_parts(model).backbone
    prefixes = sorted({v.path.split("/")[0] for v in backbone.variables})
    pattern = "(" + "|".join(re.escape(p) for p in prefixes) + ")/.*"
    optimizer_map = keras.optimizers.OptimizerMap(
        default_optimizer=make_optimizer(optimizer, head_learning_rate),
        optimizer_map={pattern: make_optimizer(optimizer, backbone_learning_rate)},
    )
    return keras.optimizers.MultiOptimizer(optimizer_map)


def classification_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def compile_for(model, strategy, learning_rate=None):
    """Freeze (or not) and compile `model` for `strategy`; return the callbacks it needs.

    Args:
        model: a model from `build_model`.
        strategy: a `Strategy` or its name.
        learning_rate: overrides the strategy's (the head's, for
            discriminative).
    """
    from kflowers.callbacks import UnfreezeBackbone

    strategy = get_strategy(strategy) if isinstance(strategy, str) else strategy
    rate = learning_rate if learning_rate is not None else strategy.learning_rate
    from kflowers.parts import model_parts

    model_parts(model).backbone.trainable = not strategy.freeze
    if strategy.backbone_learning_rate is not None:
        optimizer = discriminative_optimizer(
            model, strategy.backbone_learning_rate, rate, optimizer=strategy.optimizer
        )
    else:
        optimizer = make_optimizer(strategy.optimizer, rate)
    model.compile(optimizer=optimizer, loss=classification_loss(), metrics=["accuracy"])
    callbacks = []
    if strategy.unfreeze_epoch is not None and strategy.unfreeze_epoch < strategy.epochs:
        callbacks.append(UnfreezeBackbone(strategy.unfreeze_epoch, strategy.unfreeze_learning_rate))
    return callbacks


def build_training_state(model, dataset):
    """Create the optimizer's, loss's and metrics' state before `fit`.

    Left unbuilt, `fit` builds them from a batch it reads ahead of the first
    epoch; with `workers > 1` that read-ahead keeps prefetching in the
    background and the first epoch then trains on batches in an order that
    depends on timing. Built here, from two samples of the first batch, every
    run with the same seed trains on the same batches.
    """
    model.optimizer.build(model.trainable_variables)
    images, labels = dataset[0]
    model.evaluate(images[:2], labels[:2], verbose=0)


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
    """

    def __init__(self, rows=(), interrupted=False, stopped_early=False, best_epoch=None,
                 test_features=None):
        self.rows = list(rows)
        self.interrupted = interrupted
        self.stopped_early = stopped_early
        self.best_epoch = best_epoch
        self.test_features = test_features

    @property
    def finished(self):
        """Every epoch ran, or early stopping ended the run."""
        return not self.interrupted


def train(model, strategy, train_data, test_data=None, epochs=None, learning_rate=None,
          callbacks=(), verbose=1, feature_cache=None, backup_dir=None, early_stopping=False,
          patience=3, stop=None):
    """Compile `model` for `strategy` and train it: the lesson's run, in Keras.

    This is the one owner of a run's lifecycle. It splits the run into
    stages (frozen on cached features, frozen through the network,
    unfrozen), runs each as an ordinary `fit`, and after every finished
    epoch records the history row and, with `backup_dir`, writes everything
    a resumed run needs (see `kflowers.backup`). An epoch cut short by an
    interruption is not recorded; with `backup_dir`, calling `train` again
    with the same arguments continues from the last finished epoch and ends
    with the same weights and history as an uninterrupted run.

    Args:
        model: a model from `build_model` (with the strategy's weights).
        strategy: a `Strategy` or its name.
        train_data: a `FlowerDataset` (or anything `fit` takes).
        test_data: evaluated after every epoch (`validation_data`).
        epochs: overrides the strategy's number of epochs.
        learning_rate: overrides the strategy's learning rate.
        callbacks: more Keras callbacks, passed to every stage's `fit`.
        verbose: Keras's progress bar setting.
        feature_cache: train the frozen epochs (all of `frozen`, the first
            stage of `two-stage`) on backbone features computed once
            (`kflowers.feature_cache`). Default: whenever the backbone starts
            frozen and `train_data` is a `FlowerDataset` without augmentation.
        backup_dir: keep the run's state here after every epoch, and resume
            from it when it holds one.
        early_stopping: stop once the test loss has not improved for
            `patience` epochs, and end with the best epoch's weights.
        patience: epochs without improvement before early stopping.
        stop: a `threading.Event`; once set, training stops after the current
            batch (the CLI sets it on Ctrl-C).

    Returns:
        A `TrainingResult`.

    Example:
    >>> model = build_model(weights="imagenet")
    >>> result = train(model, "two-stage", train_ds, test_ds)
    >>> result.rows[-1]["test_accuracy"]
    """
    from kflowers.run_loop import RunLoop

    strategy = get_strategy(strategy) if isinstance(strategy, str) else strategy
    strategy = strategy.with_epochs(epochs)
    loop = RunLoop(model, strategy, train_data, test_data, learning_rate=learning_rate,
                   callbacks=callbacks, verbose=verbose, feature_cache=feature_cache,
                   backup_dir=backup_dir, early_stopping=early_stopping, patience=patience, stop=stop)
    return loop.run()
