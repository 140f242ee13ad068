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


@pytest.mark.one_backend  # the logs' names, renamed by a callback: the same on every backend
def test_the_progress_bar_calls_the_test_split_test(data, capsys):
    train_ds, test_ds = data
    keras.utils.set_random_seed(0)
    model = kflowers.build_model(weights=None, image_size=SIZE)
    train(model, "scratch", train_ds, test_ds, epochs=1, verbose=2)
    printed = capsys.readouterr().out
    assert "test_loss" in printed and "test_accuracy" in printed and "val_" not in printed


def test_a_file_saved_after_a_plain_keras_load_says_it_has_no_class_names(tmp_path, caplog):
    """Issue 34, item 2: plain `keras.models.load_model` knows nothing of class names, so a file it saves again
    has none: kflowers names them 0..4 and says so (it said nothing); kflowers.load_model keeps them."""
    first = tmp_path / "first.keras"
    kflowers.save_model(kflowers.build_model(weights=None, image_size=SIZE), first, CLASSES)
    keras.models.load_model(first).save(tmp_path / "again.keras")
    with caplog.at_level("WARNING", logger="kflowers"):
        assert kflowers.load_model(tmp_path / "again.keras").class_names == ["0", "1", "2", "3", "4"]
    assert "carries no class names" in caplog.text and "remember_class_names" in caplog.text
    caplog.clear()
    kflowers.load_model(first).save(tmp_path / "kept.keras")
    with caplog.at_level("WARNING", logger="kflowers"):
        assert kflowers.load_model(tmp_path / "kept.keras").class_names == CLASSES
    assert "class names" not in caplog.text


@keras.saving.register_keras_serializable(package="kflowers_test_unregistered")
class Doubled(keras.layers.Layer):
    def call(self, x):
        return x * 2


def test_load_model_takes_custom_objects_and_names_a_missing_class(tmp_path):
    """Issue 34, item 4: a file with a layer of the user's own loads with `custom_objects=`; without it the error
    names the class and the way out (it said "corrupt or not a Keras model")."""
    from kflowers.errors import WeightsError
    from keras.src.saving import object_registration

    base = kflowers.build_model(weights=None, image_size=SIZE)
    x = Doubled(name="doubled")(model_parts(base).features)
    model = keras.Model(base.input, keras.layers.Dense(5, name="logits")(x))
    path = tmp_path / "own_layer.keras"
    kflowers.save_model(model, path, CLASSES)
    registered = object_registration.GLOBAL_CUSTOM_OBJECTS.pop("kflowers_test_unregistered>Doubled")
    try:
        with pytest.raises(WeightsError) as raised:
            kflowers.load_model(path)
        assert "it uses Doubled, which Keras cannot find" in str(raised.value)
        assert "custom_objects={'kflowers_test_unregistered>Doubled': Doubled}" in str(raised.value)
        assert "corrupt" not in str(raised.value)
        loaded = kflowers.load_model(path, custom_objects={"kflowers_test_unregistered>Doubled": Doubled})
        assert loaded.class_names == CLASSES and isinstance(loaded.get_layer("doubled"), Doubled)
    finally:
        object_registration.GLOBAL_CUSTOM_OBJECTS["kflowers_test_unregistered>Doubled"] = registered


def test_a_modern_recipe_checkpoint_opens_with_plain_keras(data, tmp_path):
    """Issue 34, item 1: a model trained from Python with label smoothing (the modern recipe), saved by
    `ModelCheckpoint` during training and by `model.save` after, opens with plain `keras.models.load_model` in a
    process that never imports kflowers (it raised "Could not locate class 'SparseCrossentropyWithSmoothing'")."""
    import os
    import subprocess
    import sys

    from kflowers.models.losses import SparseCrossentropyWithSmoothing

    train_ds, _ = data
    keras.utils.set_random_seed(0)
    model = kflowers.build_model(weights=None, image_size=SIZE)
    checkpoint = str(tmp_path / "checkpoint.keras")
    train(
        model,
        "scratch",
        train_ds,
        None,  # no test side: the saved files are the point
        recipe="modern",
        epochs=1,
        verbose=0,
        callbacks=[keras.callbacks.ModelCheckpoint(checkpoint)],
    )
    assert isinstance(model.loss, SparseCrossentropyWithSmoothing)  # it trained with label smoothing
    model.save(tmp_path / "after.keras")
    code = (
        "import sys, keras\n"
        "for path in sys.argv[1:]:\n"
        "    loaded = keras.models.load_model(path)\n"
        "    print(type(loaded.loss).__name__, loaded.loss.get_config()['from_logits'])\n"
        "print('kflowers' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, checkpoint, str(tmp_path / "after.keras")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KERAS_BACKEND": keras.backend.backend()},
    )
    assert result.stdout.split("\n")[:3] == ["SparseCategoricalCrossentropy True"] * 2 + ["False"], result.stderr[
        -1500:
    ]
