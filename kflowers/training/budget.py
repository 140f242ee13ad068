"""A run laid out for the minutes the user has (`--budget MINUTES`).

Before training, `measure_costs` times a few steps of each stage on a copy of
the model (`with_image_size`: the model itself, its optimizer and the data's
order are untouched) with the run's own data pipeline, and a few test
batches. `plan_epochs` then picks the most epochs whose training, per-epoch
evaluation, feature pass and final scoring fit in the time left; the
recipe's schedule (warmup, cosine to zero) is laid out over those epochs, so
it ends on time instead of being cut off. The plan is written to
`config.json` and a resumed run reads it back instead of measuring again
(so it equals the uninterrupted run).

Example:
```python
from kflowers.recipes import get_recipe
from kflowers.training.loop import plan_stages
from kflowers.training.strategies import get_strategy

strategy, recipe = get_strategy("scratch"), get_recipe("modern", "scratch")
costs = measure_costs(model, strategy, recipe, plan_stages(strategy, cached=False), train_ds, test_ds)
plan = plan_epochs(strategy, recipe, costs, seconds_left=600, minutes=10)
plan.epochs, plan.planned_seconds  # the most epochs that fit in 10 minutes, and their expected seconds
```
"""

import dataclasses
import time

from kflowers.errors import BudgetTooShort

# What a plan leaves unused: the time of one run is not the same twice (the host, the page cache). Measured
# on a shared 2-core host (docs/recipes.md, time to accuracy): epochs ran 1-7% over the timed steps when
# quiet, and a busy spell added more; at 5% one run in three ended 3.5% past its budget.
MARGIN = 0.10
# Files, plots and the report page after the final scoring, in seconds (measured: 2-5 s).
WRITING_SECONDS = 10.0
# The most epochs a budget may choose (a head on cached features trains in milliseconds per epoch).
MAX_EPOCHS = 1000


@dataclasses.dataclass(frozen=True)
class StepCosts:
    """Seconds measured on this machine, with this run's data and model.

    Attributes:
        step_seconds: seconds per training batch, data loading included, by
            stage name (`"trainable"`, `"frozen"`, `"unfrozen"`, `"cached"`),
            then by the side of the images as a string (`{"trainable": {"96": 1.1}}`;
            with progressive resizing, each side the run trains at).
        image_seconds: seconds to score one test image at the training side.
        train_images: images in an epoch (this process's share).
        test_images: images scored after each epoch.
        steps_per_epoch: training batches in an epoch.
        image_size: the training side (the last, with progressive resizing).
    """

    step_seconds: dict
    image_seconds: float
    train_images: int
    test_images: int
    steps_per_epoch: int
    image_size: int


@dataclasses.dataclass(frozen=True)
class BudgetPlan:
    """The epochs a budget bought, and what they were chosen from (`config.json`'s `budget_plan`).

    Attributes:
        minutes: the budget.
        epochs: the epochs chosen.
        seconds_left: the seconds the budget had left for training and scoring
            when the plan was made (the scan, the model and the measurement spent
            the rest).
        planned_seconds: the time the plan expects training and scoring to take.
        step_seconds: `StepCosts.step_seconds`.
        image_seconds: `StepCosts.image_seconds`.
    """

    minutes: float
    epochs: int
    seconds_left: float
    planned_seconds: float
    step_seconds: dict
    image_seconds: float

    def to_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values):
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})


def run_seconds(strategy, recipe, costs, epochs, cached):
    """The seconds `strategy` over `epochs` epochs is expected to take with `recipe`: every stage's batches
    (each epoch at its side) and per-epoch evaluation, the feature pass when the first stage is `cached`, the
    final scoring (at the recipe's test side, twice with its `tta`) and the writing."""
    from kflowers.recipes import epoch_image_sizes
    from kflowers.training.loop import plan_stages

    seconds = WRITING_SECONDS
    test_epoch = costs.test_images * costs.image_seconds
    sides = epoch_image_sizes(recipe, costs.image_size, epochs) or [costs.image_size] * epochs
    for stage in plan_stages(strategy.with_epochs(epochs), cached):
        if stage.name == "cached":
            seconds += (costs.train_images + costs.test_images) * costs.image_seconds  # the feature pass
        for epoch in range(stage.start, stage.end):
            seconds += costs.steps_per_epoch * costs.step_seconds[stage.name][str(sides[epoch])]
            seconds += test_epoch if stage.name != "cached" else 0.0
    seconds += test_epoch * (recipe.test_scale or 1.0) ** 2 * (2 if recipe.tta else 1)
    return seconds


def plan_epochs(strategy, recipe, costs, seconds_left, minutes, cached=False, max_epochs=MAX_EPOCHS):
    """The `BudgetPlan` with the most epochs (up to `max_epochs`) whose `run_seconds` fit in `seconds_left`,
    less `MARGIN`.

    Raises:
        BudgetTooShort: not even one epoch fits (the message says how long one takes).
    """
    usable = seconds_left * (1 - MARGIN)

    def cost(epochs):
        return run_seconds(strategy, recipe, costs, epochs, cached)

    if cost(1) > usable:
        raise BudgetTooShort(
            f"--budget {minutes:g} minutes is too short: one epoch with its scoring takes about "
            f"{cost(1) / 60:.1f} minutes here, and {max(seconds_left, 0) / 60:.1f} were left after the setup"
        )
    low, high = 1, max_epochs  # the cost grows with the epochs: the largest that fits, by bisection
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if cost(middle) <= usable else (low, middle - 1)
    return BudgetPlan(
        minutes=minutes,
        epochs=low,
        seconds_left=round(seconds_left, 1),
        planned_seconds=round(cost(low), 1),
        step_seconds={
            stage: {side: round(value, 4) for side, value in sides.items()}
            for stage, sides in costs.step_seconds.items()
        },
        image_seconds=round(costs.image_seconds, 5),
    )


