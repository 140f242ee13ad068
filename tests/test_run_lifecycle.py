"""A run that composes: interruption x strategy x early stopping x precision x loader threads x resume, bit for bit.

Each case trains a strategy straight through, then again with an
interruption at a given batch (a stop request as Ctrl-C makes, or a crash
as SIGKILL leaves it: nothing after the last backup), resumes from the
backup on a freshly built model, and must end with the same weights and
history rows as the straight run. The real signals are sent to the CLI in
`test_cli.py`.
"""

import threading

import keras
import numpy as np
import pytest

import kflowers
from kflowers.data.dataset import FlowerDataset
from kflowers.training.loop import train

SIZE = 32


class Crash(Exception):
    """What SIGKILL leaves: the process ends where it is."""


class InterruptAt(keras.callbacks.Callback):
    """At batch `batch` of epoch `epoch`: set `stop` (Ctrl-C) or raise `Crash` (SIGKILL)."""

    def __init__(self, epoch, batch, stop=None):
        super().__init__()
        self.at, self.stop, self.epoch = (epoch, batch), stop, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            if self.stop is None:
                raise Crash
            self.stop.set()


@pytest.fixture(scope="module")
def splits(flowers_dir):
    return kflowers.split_dataset(kflowers.scan_folder(flowers_dir), test_size=0.25, seed=0)


def run(
    splits,
    pth,
    strategy,
    backup_dir=None,
    callbacks=(),
    stop=None,
    precision="float32",
    workers=1,
    recipe="lesson",
    image_sizes=None,
    **kwargs,
):
    from kflowers.recipes import get_recipe
    from kflowers.training.strategies import get_strategy

    recipe = get_recipe(recipe, get_strategy(strategy).name)
    keras.utils.set_random_seed(0)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(PRECISIONS[precision])
    try:
        model = kflowers.build_model(weights=pth, image_size=None if image_sizes else SIZE)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    train_ds = FlowerDataset.from_folder(
        splits[0],
        batch_size=16,
        image_size=SIZE,
        shuffle=True,
        seed=1,
        workers=workers,
        augment=recipe.augment,
        random_erasing=recipe.random_erasing,
        image_sizes=image_sizes,
    )
    test_ds = FlowerDataset.from_folder(splits[1], batch_size=32, image_size=SIZE, workers=workers)
    result = train(
        model,
        strategy,
        train_ds,
        test_ds,
        epochs=3,
        verbose=0,
        backup_dir=backup_dir,
        callbacks=callbacks,
        stop=stop,
        learning_rate=1e-4,
        recipe=recipe,
        **kwargs,
    )
    return model, result


def rows(result):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in result.rows]


def assert_same_run(a, b):
    (model_a, result_a), (model_b, result_b) = a, b
    assert rows(result_a) == rows(result_b)
    for x, y in zip(model_a.get_weights(), model_b.get_weights()):
        np.testing.assert_array_equal(x, y)


STRATEGIES = {
    "finetune": dict(strategy="finetune"),
    "two-stage cached": dict(strategy="two-stage"),
    "two-stage uncached": dict(strategy="two-stage", feature_cache=False),
    "discriminative (Adam)": dict(strategy="discriminative"),
    # The modern recipe: warmup + cosine schedule position, EMA averages, label smoothing, TrivialAugment and
    # random erasing (their RNG), weight decay, per-part rates after the switch.
    "two-stage modern": dict(strategy="two-stage", recipe="modern"),
    # Progressive resizing too: two epochs at 24 px, the last at 32, one model taking any size.
    "scratch modern": dict(strategy="scratch", recipe="modern", image_sizes=[24, 24]),
    # Head-only on frozen features: no augmentation, so the feature cache serves every epoch (schedule, decay).
    "frozen modern cached": dict(strategy="frozen", recipe="modern"),
}
# (epoch, batch): two-stage over 3 epochs unfreezes at epoch 1 (0-based).
INTERRUPTIONS = {
    "Ctrl-C in epoch 2": ("ctrl-c", 1, 1),
    "SIGKILL in epoch 2": ("kill", 1, 1),
    "Ctrl-C in epoch 1": ("ctrl-c", 0, 1),
    "SIGKILL in epoch 3": ("kill", 2, 0),
}
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
LESSON_STRATEGIES = [s for s in STRATEGIES if "modern" not in s]
CASES = [
    (s, i, early, "float32", 1)
    for s in LESSON_STRATEGIES
    for i in INTERRUPTIONS
    for early in (False, True)
    if not (early and i in ("Ctrl-C in epoch 1", "SIGKILL in epoch 3"))
]
# Mixed precision (the torch fast path computes in bfloat16): every strategy, cut across the switch (how the
# stop arrives is the float32 rows'; a modern row below is cut by Ctrl-C under bfloat16).
CASES += [(s, "SIGKILL in epoch 2", False, "bfloat16", 1) for s in LESSON_STRATEGIES]
# The modern recipe: cut across the stage switch (with early stopping too), in its last epoch, under bfloat16.
CASES += [
    ("two-stage modern", "SIGKILL in epoch 2", False, "float32", 1),
    ("two-stage modern", "Ctrl-C in epoch 2", True, "float32", 1),
    ("scratch modern", "SIGKILL in epoch 3", False, "float32", 1),
    ("two-stage modern", "Ctrl-C in epoch 2", False, "bfloat16", 1),
    ("frozen modern cached", "SIGKILL in epoch 2", True, "float32", 1),
]
# Two loader threads reading ahead, cut and resumed across the stage switch, against the straight run with one.
CASES += [("two-stage uncached", "SIGKILL in epoch 2", True, "float32", 2)]


