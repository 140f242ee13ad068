"""Training strategies: from scratch, frozen, fine-tune, two-stage, discriminative.

Every strategy is an ordinary `compile` + `fit`; what differs is which weights
start pretrained, which are trainable, the optimizer, and (two-stage) when the
backbone unfreezes. `STRATEGIES` holds the lesson's hyper-parameters;
`kflowers.training.train` runs one.

Freezing is `model_parts(model).backbone.trainable = False`. In Keras a
non-trainable BatchNormalization layer also runs in inference mode: it
normalises with its stored statistics and leaves them untouched. (The PyTorch
lesson set `requires_grad=False` but kept `model.train()`, so its "frozen"
backbone still drifted its BatchNorm statistics towards the flowers.)
"""

import dataclasses
import re

import keras

from kflowers.options import strategy_name


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
        Strategy("two-stage", epochs=10, freeze=True, unfreeze_epoch=5, unfreeze_learning_rate=1e-4),
        Strategy("discriminative", optimizer="adam", learning_rate=1e-3, backbone_learning_rate=1e-4),
    ]
}


def get_strategy(name):
    """The `Strategy` called `name` (`"fine-tune"` and `"finetune"` both work).

    Raises:
        ValueError: not a strategy.
    """
    return STRATEGIES[strategy_name(name)]


def make_optimizer(name, learning_rate):
    """`keras.optimizers.SGD` or `Adam` at `learning_rate`."""
    optimizers = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam}
    if name not in optimizers:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(optimizers)}")
    return optimizers[name](learning_rate=learning_rate)


def discriminative_optimizer(
    model, backbone_learning_rate=1e-4, head_learning_rate=1e-3, optimizer="adam", layer="backbone"
):
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
        optimizer = discriminative_optimizer(model, strategy.backbone_learning_rate, rate, optimizer=strategy.optimizer)
    else:
        optimizer = make_optimizer(strategy.optimizer, rate)
    model.compile(optimizer=optimizer, loss=classification_loss(), metrics=["accuracy"])
    callbacks = []
    if strategy.unfreeze_epoch is not None and strategy.unfreeze_epoch < strategy.epochs:
        callbacks.append(UnfreezeBackbone(strategy.unfreeze_epoch, strategy.unfreeze_learning_rate))
    return callbacks