def measure_costs(model, strategy, recipe, stages, train_data, test_data, learning_rate=None, steps=10):
    """`StepCosts` timed on a copy of `model`: `steps` training batches of each kind of stage in
    `stages` at each side the recipe trains at (the first batches are the warm-up, not timed), and a few
    test batches.

    Args:
        model: the run's model (left untouched).
        strategy: the run's `Strategy`.
        recipe: the run's `Recipe`.
        stages: the run's stages (`loop.plan_stages`); their names say what to time.
        train_data: the run's training `FlowerDataset` (a copy is read), at its full side.
        test_data: the run's test `FlowerDataset`, or `None`.
        learning_rate: the run's `--lr`.
        steps: training batches timed per stage and side, warm-up included.
    """
    import copy

    from kflowers.models.resnet import with_image_size
    from kflowers.recipes import epoch_image_sizes

    side = train_data.image_size
    sides = sorted(set(epoch_image_sizes(recipe, side, MAX_EPOCHS) or [side]))
    step_seconds = {}
    for size in sides:
        probe = with_image_size(model, size)  # same layers, weights, policy and fast path
        data = copy.copy(train_data)
        data.image_size, data.image_sizes = size, None
        for name in dict.fromkeys(stage.name for stage in stages):
            seconds = _step_seconds(probe, strategy, recipe, name, data, learning_rate, steps)
            step_seconds.setdefault(name, {})[str(size)] = seconds
    image_seconds = _image_seconds(probe, test_data if test_data is not None else train_data)
    return StepCosts(
        step_seconds=step_seconds,
        image_seconds=image_seconds,
        train_images=_images(train_data),
        test_images=_images(test_data) if test_data is not None else 0,
        steps_per_epoch=len(train_data),
        image_size=side,
    )


def _images(dataset):
    return sum(len(dataset.batch_indices(i, 0)) for i in range(len(dataset)))


class _BatchClock:
    """The times at which batches ended (training or test)."""

    def __init__(self):
        self.times = []

    def callback(self):
        import keras

        clock = self

        class Clock(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                clock.times.append(time.perf_counter())

            def on_test_begin(self, logs=None):
                clock.times.append(time.perf_counter())

            def on_train_batch_end(self, batch, logs=None):
                clock.times.append(time.perf_counter())

            def on_test_batch_end(self, batch, logs=None):
                clock.times.append(time.perf_counter())

        return Clock()

    def per_batch(self, warmup):
        """The median seconds between batch ends after the first `warmup` times (the start, then batch ends;
        fewer when there were not more): a busy moment of the host during a few batches does not count."""
        import numpy as np

        times = self.times[min(warmup, len(self.times) - 2) :]  # the first time is the start
        return float(np.median(np.diff(times)))


def _step_seconds(probe, strategy, recipe, stage, train_data, learning_rate, steps):
    """Seconds per training batch of `stage`, on `probe`, through `fit` (data loading as in the run)."""
    import keras
    import numpy as np

    from kflowers.models.parts import model_parts
    from kflowers.training.strategies import compile_stage
    from kflowers.training.strategies import stage_loss
    from kflowers.training.strategies import stage_optimizer

    steps = min(steps, len(train_data))
    clock = _BatchClock()
    args = (strategy, recipe, "frozen" if stage == "cached" else stage, 1, steps, learning_rate)
    compile_stage(probe, *args)
    if stage == "cached":  # the head alone, on feature batches
        parts = model_parts(probe)
        inputs = keras.Input(shape=(parts.features.shape[-1],))
        head = keras.Model(inputs, parts.apply_head(inputs))
        head.compile(optimizer=stage_optimizer(probe, *args), loss=stage_loss(recipe, "cached"), metrics=["accuracy"])
        features = np.zeros((train_data.batch_size * steps, parts.features.shape[-1]), "float32")
        labels = np.zeros((len(features),), "int32")
        head.fit(features, labels, batch_size=train_data.batch_size, epochs=1, verbose=0, callbacks=[clock.callback()])
    else:
        train_data.set_epoch(0)
        probe.fit(train_data, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0, callbacks=[clock.callback()])
    return clock.per_batch(warmup=3)  # the start and two batches (the first run compiles, allocates)


def _image_seconds(probe, dataset, batches=3):
    """Seconds to score one image of `dataset` at the training side (`evaluate`, data loading included)."""
    from kflowers.data.dataset import FlowerDataset

    size = min(64, len(dataset.paths) // batches) or 1
    sample = FlowerDataset(
        dataset.paths[: size * batches],
        dataset.labels[: size * batches],
        batch_size=size,
        image_size=dataset.image_size,
    )
    clock = _BatchClock()
    probe.evaluate(sample, verbose=0, callbacks=[clock.callback()])
    return clock.per_batch(warmup=2) / size  # the start and the first batch
