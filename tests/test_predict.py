"""`predict_images`: photos in any form and size, prepared exactly as in training, answered with names."""

import logging

import keras
import numpy as np
import pytest
from PIL import Image

import kflowers
from kflowers.data.dataset import FlowerDataset
from kflowers.inference.predict import decode_predictions

NAMES = ["daisy", "dandelion", "rose", "sunflower", "tulip"]


@pytest.fixture(scope="module")
def model(small_model_file):
    return kflowers.load_model(small_model_file)


def test_paths_are_prepared_exactly_as_in_training(model, flowers_dir):
    folder = kflowers.scan_folder(flowers_dir)
    paths = folder.paths[:6]
    dataset = FlowerDataset(paths, [0] * 6, batch_size=6, image_size=32)
    expected = decode_predictions(model.predict(dataset, verbose=0), NAMES, top_k=5)
    answers = kflowers.predict_images(model, paths, top_k=5)
    assert [[name for name, _ in a] for a in answers] == [[name for name, _ in e] for e in expected]
    for answer, reference in zip(answers, expected):
        np.testing.assert_allclose([p for _, p in answer], [p for _, p in reference], atol=1e-6)
        assert sum(p for _, p in answer) == pytest.approx(1.0)


def test_pil_images_and_arrays_of_any_size(model, flowers_dir):
    path = kflowers.scan_folder(flowers_dir).paths[0]
    photo = Image.open(path).convert("RGB").resize((227, 227))
    from_pil = kflowers.predict_images(model, photo, top_k=2)
    from_array = kflowers.predict_images(model, np.asarray(photo), top_k=2)
    from_batch = kflowers.predict_images(model, np.stack([np.asarray(photo)] * 3), top_k=2)
    assert len(from_pil) == 1 and len(from_pil[0]) == 2
    same(from_pil, from_array)
    same(from_batch, from_array * 3)  # a batch may round differently in the last bits
    grey = kflowers.predict_images(model, np.asarray(photo.convert("L")), top_k=1)
    assert grey[0][0][0] in NAMES


def test_pixels_that_look_like_0_to_1_are_warned_about_once(model, caplog):
    from kflowers.inference import predict

    predict._warned.clear()
    image = np.random.default_rng(0).random((40, 40, 3))
    with caplog.at_level(logging.WARNING, logger="kflowers"):
        kflowers.predict_images(model, image)
        kflowers.predict_images(model, image)
        kflowers.predict_images(model, (image * 255).astype(np.uint8))
    warnings = [r for r in caplog.records if "0-1 values" in r.getMessage()]
    assert len(warnings) == 1


def test_class_names_survive_save_and_load(model, tmp_path):
    kflowers.save_model(model, tmp_path / "again.keras", model.class_names)
    again = kflowers.load_model(tmp_path / "again.keras", torch_kernels=False)
    assert again.class_names == NAMES
    image = np.full((50, 60, 3), 120, np.uint8)
    same(kflowers.predict_images(again, image), kflowers.predict_images(model, image))


def same(answers, expected):
    assert [[n for n, _ in a] for a in answers] == [[n for n, _ in e] for e in expected]
    np.testing.assert_allclose([[p for _, p in a] for a in answers], [[p for _, p in e] for e in expected], atol=1e-5)


def test_decode_predictions_orders_by_probability():
    answer = decode_predictions(np.array([[2.0, 0.0, 1.0]]), ["a", "b", "c"], top_k=2)
    assert [name for name, _ in answer[0]] == ["a", "c"]
    assert answer[0][0][1] == pytest.approx(np.exp(2) / (np.exp(2) + 1 + np.exp(1)))


def test_a_one_unit_head_is_a_binary_classifier(tmp_path):
    """One logit says how likely the second class is: sigmoid, not a softmax over one output (always 1.0)."""
    model = kflowers.build_model(num_classes=1, weights=None, image_size=32)
    kflowers.save_model(model, tmp_path / "binary.keras", ["cat", "dog"])
    loaded = kflowers.load_model(tmp_path / "binary.keras")
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype("uint8")
    answers = kflowers.predict_images(loaded, list(images), top_k=2)
    logits = keras.ops.convert_to_numpy(loaded(images))[:, 0].astype("float64")
    for answer, dog in zip(answers, 1 / (1 + np.exp(-logits))):
        assert dict(answer) == pytest.approx({"cat": 1 - dog, "dog": dog}, abs=1e-6)


@pytest.mark.parametrize("units, activation", [(3, "softmax"), (1, "sigmoid")])
def test_a_head_that_outputs_probabilities_is_read_as_such(units, activation):
    inputs = keras.Input((8, 8, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(units, activation=activation)(pooled))
    images = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3)).astype("uint8")
    names = ["a", "b", "c"][: max(2, units)]
    answers = kflowers.predict_images(model, list(images), top_k=3, class_names=names)
    outputs = keras.ops.convert_to_numpy(model(images.astype("float32"))).astype("float64")
    expected = outputs if units > 1 else np.concatenate([1 - outputs, outputs], axis=-1)
    for answer, row in zip(answers, expected):
        assert dict(answer) == pytest.approx(dict(zip(names, row)), abs=1e-6)