@pytest.fixture(scope="module")
def straight(splits, resnet18_pth):
    runs = {}

    def get(strategy, early, precision):
        key = (strategy, early, precision)
        if key not in runs:
            runs[key] = run(
                splits,
                resnet18_pth if "scratch" not in strategy else None,
                early_stopping=early,
                patience=1,
                precision=precision,
                **STRATEGIES[strategy],
            )
        return runs[key]

    return get


# This one also runs on jax and tensorflow (CI runs the not-slow tests on every backend); the rest on torch.
# Both stages, the modern recipe's schedule, EMA and augmentation, and early stopping, cut across the switch.
# (How a stop arrives, Ctrl-C or a kill, is the same code on every backend: the torch pass covers both; so is
# the feature cache, which trains a head model on features the backend's own backbone computed.)
EVERY_BACKEND = {("two-stage modern", "Ctrl-C in epoch 2", True, "float32", 1)}


@pytest.mark.parametrize(
    "strategy, interruption, early, precision, workers",
    [
        pytest.param(
            *case,
            id=f"{case[0]}-{case[1]}{'-early-stopping' if case[2] else ''}-{case[3]}"
            + ("-2-threads" if case[4] > 1 else ""),
            marks=() if case in EVERY_BACKEND else pytest.mark.slow,
        )
        for case in CASES
    ],
)
def test_interrupted_then_resumed_equals_straight(
    splits, resnet18_pth, straight, tmp_path, strategy, interruption, early, precision, workers
):
    kind, epoch, batch = INTERRUPTIONS[interruption]
    if "scratch" in strategy:
        resnet18_pth = None
    options = dict(early_stopping=early, patience=1, precision=precision, workers=workers, **STRATEGIES[strategy])
    backup_dir = str(tmp_path / "backup")
    stop = threading.Event()
    if kind == "kill":
        with pytest.raises(Crash):
            run(splits, resnet18_pth, backup_dir=backup_dir, callbacks=[InterruptAt(epoch, batch)], **options)
    else:
        _, cut = run(
            splits,
            resnet18_pth,
            backup_dir=backup_dir,
            callbacks=[InterruptAt(epoch, batch, stop)],
            stop=stop,
            **options,
        )
        assert cut.interrupted and not cut.finished
        assert [row["epoch"] for row in cut.rows] == list(range(1, epoch + 1))  # the cut epoch is not in
    resumed = run(splits, resnet18_pth, backup_dir=backup_dir, **options)
    assert resumed[1].finished
    assert_same_run(resumed, straight(strategy, early, precision))


def test_a_stop_in_the_cached_first_stage_ends_the_whole_run(splits, resnet18_pth):
    stop = threading.Event()
    model, result = run(splits, resnet18_pth, "two-stage", callbacks=[InterruptAt(0, 1, stop)], stop=stop)
    assert result.interrupted and result.rows == []
    assert not kflowers.model_parts(model).backbone.trainable  # never unfrozen


def test_early_stopping_ends_with_the_best_weights(splits, resnet18_pth):
    # A learning rate that overshoots (the random checkpoint's features are large): the test loss
    # falls for a few epochs, then rises.
    keras.utils.set_random_seed(0)
    model = kflowers.build_model(weights=resnet18_pth, image_size=SIZE)
    train_ds = FlowerDataset.from_folder(splits[0], batch_size=16, image_size=SIZE, shuffle=True, seed=1)
    test_ds = FlowerDataset.from_folder(splits[1], batch_size=32, image_size=SIZE)
    result = train(
        model, "finetune", train_ds, test_ds, epochs=6, verbose=0, early_stopping=True, patience=1, learning_rate=5.0
    )
    losses = [row["test_loss"] for row in result.rows]
    assert result.stopped_early and len(losses) < 6
    assert result.best_epoch == int(np.argmin(losses)) + 1
    evaluated = model.evaluate(test_ds, verbose=0, return_dict=True)
    assert evaluated["loss"] == pytest.approx(min(losses), rel=1e-4)


def test_feature_cache_on_a_shard_uses_the_shards_samples(splits, resnet18_pth):
    train_ds = FlowerDataset.from_folder(splits[0], batch_size=8, image_size=SIZE, shuffle=True, seed=1)
    shard = train_ds.shard(1, 2)
    model = kflowers.build_model(weights=resnet18_pth, image_size=SIZE)
    kflowers.model_parts(model).backbone.trainable = False
    from kflowers.training.feature_cache import FeatureCache

    cache = FeatureCache(model, shard)
    features, labels = cache.batches[0]
    np.testing.assert_array_equal(labels, shard[0][1])
    expected = keras.ops.convert_to_numpy(keras.Model(model.input, kflowers.model_parts(model).features)(shard[0][0]))
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4)
