"""Mixed precision on the torch fast path: bfloat16 compute, float32 variables, statistics and logits;
forward within bfloat16 tolerance of float32, and training that learns as float32 does."""

import contextlib

import keras
import numpy as np
import pytest

import kflowers
from kflowers.data.dataset import FlowerDataset
from kflowers.training.loop import train

pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch", reason="the fast path is torch's")


@contextlib.contextmanager
def policy(name):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def models(pth, size=64):
    """The same weights as a float32 model (stock layers) and a mixed_bfloat16 one (fast path)."""
    keras.utils.set_random_seed(0)
    reference = kflowers.build_model(weights=pth, image_size=size, torch_kernels=False)
    with policy("mixed_bfloat16"):
        fast = kflowers.build_model(weights=pth, image_size=size)
    fast.set_weights(reference.get_weights())
    return reference, fast


def test_bf16_forward_is_within_bf16_tolerance_of_float32(resnet18_pth, monkeypatch):
    from kflowers.models.torch_kernels import resnet as torch_resnet

    reference, fast = models(resnet18_pth)
    served = []
    original = torch_resnet._conv_bn_forward
    monkeypatch.setattr(torch_resnet, "_conv_bn_forward", lambda x, *a: served.append(x.dtype) or original(x, *a))
    images = np.random.default_rng(0).integers(0, 256, (16, 64, 64, 3)).astype("uint8")
    expected = keras.ops.convert_to_numpy(reference(images, training=False))
    got = fast(images, training=False)
    assert keras.backend.standardize_dtype(got.dtype) == "float32"  # the head computes in float32
    assert served and {str(d) for d in served} == {"torch.bfloat16"}  # the fast path ran, in bfloat16
    got = keras.ops.convert_to_numpy(got)
    spread = expected.max() - expected.min()
    # bfloat16 keeps 8 bits of mantissa (relative rounding 2**-9); twenty layers compound it to a few percent.
    assert np.abs(got - expected).max() <= 0.05 * spread
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).mean() >= 0.9


def test_bf16_training_keeps_float32_variables_and_statistics(resnet18_pth):
    _, fast = models(resnet18_pth)
    images = np.random.default_rng(1).integers(0, 256, (8, 64, 64, 3)).astype("uint8")
    before = {v.path: keras.ops.convert_to_numpy(v) for v in fast.weights}
    fast.compile(keras.optimizers.SGD(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    fast.train_on_batch(images, np.arange(8) % 5)
    for variable in fast.weights:
        assert keras.backend.standardize_dtype(variable.dtype) == "float32", variable.path
    moved = [
        v.path
        for v in fast.weights
        if "moving" in v.path and not np.array_equal(keras.ops.convert_to_numpy(v), before[v.path])
    ]
    assert len(moved) == 2 * 20  # every BatchNorm's mean and variance followed the batch


def test_bf16_training_learns_as_float32_does(flowers_dir, resnet18_pth):
    train_split, test_split = kflowers.split_dataset(kflowers.scan_folder(flowers_dir), test_size=0.25, seed=0)

    def losses(name):
        keras.utils.set_random_seed(0)
        with policy(name):
            model = kflowers.build_model(weights=resnet18_pth, image_size=32)
        train_ds = FlowerDataset.from_folder(train_split, batch_size=16, image_size=32, shuffle=True, seed=1)
        test_ds = FlowerDataset.from_folder(test_split, batch_size=32, image_size=32)
        result = train(model, "discriminative", train_ds, test_ds, epochs=4, verbose=0)
        return [row["loss"] for row in result.rows]

    fp32, bf16 = losses("float32"), losses("mixed_bfloat16")
    assert bf16[-1] < 0.5 * bf16[0] and fp32[-1] < 0.5 * fp32[0]  # both learn
    np.testing.assert_allclose(bf16, fp32, rtol=0.15)  # and along the same curve


def test_float16_runs_the_fast_path_with_keras_loss_scaling(resnet18_pth, monkeypatch):
    from kflowers.models.torch_kernels import resnet as torch_resnet

    keras.utils.set_random_seed(0)
    reference = kflowers.build_model(weights=resnet18_pth, image_size=32, torch_kernels=False)
    with policy("mixed_float16"):
        fast = kflowers.build_model(weights=resnet18_pth, image_size=32)
    fast.set_weights(reference.get_weights())
    served = []
    original = torch_resnet._conv_bn_forward
    monkeypatch.setattr(torch_resnet, "_conv_bn_forward", lambda x, *a: served.append(x.dtype) or original(x, *a))
    images = np.random.default_rng(3).integers(0, 256, (8, 32, 32, 3)).astype("uint8")
    expected = keras.ops.convert_to_numpy(reference(images, training=False))
    got = keras.ops.convert_to_numpy(fast(images, training=False))
    assert {str(d) for d in served} == {"torch.float16"}
    assert np.abs(got - expected).max() <= 0.01 * (expected.max() - expected.min())  # 11 bits of mantissa
    fast.compile(keras.optimizers.SGD(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert isinstance(fast.optimizer, keras.optimizers.LossScaleOptimizer)  # as Keras does for float16
    assert np.isfinite(fast.train_on_batch(images, np.arange(8) % 5))
