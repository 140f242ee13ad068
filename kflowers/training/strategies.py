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

from kflowers.models.losses import SparseCrossentropyWithSmoothing
from kflowers.models.losses import saved_with_keras_loss
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

    def weights_for(self, requested):
        """The backbone weights a run starts from: this strategy's own for `"default"`, else `requested`
        (`"none"`: `None`, random weights)."""
        from kflowers.models.weights import weights_value

        return self.weights if requested == "default" else weights_value(requested)

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

    Args:
        model: `keras.Model`. A model from `build_model`.
        backbone_learning_rate: float. The backbone's rate. Defaults to
            `1e-4`.
        head_learning_rate: float. The rate of everything else. Defaults to
            `1e-3`.
        optimizer: str. A Keras optimizer name, for both parts. Defaults to
            `"adam"`.
        layer: str. The name of the layer that trains slowly. Defaults to
            `"backbone"`: the keras-hub backbone.

    Example:
    ```python
    model.compile(discriminative_optimizer(model, 1e-4, 1e-3), loss, ["accuracy"])
    ```
    """
    head = make_optimizer(optimizer, head_learning_rate)  # made first, as it always was (its name: "adam")
    return per_part_optimizer(model, make_optimizer(optimizer, backbone_learning_rate), head, layer=layer)


def classification_loss(label_smoothing=0.0):
    """Cross-entropy of integer labels against logits; with `label_smoothing`, `SparseCrossentropyWithSmoothing`."""
    if label_smoothing:
        return SparseCrossentropyWithSmoothing(label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# BatchNorm's scale and offset and every bias: no weight decay (they set scales, not features).
NO_WEIGHT_DECAY = ["gamma", "beta", "bias"]


def recipe_optimizer(kind, learning_rate, recipe):
    """One Keras optimizer of `kind` at `learning_rate` (a float or a schedule) with `recipe`'s settings."""
    settings = {}
    if recipe.ema_momentum is not None:
        settings.update(use_ema=True, ema_momentum=recipe.ema_momentum)
    if recipe.weight_decay:
        settings["weight_decay"] = recipe.weight_decay
    if kind == "sgd":
        optimizer = keras.optimizers.SGD(
            learning_rate, momentum=recipe.momentum, nesterov=recipe.momentum > 0, **settings
        )
    elif kind in ("adam", "adamw"):
        adam = keras.optimizers.AdamW if recipe.weight_decay else keras.optimizers.Adam
        optimizer = adam(learning_rate, **settings)
    else:
        raise ValueError(f"unknown optimizer {kind!r}; choose from sgd, adam, adamw")
    if recipe.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
    return optimizer


def compile_stage(model, strategy, recipe, stage, epochs, steps_per_epoch, learning_rate=None):
    """Freeze or unfreeze `model` for one stage of `strategy` and compile it as `recipe` says.

    Each stage gets a fresh optimizer (`stage_optimizer`) and the recipe's
    loss (label smoothing only where the backbone trains).

    Args:
        model: a model from `build_model`.
        strategy: a `Strategy`.
        recipe: a `kflowers.recipes.Recipe`.
        stage: `"trainable"`, `"frozen"`, `"cached"` or `"unfrozen"` (see `kflowers.training`).
        epochs: the stage's epochs.
        steps_per_epoch: training steps in an epoch (the schedule's unit).
        learning_rate: overrides the recipe's (or the strategy's) head rate.

    Example:
    ```python
    compile_stage(model, get_strategy("scratch"), kflowers.recipes.get_recipe("modern", "scratch"), "trainable", 40, 41)
    ```
    """
    from kflowers.models.parts import model_parts

    model_parts(model).backbone.trainable = stage in ("trainable", "unfrozen")
    model.compile(
        optimizer=stage_optimizer(model, strategy, recipe, stage, epochs, steps_per_epoch, learning_rate),
        loss=stage_loss(recipe, stage),
        metrics=["accuracy"],
    )
    saved_with_keras_loss(model)  # its files open with plain keras.models.load_model


