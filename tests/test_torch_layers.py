"""kflowers.models.torch_kernels.layers: each layer computes what the stock Keras layer
computes (outputs, gradients, BatchNorm statistics), and falls back to it
where its fast path does not apply."""

import collections
import contextlib
from unittest import mock

import keras
import numpy as np
import pytest

from kflowers.models.torch_kernels import layers as torch_layers
from kflowers.models.torch_kernels import use_torch_kernels

on_torch = keras.backend.backend() == "torch"
_np = keras.ops.convert_to_numpy
torch_only = pytest.mark.skipif(not on_torch, reason="torch backend only")


def _pair(stock_class, config, shape, seed=0):
    """A stock layer and its kflowers twin with the same weights, built for `shape`."""
    stock = stock_class(**config)
    stock.build(shape)
    fast = stock_class.from_config(stock.get_config())
    assert torch_layers.switch(fast)
    fast.build(shape)
    rng = np.random.default_rng(seed)
    weights = [rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in stock.get_weights()]
    stock.set_weights(weights)
    fast.set_weights(weights)
    return stock, fast


def _run(layer, x, upstream, **kwargs):
    """Output, gradient w.r.t. the input, and the layer's weights after the call."""
    x = keras.ops.convert_to_tensor(x).requires_grad_()  # on Keras's device (CPU or GPU)
    y = layer(x, **kwargs)
    (y * keras.ops.convert_to_tensor(upstream)).sum().backward()
    return _np(y.detach()), _np(x.grad), [np.array(w) for w in layer.get_weights()]


@contextlib.contextmanager
def stock_calls():
    """Count the calls of Keras's own Conv2D, BatchNormalization and MaxPooling2D code: where a switched
    layer steps aside, it calls them; where its fast path runs, it doesn't."""
    counts = collections.Counter()
    with contextlib.ExitStack() as stack:
        for cls, name in FAST_METHODS:

            def counted(self, *args, _original=getattr(cls, name), _name=cls.__name__, **kwargs):
                counts[_name] += 1
                return _original(self, *args, **kwargs)

            stack.enter_context(mock.patch.object(cls, name, counted))
        yield counts


FAST_METHODS = (
    (keras.layers.Conv2D, "convolution_op"),
    (keras.layers.BatchNormalization, "call"),
    (keras.layers.MaxPooling2D, "call"),
)


def _assert_same(stock, fast, x, rtol=1e-5, stock_path=False, **kwargs):
    """`fast` computes what `stock` computes, on its fast path (or, with `stock_path`, on Keras's code)."""
    upstream = np.random.default_rng(1).standard_normal(stock.compute_output_shape(x.shape)).astype("float32")
    expected = _run(stock, x, upstream, **kwargs)
    with stock_calls() as counts:
        actual = _run(fast, x, upstream, **kwargs)
    assert bool(counts) == stock_path, f"stock code calls: {dict(counts)}"
    for want, got in zip(expected, actual):
        for w, g in zip(want if isinstance(want, list) else [want], got if isinstance(got, list) else [got]):
            np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * np.abs(w).max())


def _images(shape=(4, 9, 10, 6)):
    return np.random.default_rng(0).standard_normal(shape).astype("float32") * 3 + 1


@torch_only
@pytest.mark.parametrize(
    "config",
    [
        dict(filters=5, kernel_size=3, padding="same"),
        dict(filters=5, kernel_size=3, padding="valid", strides=2),
        dict(filters=5, kernel_size=(1, 3), padding="same", dilation_rate=2, use_bias=True),
        dict(filters=6, kernel_size=3, padding="same", groups=3),
        dict(filters=5, kernel_size=3, padding="same", strides=2),  # stock path: asymmetric padding
    ],
)
def test_conv2d_matches_keras(config):
    config.setdefault("use_bias", False)
    stock, fast = _pair(keras.layers.Conv2D, config, (4, 9, 10, 6))
    _assert_same(stock, fast, _images(), stock_path=config.get("strides") == 2 and config["padding"] == "same")


@torch_only
@pytest.mark.parametrize("training", [True, False])
def test_batch_normalization_matches_keras_statistics_included(training):
    stock, fast = _pair(keras.layers.BatchNormalization, dict(momentum=0.9, epsilon=1e-5), (4, 9, 10, 6))
    # The moving statistics after the call are compared too: Keras's biased variance.
    _assert_same(stock, fast, _images(), training=training)


@torch_only
def test_frozen_batch_normalization_uses_and_keeps_its_moving_statistics():
    stock, fast = _pair(keras.layers.BatchNormalization, dict(momentum=0.9), (4, 9, 10, 6))
    before = fast.get_weights()
    stock.trainable = fast.trainable = False
    _assert_same(stock, fast, _images(), training=True)
    for w, b in zip(fast.get_weights(), before):
        np.testing.assert_array_equal(w, b)


@torch_only
@pytest.mark.parametrize("config", [dict(pool_size=3, strides=2), dict(pool_size=2, padding="same")])
def test_max_pooling_matches_keras(config):
    stock, fast = _pair(keras.layers.MaxPooling2D, config, (4, 9, 10, 6))
    _assert_same(stock, fast, _images(), stock_path=config.get("padding") == "same")


@torch_only
def test_channels_first_and_float16_take_the_stock_path():
    x = _images((2, 6, 9, 10))
    stock, fast = _pair(
        keras.layers.Conv2D, dict(filters=4, kernel_size=3, data_format="channels_first"), (2, 6, 9, 10)
    )
    _assert_same(stock, fast, x, stock_path=True)
    stock, fast = _pair(keras.layers.BatchNormalization, dict(axis=1), (2, 6, 9, 10))
    _assert_same(stock, fast, x, training=True, stock_path=True)
    half = keras.layers.BatchNormalization(dtype="float16")
    torch_layers.switch(half)
    assert keras.backend.standardize_dtype(half(x.astype("float16"), training=True).dtype) == "float16"


