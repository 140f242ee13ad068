"""The modern recipe does what it says: the schedule's values, weight decay kept off BatchNorm and biases,
per-part rates, label smoothing, augmentation on and off as asked, EMA weights saved, flip TTA."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest

import kflowers
from kflowers.data.dataset import FlowerDataset
from kflowers.recipes import INGREDIENTS
from kflowers.recipes import LESSON
from kflowers.recipes import get_recipe
from kflowers.recipes import learning_rate_schedule
from kflowers.models.losses import SparseCrossentropyWithSmoothing
from kflowers.training.strategies import get_strategy
from kflowers.training.strategies import stage_optimizer

SIZE = 32


def test_lesson_is_the_default_and_takes_no_ingredients():
    assert get_recipe("lesson", "scratch") is LESSON
    with pytest.raises(ValueError, match="--without is for --recipe modern"):
        get_recipe("lesson", "scratch", ["ema"])
    with pytest.raises(ValueError, match="unknown ingredient"):
        get_recipe("modern", "scratch", ["magic"])
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("fancy", "scratch")


@pytest.mark.parametrize("ingredient", INGREDIENTS)
def test_every_ingredient_can_be_turned_off_by_name(ingredient):
    full, less = get_recipe("modern", "scratch"), get_recipe("modern", "scratch", [ingredient])
    assert full != less
    off = {
        "schedule": not less.cosine and less.warmup_epochs == 0,
        "momentum": less.momentum == 0,
        "weight-decay": less.weight_decay == 0,
        "label-smoothing": less.label_smoothing == 0,
        "augment": less.augment is False,
        "random-erasing": less.random_erasing == 0,
        "ema": less.ema_momentum is None,
        "tta": not less.tta,
        "test-resolution": less.test_scale is None,
        "progressive-resizing": less.progressive == (),
    }
    assert off[ingredient]


def test_frozen_features_get_no_label_smoothing_and_no_augmentation():
    frozen = get_recipe("modern", "frozen")
    assert frozen.label_smoothing == 0 and frozen.augment is False  # so the feature cache serves every epoch


def test_schedule_warms_up_then_decays_to_zero():
    schedule = learning_rate_schedule(0.1, epochs=10, steps_per_epoch=10, warmup_epochs=2, cosine=True)
    values = [float(keras.ops.convert_to_numpy(schedule(step))) for step in (0, 10, 20, 60, 100)]
    # Linear warmup 0 -> 0.1 over 20 steps, then cosine over the remaining 80: half-way (step 60) is 0.05.
    assert values == pytest.approx([0.0, 0.05, 0.1, 0.05, 0.0], abs=1e-6)
    assert learning_rate_schedule(0.1, 10, 10, 0, False) == 0.1  # no schedule: the float itself


def _optimizer_step(optimizer, variables, gradients):
    optimizer.build(variables)
    optimizer.apply(gradients, variables)
    return [keras.ops.convert_to_numpy(v) for v in variables]


def test_weight_decay_spares_batchnorm_and_biases():
    keras.utils.set_random_seed(0)
    model = kflowers.build_model(weights=None, image_size=SIZE)
    recipe = dataclasses.replace(get_recipe("modern", "scratch"), cosine=False, warmup_epochs=0, ema_momentum=None)
    optimizer = stage_optimizer(model, get_strategy("scratch"), recipe, "trainable", epochs=1, steps_per_epoch=1)
    variables = model.trainable_variables
    before = [keras.ops.convert_to_numpy(v).copy() for v in variables]
    after = _optimizer_step(optimizer, variables, [keras.ops.zeros(v.shape) for v in variables])  # decay alone
    for variable, a, b in zip(variables, before, after):
        if variable.name in ("gamma", "beta", "bias"):
            np.testing.assert_array_equal(a, b, err_msg=f"{variable.path} was decayed")
        else:
            expected = a * (1 - recipe.learning_rate * recipe.weight_decay)
            np.testing.assert_allclose(b, expected, rtol=1e-5, err_msg=f"{variable.path} was not decayed")


def test_modern_finetune_trains_the_backbone_at_a_tenth_of_the_heads_rate():
    model = kflowers.build_model(weights=None, image_size=SIZE)
    recipe = get_recipe("modern", "finetune")
    optimizer = stage_optimizer(model, get_strategy("finetune"), recipe, "trainable", epochs=4, steps_per_epoch=5)
    assert isinstance(optimizer, keras.optimizers.MultiOptimizer)
    rates = {}
    for part in optimizer.optimizers:
        schedule = part._learning_rate if hasattr(part, "_learning_rate") else part.learning_rate
        rates[len(rates)] = [float(keras.ops.convert_to_numpy(schedule(step))) for step in (5, 10, 15)]
    backbone, head = sorted(rates.values(), key=lambda r: r[0])
    assert np.allclose(np.array(backbone) * 10, head)
    assert head[0] == pytest.approx(recipe.learning_rate)  # the warmup (1 epoch = 5 steps) ends at the peak


def test_label_smoothing_matches_its_definition():
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], "float32")
    labels = np.array([0, 2])
    got = float(keras.ops.convert_to_numpy(SparseCrossentropyWithSmoothing(0.1)(labels, logits)))
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    target = np.full((2, 3), 0.1 / 3)
    target[[0, 1], labels] += 0.9
    assert got == pytest.approx(float(-(target * log_p).sum(axis=1).mean()), rel=1e-5)
    restored = SparseCrossentropyWithSmoothing.from_config(SparseCrossentropyWithSmoothing(0.2).get_config())
    assert restored.label_smoothing == 0.2


@pytest.mark.parametrize("augment", [False, "basic", "trivial"])
def test_augmentation_is_on_and_off_as_asked(flowers_dir, augment):
    folder = kflowers.scan_folder(flowers_dir)
    plain = FlowerDataset.from_folder(folder, batch_size=8, image_size=SIZE)
    data = FlowerDataset.from_folder(folder, batch_size=8, image_size=SIZE, augment=augment, random_erasing=0.5)
    same = [np.array_equal(plain.load(i), data.load(i, epoch=1)) for i in range(8)]
    assert all(same) if augment is False else not any(same)
    np.testing.assert_array_equal(data.load(3, epoch=1), data.load(3, epoch=1))  # a function of seed, epoch, sample
    if augment:
        assert not np.array_equal(data.load(3, epoch=1), data.load(3, epoch=2))


def test_trivial_augment_differs_from_basic(flowers_dir):
    folder = kflowers.scan_folder(flowers_dir)
    basic = FlowerDataset.from_folder(folder, image_size=SIZE, augment="basic")
    trivial = FlowerDataset.from_folder(folder, image_size=SIZE, augment="trivial")
    assert sum(not np.array_equal(basic.load(i, 0), trivial.load(i, 0)) for i in range(12)) >= 6


def test_flip_tta_averages_the_probabilities_of_both_views(flowers_dir, small_model_file):
    from kflowers.runs.evaluate import evaluate_model

    model = kflowers.load_model(small_model_file)
    folder = kflowers.scan_folder(flowers_dir)
    data = FlowerDataset.from_folder(folder, batch_size=16, image_size=SIZE)
    images = np.stack([data.load(i) for i in range(len(folder.paths))])

    def probabilities(x):
        logits = np.asarray(keras.ops.convert_to_numpy(model(x.astype("float32"), training=False)), "float64")
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    expected = (probabilities(images) + probabilities(images[:, :, ::-1])) / 2
    result = evaluate_model(model, data, folder.class_names, tta=True)
    np.testing.assert_allclose(np.exp(result["logits"]), expected, atol=1e-5)
    assert result["accuracy"] == pytest.approx(float(np.mean(expected.argmax(1) == np.asarray(folder.labels))))


def _train(flowers_dir, tmp_path, name, *more):
    from kflowers.cli.main import main

    out = tmp_path / name
    args = ["train", "--data", flowers_dir, "--out", out, "--strategy", "scratch", "--recipe", "modern"]
    args += ["--epochs", "2", "--image-size", str(SIZE), "--batch-size", "16", "--precision", "float32", "--quiet"]
    assert main([str(a) for a in [*args, *more]]) == 0
    with open(out / "metrics.json") as f:
        return out, json.load(f)


@pytest.mark.slow
def test_the_saved_model_is_the_ema_model_and_metrics_are_true_of_it(flowers_dir, tmp_path):
    from kflowers.runs.evaluate import evaluate_model

    with_ema, metrics = _train(flowers_dir, tmp_path, "ema")
    without_ema, other_metrics = _train(flowers_dir, tmp_path, "no-ema", "--without", "ema", "test-resolution")
    model = kflowers.load_model(with_ema / "model.keras")
    other = kflowers.load_model(without_ema / "model.keras")
    # Scored, and saved, at 4/3 of the training side; without that ingredient, at the training side.
    assert metrics["test_image_size"] == model.input_shape[1] == round(SIZE * 4 / 3)
    assert other_metrics["test_image_size"] == other.input_shape[1] == SIZE
    assert any(not np.array_equal(a, b) for a, b in zip(model.get_weights(), other.get_weights()))
    with open(with_ema / "split.json") as f:
        split = json.load(f)
    labels = [split["classes"].index(os.path.basename(os.path.dirname(p))) for p in split["test"]]
    test = FlowerDataset(split["test"], labels, batch_size=64, image_size=metrics["test_image_size"])
    again = evaluate_model(model, test, split["classes"], tta=True)
    assert again["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-5)  # metrics.json: 6 digits
    assert again["loss"] == pytest.approx(metrics["test_loss"], rel=1e-4)


def test_a_model_at_another_image_size_computes_what_a_size_free_model_computes():
    """`with_image_size` against an independent reference: the same weights in a model that takes any size."""
    model = kflowers.build_model(weights=None, image_size=SIZE)
    resized = kflowers.with_image_size(model, 48)
    free = kflowers.build_model(weights=None, image_size=None)
    free.set_weights(model.get_weights())
    images = np.random.default_rng(0).integers(0, 256, (2, 48, 48, 3)).astype("uint8")
    assert resized.input_shape == (None, 48, 48, 3)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(resized(images)), keras.ops.convert_to_numpy(free(images)), atol=1e-5
    )


@pytest.mark.slow
def test_ema_with_momentum_zero_is_no_ema(flowers_dir):
    """Keras's EMA at momentum 0 is the weights themselves: the recipe's EMA path changes nothing else."""
    folder = kflowers.scan_folder(flowers_dir)
    train_split, test_split = kflowers.split_dataset(folder, seed=0)
    finals = []
    for momentum in (None, 0.0):
        recipe = dataclasses.replace(get_recipe("modern", "scratch"), ema_momentum=momentum, epochs=2)
        keras.utils.set_random_seed(0)
        model = kflowers.build_model(weights=None, image_size=SIZE)
        data = FlowerDataset.from_folder(train_split, batch_size=16, image_size=SIZE, shuffle=True, augment="trivial")
        kflowers.train(model, "scratch", data, epochs=2, verbose=0, recipe=recipe)
        finals.append(model.get_weights())
    for a, b in zip(*finals):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_a_recipe_is_taken_by_name_as_a_strategy_is(flowers_dir):
    """`recipe="modern"` (a string, as `strategy=` takes) is the modern recipe, not an AttributeError."""
    folder = kflowers.scan_folder(flowers_dir)
    train_split, test_split = kflowers.split_dataset(folder, seed=0)
    keras.utils.set_random_seed(0)
    model = kflowers.build_model(weights=None, image_size=SIZE)
    data = FlowerDataset.from_folder(train_split, batch_size=16, image_size=SIZE, shuffle=True)
    result = kflowers.train(model, "scratch", data, epochs=1, verbose=0, recipe="modern")
    assert result.finished and len(result.rows) == 1
    with pytest.raises(ValueError, match="unknown recipe 'fancy'"):
        kflowers.train(model, "scratch", data, epochs=1, verbose=0, recipe="fancy")


def test_a_model_trained_at_the_largest_image_size_can_be_saved_and_opened():
    # The training side's bound (a flag's) and a model file's (models.saving) are two decisions; a run
    # saves its model at its test side, so the file's bound must hold the largest training side's.
    from kflowers.models.saving import MAX_INPUT_SIZE
    from kflowers.options import MAX_IMAGE_SIZE
    from kflowers.recipes import MODERN
    from kflowers.recipes import test_image_size

    assert all(test_image_size(recipe, MAX_IMAGE_SIZE) <= MAX_INPUT_SIZE for recipe in MODERN.values())
