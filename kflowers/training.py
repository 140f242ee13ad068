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


def freeze_backbone(model, layer="backbone"):
    """Freeze the backbone: no gradient updates, BatchNorm in inference mode."""
    model.get_layer(layer).trainable = False


def unfreeze_backbone(model, layer="backbone"):
    """Make the backbone trainable again (compile afterwards)."""
    model.get_layer(layer).trainable = True


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
    backbone = model.get_layer(layer)
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
    model.get_layer("backbone").trainable = not strategy.freeze
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


class EpochHistory(keras.callbacks.Callback):
    """Per-epoch metrics with the lesson's names (`test_*`, not `val_*`) and wall time.

    Args:
        path: optional JSON file kept up to date after every epoch. Rows
            already there for earlier epochs are kept, so a resumed run's
            history includes the epochs before the interruption.
    """

    def __init__(self, path=None):
        super().__init__()
        self.path = path
        self.rows = []
        self.test_features = None  # set when the whole run trained on cached features
        if path and os.path.exists(path):
            with open(path) as f:
                self.rows = json.load(f)

    def on_train_begin(self, logs=None):
        resumed_at = getattr(self.model, "_initial_epoch", None)  # set by BackupAndRestore
        if resumed_at is not None:
            self.rows = [row for row in self.rows if row["epoch"] <= resumed_at]

    def on_epoch_begin(self, epoch, logs=None):
        import time

        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        import time

        row = {"epoch": epoch + 1}
        for key, value in (logs or {}).items():
            name = "test_" + key[4:] if key.startswith("val_") else key
            row[name] = float(value)
        row["seconds"] = time.perf_counter() - self._start
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
        if self.path:
            from kflowers.files import write_json

            write_json(self.path, self.rows)

    def columns(self):
        history = {}
        for row in self.rows:
            for key, value in row.items():
                history.setdefault(key, []).append(value)
        return history


def train(model, strategy, train_data, test_data=None, epochs=None, learning_rate=None,
          callbacks=(), verbose=1, history_path=None, feature_cache=None):
    """Compile `model` for `strategy` and fit it: the lesson's run, in Keras.

    Args:
        model: a model from `build_model` (with the strategy's weights).
        strategy: a `Strategy` or its name.
        train_data: a `FlowerDataset` (or anything `fit` takes).
        test_data: evaluated after every epoch (`validation_data`).
        epochs: overrides the strategy's number of epochs.
        learning_rate: overrides the strategy's learning rate.
        callbacks: more Keras callbacks.
        verbose: Keras's progress bar setting.
        history_path: keep the per-epoch rows in this JSON file (see
            `EpochHistory`).
        feature_cache: train the frozen epochs (all of `frozen`, the first
            stage of `two-stage`) on backbone features computed once
            (`kflowers.feature_cache`). Default: whenever the backbone starts
            frozen and `train_data` is a `FlowerDataset` without augmentation.

    Returns:
        An `EpochHistory`: `.rows` (one dict per epoch) and `.columns()`.

    Example:
    >>> model = build_model(weights="imagenet")
    >>> history = train(model, "two-stage", train_ds, test_ds)
    >>> history.rows[-1]["test_accuracy"]
    """
    from kflowers.callbacks import SetDatasetEpoch
    from kflowers.data import FlowerDataset

    strategy = get_strategy(strategy) if isinstance(strategy, str) else strategy
    strategy = strategy.with_epochs(epochs)
    extra = compile_for(model, strategy, learning_rate=learning_rate)
    history = EpochHistory(history_path)
    is_flower_data = isinstance(train_data, FlowerDataset)
    cacheable = strategy.freeze and is_flower_data and not train_data.augment
    if feature_cache is None:
        feature_cache = cacheable
    elif feature_cache and not cacheable:
        raise ValueError("the feature cache needs a strategy with a frozen backbone and a "
                         "FlowerDataset without augmentation")

    frozen_epochs = 0
    if feature_cache:
        from kflowers.feature_cache import fit_head_on_features

        frozen_epochs = min(strategy.unfreeze_epoch or strategy.epochs, strategy.epochs)
        cached = fit_head_on_features(model, train_data, test_data, epochs=frozen_epochs,
                                      optimizer=model.optimizer, verbose=verbose,
                                      callbacks=[history, *_cache_safe(callbacks)])
        if frozen_epochs >= strategy.epochs:
            # The backbone never changed: the test features still hold.
            history.test_features = cached.test_features
            return history
    all_callbacks = list(extra) + list(callbacks) + [history]
    if is_flower_data:
        all_callbacks.insert(0, SetDatasetEpoch(train_data))
    if frozen_epochs:
        # The head was trained above; the full model continues from here.
        model.get_layer("backbone").trainable = True
        from kflowers.callbacks import rebuilt_optimizer

        model.compile(optimizer=rebuilt_optimizer(model.optimizer, model.trainable_variables,
                                                  strategy.unfreeze_learning_rate),
                      loss=model.loss, metrics=["accuracy"])
        all_callbacks = [c for c in all_callbacks if not type(c).__name__ == "UnfreezeBackbone"]
    if is_flower_data:
        build_training_state(model, train_data)
    model.fit(train_data, validation_data=test_data, epochs=strategy.epochs, initial_epoch=frozen_epochs,
              shuffle=False, callbacks=all_callbacks, verbose=verbose)
    return history


def _cache_safe(callbacks):
    """Callbacks that also make sense on the head-only model of the cache.

    Backups and checkpoints would save the head alone; the cached epochs are
    cheap to redo, so they are left out there.
    """
    file_writers = (keras.callbacks.BackupAndRestore, keras.callbacks.ModelCheckpoint)
    return [c for c in callbacks if not isinstance(c, file_writers)]
