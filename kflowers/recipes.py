"""Recipes: how a strategy trains (`--recipe lesson|modern`), orthogonal to what trains when.

A strategy (`kflowers.strategies`) says which weights start pretrained, which
train, and when the backbone unfreezes. A recipe says how each stage trains:
optimizer, learning-rate schedule, regularisation, augmentation and how the
test images are scored.

    lesson   the PyTorch lesson, byte for byte: plain SGD (Adam for
             discriminative) at a fixed rate, no schedule, no augmentation
             unless --augment, no label smoothing, no EMA, one view per test image.
    modern   one coherent recipe per strategy, from today's practice
             (torchvision's and timm's reference recipes, fastai's
             `fine_tune`), built from Keras and albumentations:
               - SGD with Nesterov momentum (AdamW for discriminative) and
                 weight decay kept off BatchNorm and biases;
               - a linear warmup then cosine decay to zero, per stage (each
                 stage gets a fresh optimizer and schedule, as fastai's
                 `fine_tune` does);
               - the backbone at a tenth of the head's rate wherever it trains
                 with a pretrained start (discriminative rates);
               - random-resized crops and flips, plus one TrivialAugment-style
                 colour or geometry operation per image and random erasing;
               - label smoothing 0.1 (not for head-only training on frozen
                 features, where it hurts transfer: Kornblith et al. 2019);
               - an exponential moving average of the weights (Keras's
                 `use_ema`), which the model ends with, is evaluated with and
                 is saved with;
               - test-time augmentation: each test image is scored as the mean
                 of its and its mirror image's probabilities;
               - from scratch, progressive resizing (fastai): the first half of the
                 epochs at 2/3 of the side, the next quarter at 5/6, the last
                 quarter at the full side (`epoch_image_sizes`);
               - from scratch, test images scored at 4/3 of the training side:
                 random-resized crops show a flower larger than a whole
                 photo resized to the same side does (FixRes, Touvron et al.
                 2019); the saved model takes that size.
             No mixup or cutmix: they need far more data than a few thousand
             images to pay (BiT's HyperRule: none below ~20k).

Every ingredient can be turned off by name (`--without ema tta`), for an
ablation or because a setting needs it.

Example:
```python
recipe = get_recipe("modern", "scratch", without=["ema"])
recipe.label_smoothing, recipe.ema_momentum  # (0.1, None)
```
"""

import dataclasses

