"""Frozen training on cached features matches the uncached run."""

import keras
import numpy as np
import pytest

import kflowers
from kflowers.data.dataset import FlowerDataset
from kflowers.training.loop import train


@pytest.fixture(scope="module")
def splits(flowers_dir):
    folder = kflowers.scan_folder(flowers_dir)
    return kflowers.split_dataset(folder, test_size=0.25, seed=0)


def datasets(splits):
    train_split, test_split = splits
    return (
        FlowerDataset.from_folder(train_split, batch_size=9, image_size=32, shuffle=True, seed=1),
        FlowerDataset.from_folder(test_split, batch_size=32, image_size=32),
    )


def run(splits, pth, feature_cache, strategy="frozen", epochs=4):
    keras.utils.set_random_seed(0)
    model = kflowers.build_model(weights=pth, image_size=32)
    train_ds, test_ds = datasets(splits)
    backbone_before = [np.array(keras.ops.convert_to_numpy(v)) for v in model.get_layer("backbone").variables]
    # A small rate: the random checkpoint's features are large (~50), as are its gradients.
    history = train(
        model, strategy, train_ds, test_ds, epochs=epochs, verbose=0, feature_cache=feature_cache, learning_rate=1e-4
    )
    return model, history, backbone_before


def test_cached_frozen_run_matches_uncached(splits, resnet18_pth):
    cached, cached_history, before = run(splits, resnet18_pth, True)
    plain, plain_history, _ = run(splits, resnet18_pth, False)
    for variable, value in zip(cached.get_layer("backbone").variables, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), value)
    assert [row["epoch"] for row in cached_history.rows] == [1, 2, 3, 4]
    cached_acc = [row["test_accuracy"] for row in cached_history.rows]
    plain_acc = [row["test_accuracy"] for row in plain_history.rows]
    assert np.abs(np.array(cached_acc) - np.array(plain_acc)).max() <= 0.01
    # Same batches, same head: the trained heads agree to float32 noise.
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(cached.get_layer("head").kernel),
        keras.ops.convert_to_numpy(plain.get_layer("head").kernel),
        atol=1e-4,
    )


def test_two_stage_caches_the_first_stage_then_trains_everything(splits, resnet18_pth):
    model, history, before = run(splits, resnet18_pth, None, strategy="two-stage", epochs=4)
    assert [row["epoch"] for row in history.rows] == [1, 2, 3, 4]
    assert model.get_layer("backbone").trainable
    after = [keras.ops.convert_to_numpy(v) for v in model.get_layer("backbone").variables]
    assert all(not np.array_equal(a, b) for a, b in zip(after, before))
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(1e-4)


def test_cache_refuses_augmentation(splits, resnet18_pth):
    model = kflowers.build_model(weights=None, image_size=32)
    train_ds = FlowerDataset.from_folder(splits[0], batch_size=8, image_size=32, augment=True)
    with pytest.raises(ValueError, match="without augmentation"):
        train(model, "frozen", train_ds, epochs=1, verbose=0, feature_cache=True)