def stage_loss(recipe, stage):
    """The loss of one stage: label smoothing only where the backbone trains."""
    return classification_loss(recipe.label_smoothing if stage in ("trainable", "unfrozen") else 0.0)


def stage_optimizer(model, strategy, recipe, stage, epochs, steps_per_epoch, learning_rate=None):
    """A fresh optimizer for one stage (arguments as `compile_stage`'s), at `recipe.stage_rates`.

    The recipe's optimizer (the strategy's, for the lesson) with its settings
    and, when it has one, its warmup and cosine schedule over `epochs`; where
    the backbone has a rate of its own, one optimizer per part
    (`per_part_optimizer`).
    """
    from kflowers.recipes import learning_rate_schedule

    def optimizer(rate):
        schedule = learning_rate_schedule(rate, epochs, steps_per_epoch, recipe.warmup_epochs, recipe.cosine)
        return recipe_optimizer(recipe.optimizer or strategy.optimizer, schedule, recipe)

    rates = recipe.stage_rates(strategy, stage, learning_rate)
    head = optimizer(rates["head"])  # made first, as it always was (its name: "adam", "sgd")
    if "backbone" in rates:
        return per_part_optimizer(model, optimizer(rates["backbone"]), head)
    return head


def per_part_optimizer(model, backbone_optimizer, head_optimizer, layer="backbone"):
    """A `keras.optimizers.MultiOptimizer`: `backbone_optimizer` for the backbone's variables,
    `head_optimizer` for everything else (the head, and any layer you add)."""
    from kflowers.models.parts import model_parts

    backbone = model.get_layer(layer) if layer != "backbone" else model_parts(model).backbone
    prefixes = sorted({v.path.split("/")[0] for v in backbone.variables})
    pattern = "(" + "|".join(re.escape(p) for p in prefixes) + ")/.*"
    optimizer_map = keras.optimizers.OptimizerMap(
        default_optimizer=head_optimizer, optimizer_map={pattern: backbone_optimizer}
    )
    return keras.optimizers.MultiOptimizer(optimizer_map)


def compile_for(model, strategy, learning_rate=None, epochs=None):
    """Freeze (or not) and compile `model` for `strategy` with the lesson's recipe; return the callbacks it needs.

    One `fit` with these callbacks trains as `kflowers.training.train` does
    in its stages: the first stage's compile (`compile_stage`) now and, for
    `two-stage`, an `UnfreezeBackbone` that switches to the unfrozen stage's
    optimizer (`stage_optimizer`, the same call) at the strategy's epoch.
    (The modern recipe also changes the loss at the unfreeze, which a
    callback can't inside a `fit`: `train` runs it as two `fit`s.)

    Args:
        model: `keras.Model`. A model from `build_model`.
        strategy: `Strategy` or str. The strategy or its name.
        learning_rate: float or `None`. Overrides the strategy's (the
            head's, for discriminative). Defaults to `None`.
        epochs: int or `None`. Overrides the strategy's epochs (two-stage
            unfreezes halfway). Defaults to `None`.

    Example:
    ```python
    callbacks = compile_for(model, "two-stage", epochs=4)
    model.fit(train_ds, epochs=4, callbacks=callbacks)
    ```
    """
    from kflowers.recipes import LESSON
    from kflowers.training.callbacks import UnfreezeBackbone
    from kflowers.training.loop import plan_stages

    strategy = get_strategy(strategy) if isinstance(strategy, str) else strategy
    strategy = strategy.with_epochs(epochs)
    first, *later = plan_stages(strategy, cached=False)  # the lesson's rates are fixed: one step an epoch will do
    compile_stage(model, strategy, LESSON, first.name, first.end - first.start, 1, learning_rate)
    callbacks = []
    for stage in later:  # two-stage's unfrozen stage

        def optimizer(model, stage=stage):
            return stage_optimizer(model, strategy, LESSON, stage.name, stage.end - stage.start, 1, learning_rate)

        callbacks.append(UnfreezeBackbone(stage.start, optimizer=optimizer))
    return callbacks