RECIPE_NAMES = ("lesson", "modern")
# What `--without` can remove from the modern recipe.
INGREDIENTS = (
    "schedule",
    "momentum",
    "weight-decay",
    "label-smoothing",
    "augment",
    "random-erasing",
    "ema",
    "tta",
    "test-resolution",
    "progressive-resizing",
)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How each stage of a strategy trains.

    Attributes:
        name: `"lesson"` or `"modern"`.
        optimizer: `"sgd"`, `"adam"` or `"adamw"`; `None` keeps the strategy's.
        learning_rate: the head's peak learning rate; `None` keeps the strategy's.
        momentum: SGD's momentum (Nesterov when above 0).
        weight_decay: decoupled weight decay, off for BatchNorm and biases.
        warmup_epochs: epochs of linear warmup at the start of each stage.
        cosine: cosine decay to zero after the warmup; `False` keeps the rate fixed.
        backbone_rate: the backbone's rate as a fraction of the head's where it
            trains from a pretrained start; `None` keeps the strategy's.
        label_smoothing: for the stages that train through the backbone.
        augment: `False`, `"basic"` (random-resized crops and flips) or
            `"trivial"` (basic plus one TrivialAugment-style operation).
        random_erasing: probability of erasing a random rectangle of an image.
        ema_momentum: momentum of the weights' moving average; `None` for none.
        tta: score test images with their mirror images too.
        test_scale: score test images at this multiple of the training side
            (the saved model takes that size); `None` for the same side.
        unfrozen_rate: the head's peak rate after two-stage's switch, as a
            fraction of its first stage's (the backbone's is `backbone_rate`
            of that); `None` uses the strategy's `unfreeze_learning_rate`.
        epochs: epochs in all; `None` keeps the strategy's.
        image_size: side of the training images; `None` keeps the run's.
        progressive: progressive resizing (fastai): the phases before the
            full side, each `(fraction of the epochs, fraction of the side)`;
            `()` trains every epoch at the full side (`epoch_image_sizes`).
    """

    name: str = "lesson"
    optimizer: object = None
    learning_rate: object = None
    momentum: float = 0.0
    weight_decay: float = 0.0
    warmup_epochs: int = 0
    cosine: bool = False
    backbone_rate: object = None
    label_smoothing: float = 0.0
    augment: object = False
    random_erasing: float = 0.0
    ema_momentum: object = None
    tta: bool = False
    test_scale: object = None
    unfrozen_rate: object = None
    epochs: object = None
    image_size: object = None
    progressive: tuple = ()

    @property
    def scheduled(self):
        """Whether the learning rate follows a schedule (warmup, cosine) rather than staying fixed."""
        return bool(self.cosine or self.warmup_epochs)

    def stage_rates(self, strategy, stage, learning_rate=None):
        """The learning rates of one stage of `strategy`: `{"head": rate}`, plus `"backbone"` where the
        backbone trains at its own rate. Peaks, when the recipe has a schedule.

        The one home of the rates: the stage's optimizer is built from them
        (`kflowers.training.strategies.stage_optimizer`) and `config.json`
        records them.

        Args:
            strategy: a `kflowers.strategies.Strategy`.
            stage: `"trainable"`, `"frozen"`, `"cached"` or `"unfrozen"`.
            learning_rate: the head's rate given by the user (`--lr`); `None`
                keeps the recipe's, or else the strategy's.

        Example:
        ```python
        from kflowers.strategies import get_strategy

        get_recipe("modern", "two-stage").stage_rates(get_strategy("two-stage"), "unfrozen")
        # {"head": 0.001, "backbone": 0.0001}
        ```
        """
        head = next(r for r in (learning_rate, self.learning_rate, strategy.learning_rate) if r is not None)
        if stage == "unfrozen":
            head = strategy.unfreeze_learning_rate if self.unfrozen_rate is None else head * self.unfrozen_rate
        rates = {"head": head}
        if stage in ("trainable", "unfrozen"):  # the backbone trains
            if self.backbone_rate is not None:
                rates["backbone"] = head * self.backbone_rate
            elif strategy.backbone_learning_rate is not None:
                rates["backbone"] = strategy.backbone_learning_rate
        return rates


LESSON = Recipe()

# One modern recipe per strategy. Image size and epochs for scratch were chosen once, by measurement on
# the development split within a 30-minute CPU budget (docs/recipes.md).
_MODERN_COMMON = dict(
    name="modern",
    optimizer="sgd",
    momentum=0.9,
    weight_decay=5e-5,
    warmup_epochs=1,
    cosine=True,
    label_smoothing=0.1,
    augment="trivial",
    random_erasing=0.25,
    ema_momentum=0.99,
    tta=True,
)
MODERN = {
    "scratch": Recipe(
        **{**_MODERN_COMMON, "weight_decay": 5e-4, "warmup_epochs": 3},
        learning_rate=0.05,
        epochs=60,
        image_size=96,
        test_scale=4 / 3,
        progressive=((0.5, 2 / 3), (0.25, 5 / 6)),
    ),
    # Head-only training on frozen features: no label smoothing, no augmentation (so the feature cache
    # serves every epoch), no EMA (the head converges in a few epochs).
    "frozen": Recipe(
        **{**_MODERN_COMMON, "label_smoothing": 0.0, "augment": False, "random_erasing": 0.0, "ema_momentum": None},
        learning_rate=0.1,
        epochs=10,
    ),
    "finetune": Recipe(**_MODERN_COMMON, learning_rate=0.01, backbone_rate=0.1, epochs=10),
    "two-stage": Recipe(**_MODERN_COMMON, learning_rate=0.01, backbone_rate=0.1, unfrozen_rate=0.1, epochs=10),
    "discriminative": Recipe(
        **{**_MODERN_COMMON, "weight_decay": 0.05, "momentum": 0.0, "optimizer": "adamw"},
        learning_rate=1e-3,
        backbone_rate=0.1,
        epochs=10,
    ),
}

_WITHOUT = {
    "schedule": dict(warmup_epochs=0, cosine=False),
    "momentum": dict(momentum=0.0),
    "weight-decay": dict(weight_decay=0.0),
    "label-smoothing": dict(label_smoothing=0.0),
    "augment": dict(augment=False, random_erasing=0.0),
    "random-erasing": dict(random_erasing=0.0),
    "ema": dict(ema_momentum=None),
    "tta": dict(tta=False),
    "test-resolution": dict(test_scale=None),
    "progressive-resizing": dict(progressive=()),
}


def get_recipe(name, strategy, without=()):
    """The `Recipe` called `name` for `strategy` (its canonical name), less the `without` ingredients.

    Args:
        name: `"lesson"` or `"modern"`.
        strategy: a strategy's canonical name (`"two-stage"`).
        without: ingredient names (`INGREDIENTS`) to turn off.

    Raises:
        ValueError: an unknown recipe or ingredient, or ingredients removed from the lesson.
    """
    if name not in RECIPE_NAMES:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(RECIPE_NAMES)}")
    unknown = [w for w in without if w not in INGREDIENTS]
    if unknown:
        raise ValueError(f"unknown ingredient(s) {', '.join(unknown)}; choose from {', '.join(INGREDIENTS)}")
    if name == "lesson":
        if without:
            raise ValueError("--without is for --recipe modern (the lesson's recipe has none of those ingredients)")
        return LESSON
    recipe = MODERN[strategy]
    for ingredient in without:
        recipe = dataclasses.replace(recipe, **_WITHOUT[ingredient])
    return recipe


def test_image_size(recipe, image_size):
    """The side at which `recipe` scores test images when training on `image_size`.

    Example:
    ```python
    test_image_size(get_recipe("modern", "scratch"), 96)  # 128
    ```
    """
    if not recipe.test_scale:
        return image_size
    return int(round(image_size * recipe.test_scale))


# The smallest side progressive resizing trains at: ResNet18's five halvings leave 1x1 features there.
MIN_PROGRESSIVE_SIZE = 32


def epoch_image_sizes(recipe, image_size, epochs):
    """The side of the training images in each of `epochs` epochs, or `None` without progressive resizing.

    Each phase of `recipe.progressive` takes its fraction of the epochs at its
    fraction of `image_size` (a multiple of 8, at least `MIN_PROGRESSIVE_SIZE`);
    the epochs left train at `image_size`. The batch size and the learning-rate
    schedule run on unchanged across the phases (one schedule, in steps).

    Example:
    ```python
    epoch_image_sizes(get_recipe("modern", "scratch"), 96, 8)  # [64, 64, 64, 64, 80, 80, 96, 96]
    ```
    """
    if not recipe.progressive:
        return None
    sizes = []
    for fraction, scale in recipe.progressive:
        side = max(MIN_PROGRESSIVE_SIZE, int(round(image_size * scale / 8)) * 8)
        sizes += [min(side, image_size)] * int(round(fraction * epochs))
    sizes = sizes[:epochs]
    return sizes + [image_size] * (epochs - len(sizes))


def learning_rate_schedule(peak, epochs, steps_per_epoch, warmup_epochs, cosine):
    """A linear warmup from 0 to `peak` over `warmup_epochs`, then a cosine decay to 0 (Keras's `CosineDecay`).

    Without `cosine` and warmup, the rate is the float `peak`.

    Example:
    ```python
    schedule = learning_rate_schedule(0.1, epochs=40, steps_per_epoch=41, warmup_epochs=3, cosine=True)
    float(schedule(0)), float(schedule(3 * 41))  # (0.0, 0.1)
    ```
    """
    import keras

    total = max(1, int(epochs * steps_per_epoch))
    warmup = min(int(warmup_epochs * steps_per_epoch), total - 1)
    if not cosine and not warmup:
        return peak
    if not cosine:  # warmup only: decay over a very long horizon is a fixed rate after warmup
        return keras.optimizers.schedules.CosineDecay(0.0, 10**12, alpha=1.0, warmup_target=peak, warmup_steps=warmup)
    if not warmup:
        return keras.optimizers.schedules.CosineDecay(peak, total)
    return keras.optimizers.schedules.CosineDecay(0.0, total - warmup, warmup_target=peak, warmup_steps=warmup)