@torch_only
def test_use_torch_kernels_keeps_config_and_weights():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="dense")(x))
    configs = {layer.name: layer.get_config() for layer in model.layers}
    weights = model.get_weights()
    assert use_torch_kernels(model) == 3
    assert torch_layers.is_switched(model.get_layer("conv"))
    assert type(model.get_layer("conv")) is keras.layers.Conv2D  # the class stays Keras's
    assert type(model.get_layer("dense")) is keras.layers.Dense
    assert {layer.name: layer.get_config() for layer in model.layers} == configs
    for w, b in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(w, b)
    assert use_torch_kernels(model) == 0  # already switched


@pytest.mark.skipif(on_torch, reason="the other backends")
def test_use_torch_kernels_does_nothing_on_other_backends():
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)])
    assert use_torch_kernels(model) == 0
    assert type(model.layers[0]) is keras.layers.Conv2D


@torch_only
def test_conv2d_kernel_cache_follows_every_weight_change():
    import torch

    stock, fast = _pair(keras.layers.Conv2D, dict(filters=5, kernel_size=3, padding="same"), (4, 9, 10, 6))
    x = _images()
    with torch.no_grad():
        fast(x)  # caches the reordered kernel
        for step in range(2):
            new = np.random.default_rng(step).standard_normal(fast.kernel.shape).astype("float32")
            stock.kernel.assign(new)
            fast.kernel.assign(new)
            np.testing.assert_allclose(_np(fast(x)), _np(stock(x)), rtol=1e-5, atol=1e-4)
    # A frozen layer inside a training step uses the cache; an optimizer step
    # on a trainable one invalidates it.
    optimizer = keras.optimizers.SGD(0.1)
    fast.trainable = True
    with torch.no_grad():
        before = _np(fast(x))
    loss = fast(x).square().mean()
    loss.backward()
    optimizer.apply([fast.kernel.value.grad], [fast.kernel])
    with torch.no_grad():
        after = _np(fast(x))
        stock.kernel.assign(fast.kernel.numpy())
        np.testing.assert_allclose(after, _np(stock(x)), rtol=1e-5, atol=1e-4)
    assert np.abs(after - before).max() > 1e-3


@torch_only
def test_a_switched_generic_model_saves_and_loads_with_plain_keras(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="dense")(keras.layers.Flatten()(x)))
    assert use_torch_kernels(model) == 3
    path = tmp_path / "generic.keras"
    model.save(path)
    import zipfile

    with zipfile.ZipFile(path) as archive:
        assert "kflowers" not in archive.read("config.json").decode()  # loads without kflowers
    loaded = keras.models.load_model(path)
    assert not any(torch_layers.is_switched(layer) for layer in loaded.layers)  # stock layers
    x = _images((2, 8, 8, 3))
    np.testing.assert_allclose(_np(loaded(x)), _np(model(x)), rtol=1e-5, atol=1e-5)


@torch_only
@pytest.mark.slow
def test_jit_compile_trains_the_default_model(caplog):
    """torch.compile on build_model's model: the fast path steps aside (and says so) for Keras's layers."""
    import logging

    import kflowers

    keras.utils.set_random_seed(0)
    model = kflowers.build_model(weights=None, image_size=32)
    model.compile(
        keras.optimizers.SGD(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True
    )
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("uint8")
    torch_layers._SAID.discard(
        "the torch fast path steps aside under torch.compile (jit_compile=True): it compiles Keras's layers its own way"
    )
    before = [np.array(_np(v)) for v in model.trainable_variables]
    with caplog.at_level(logging.INFO, logger="kflowers"):
        losses = [float(model.train_on_batch(images, np.arange(4))) for _ in range(2)]
    assert np.all(np.isfinite(losses))
    assert all(not np.array_equal(a, _np(v)) for a, v in zip(before, model.trainable_variables))
    assert any("torch.compile" in r.getMessage() for r in caplog.records)


# The fast path leans on two things torch and Keras do not offer publicly; these fail loudly when they move.


@torch_only
def test_torch_still_counts_in_place_writes_in_version():
    import torch

    tensor = torch.zeros(3)
    before = tensor._version
    tensor.add_(1)
    tensor[0] = 5
    assert tensor._version == before + 2


@torch_only
def test_a_kernel_cache_key_tells_a_new_tensor_from_the_old_one_at_the_same_address():
    import torch

    kernel = torch.zeros(3, 3)
    key = torch_layers.versions(kernel)
    assert torch_layers.versions(kernel) == key
    alias = kernel.detach()  # same address, same write count, another tensor
    assert (alias.data_ptr(), alias._version) == (kernel.data_ptr(), kernel._version)
    assert torch_layers.versions(alias) != key
    kernel.mul_(2)
    assert torch_layers.versions(kernel) != key


def test_keras_autocast_scope_is_where_the_fast_path_reads_it():
    from keras.src.backend.common.variables import AutocastScope  # kflowers's one private Keras import

    variable = keras.Variable(np.ones(2, "float32"))
    with AutocastScope("bfloat16"):
        assert "bfloat16" in str(variable.value.dtype)  # what a layer's call sees under mixed precision
        assert "float32" in str(torch_layers.stored(variable).dtype)  # what the fast path reads
