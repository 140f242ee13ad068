"""Keras's own tools keep what kflowers knows: class names in any `.keras` file Keras writes
(`ModelCheckpoint`, `model.save`), heads of the user's own making, and the progress bar's names."""

import keras
import numpy as np
import pytest

import kflowers
from kflowers.data.dataset import FlowerDataset
from kflowers.models.parts import model_parts
from kflowers.inference.explain import _logit_gradients
from kflowers.inference.explain import grad_cam
from kflowers.training.loop import train

SIZE = 32
CLASSES = ["daisy", "dandelion", "rose", "sunflower", "tulip"]


@pytest.fixture(scope="module")
def data(flowers_dir):
    train_split, test_split = kflowers.split_dataset(kflowers.scan_folder(flowers_dir), test_size=0.25, seed=0)
    return (
        FlowerDataset.from_folder(train_split, batch_size=16, image_size=SIZE, shuffle=True),
        FlowerDataset.from_folder(test_split, batch_size=16, image_size=SIZE),
    )


def own_head_model(hidden=False):
    """ResNet18 from `build_model`, with a head of the user's own: [Dense(16, relu)], Dropout, Dense 'logits'."""
    keras.utils.set_random_seed(0)
    base = kflowers.build_model(weights=None, image_size=SIZE)
    x = model_parts(base).features
    if hidden:
        x = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    x = keras.layers.Dropout(0.3, name="dropout")(x)
    logits = keras.layers.Dense(5, name="logits")(x)
    return keras.Model(base.input, logits, name="own_head")


def test_a_model_checkpoint_file_keeps_the_class_names(data, tmp_path):
    train_ds, test_ds = data
    keras.utils.set_random_seed(0)
    model = kflowers.remember_class_names(kflowers.build_model(weights=None, image_size=SIZE), CLASSES)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    best = str(tmp_path / "best.keras")
    model.fit(train_ds, validation_data=test_ds, epochs=1, verbose=0, callbacks=[keras.callbacks.ModelCheckpoint(best)])
    assert kflowers.load_model(best).class_names == CLASSES
    model.save(tmp_path / "plain.keras")  # plain Keras saving too
    assert kflowers.load_model(tmp_path / "plain.keras").class_names == CLASSES
    keras.models.load_model(best)  # and the file is still a plain Keras file


def test_a_loaded_run_model_saved_again_by_keras_keeps_its_class_names(flowers_dir, tmp_path):
    options = kflowers.RunOptions(
        data=flowers_dir,
        out=str(tmp_path / "run"),
        strategy="scratch",
        weights="none",
        epochs=1,
        image_size=SIZE,
        batch_size=16,
        quiet=True,
    )
    from kflowers.runs.run import train_run

    train_run(options)
    model = kflowers.load_model(tmp_path / "run" / "model.keras")
    model.save(tmp_path / "again.keras")
    assert kflowers.load_model(tmp_path / "again.keras").class_names == CLASSES


@pytest.mark.parametrize("hidden", [False, True])
def test_a_head_of_the_users_own_is_found_by_structure(hidden, tmp_path):
    model = own_head_model(hidden)
    parts = model_parts(model)
    assert [layer.name for layer in parts.head_layers] == (["hidden"] if hidden else []) + ["dropout", "logits"]
    assert parts.head.name == "logits" and parts.linear_head == (not hidden)
    kflowers.save_model(model, tmp_path / "own.keras", CLASSES)
    loaded = kflowers.load_model(tmp_path / "own.keras")
    assert loaded.class_names == CLASSES
    images = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-4, atol=1e-5
    )
    resized = kflowers.with_image_size(loaded, 64)
    assert resized.input_shape == (None, 64, 64, 3) and model_parts(resized).head.name == "logits"


def test_the_feature_cache_trains_the_whole_head_of_the_users_own(data):
    train_ds, test_ds = data
    model = own_head_model(hidden=True)
    backbone = [np.array(w) for w in model_parts(model).backbone.get_weights()]
    hidden = model.get_layer("hidden").get_weights()[0].copy()
    result = train(model, "frozen", train_ds, test_ds, epochs=1, verbose=0, feature_cache=True, learning_rate=0.1)
    assert result.rows and "test_accuracy" in result.rows[0]
    assert np.abs(model.get_layer("hidden").get_weights()[0] - hidden).max() > 0  # the hidden layer trained
    for before, after in zip(backbone, model_parts(model).backbone.get_weights()):
        np.testing.assert_array_equal(before, after)


def test_grad_cam_weights_are_the_gradient_of_the_class_logit():
    """For a linear head Grad-CAM's channel weights are the Dense kernel's column (closed form); the
    backend's autodiff must give exactly those, and it alone serves a head with a hidden layer."""
    model = own_head_model(hidden=False)
    parts = model_parts(model)
    pooled = np.random.default_rng(1).uniform(0, 2, (3, 512)).astype("float32")
    classes = np.array([0, 3, 4])
    kernel = keras.ops.convert_to_numpy(parts.head.kernel)
    np.testing.assert_allclose(_logit_gradients(parts, pooled, classes, 5), kernel[:, classes].T, rtol=1e-5, atol=1e-6)
    images = np.random.default_rng(2).integers(0, 256, (2, SIZE, SIZE, 3)).astype("float32")
    heatmaps, logits = grad_cam(own_head_model(hidden=True), images)
    assert heatmaps.shape == (2, 1, 1) and logits.shape == (2, 5)


def test_the_progress_bar_calls_the_test_split_test(data, capsys):
    train_ds, test_ds = data
    keras.utils.set_random_seed(0)
    model = kflowers.build_model(weights=None, image_size=SIZE)
    train(model, "scratch", train_ds, test_ds, epochs=1, verbose=2)
    printed = capsys.readouterr().out
    assert "test_loss" in printed and "test_accuracy" in printed and "val_" not in printed
