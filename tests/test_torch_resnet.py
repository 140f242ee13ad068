"""kflowers.models.torch_kernels.resnet: the backbone run as one torch function computes what
Keras computes running the backbone's layers one by one - outputs, gradients
and BatchNorm statistics - in every mode a strategy uses it in, and falls
back where it does not apply. (The layers are kflowers.models.torch_kernels.layers, each
tested against the stock Keras layer in test_torch_layers.py, so both sides
use the same torch kernels and differ only in how the backbone is put
together; test_model.py checks the whole model against plain torch too.)"""

import contextlib
from unittest import mock

import keras
import numpy as np
import pytest

import kflowers
from checkpoints import resnet18_state_dict
from checkpoints import save_pth
from kflowers.models.torch_kernels import resnet as torch_resnet

pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch backend only")

SIZE = 32
_np = keras.ops.convert_to_numpy


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    # Random BatchNorm statistics too, so a fold that ignores them shows.
    return str(save_pth(resnet18_state_dict(seed=3), tmp_path_factory.mktemp("w") / "r18.pth"))


@pytest.fixture
def twins(weights):
    """(layer by layer, one torch function) with the same weights."""
    keras.utils.set_random_seed(0)  # the heads start random: the same ones whatever ran before
    stock = kflowers.build_model(weights=weights, image_size=SIZE)
    assert torch_resnet.uninstall(stock.get_layer("backbone"))
    fast = kflowers.build_model(weights=weights, image_size=SIZE)
    fast.set_weights(stock.get_weights())  # the heads start random
    assert "call" in vars(fast.get_layer("backbone"))
    return stock, fast


def _images(n=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3)).astype("float32")


def _step(model, images, training):
    """Logits, gradients (trainable weights and images) and every weight after one call."""
    import torch

    x = keras.ops.convert_to_tensor(images).requires_grad_()  # on Keras's device (CPU or GPU)
    logits = model(x, training=training)
    upstream = keras.ops.convert_to_tensor(
        np.random.default_rng(1).standard_normal(tuple(logits.shape)).astype("float32")
    )
    trainable = [w.value for w in model.trainable_weights]
    grads = torch.autograd.grad((logits * upstream).sum(), trainable + [x])
    return [_np(logits.detach())] + [_np(g) for g in grads] + [keras.ops.convert_to_numpy(w) for w in model.weights]


def _assert_close(stock_values, fast_values, rtol=5e-4):
    """Within `rtol` of each array's scale: float32 rounding (folding a batch
    norm into its convolution rounds differently) reaches ~1e-4 of a
    gradient's scale here, where the last stage's batch statistics come from
    4 values per channel; a wrong stride, padding, mode or statistic is off
    by far more."""
    assert len(stock_values) == len(fast_values)
    for want, got in zip(stock_values, fast_values):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(np.abs(want).max(), 1e-6))


@contextlib.contextmanager
def one_torch_function(model):
    """Fail if `model`'s backbone runs its layers one by one (the fast path stepped aside)."""

    def layer_by_layer(*args, **kwargs):
        raise AssertionError("the backbone ran layer by layer, not as one torch function")

    with mock.patch.object(type(model.get_layer("backbone")), "call", layer_by_layer):
        yield


def _freeze(model, frozen):
    backbone = model.get_layer("backbone")
    if frozen == "backbone":
        backbone.trainable = False
    elif frozen == "stacks 0-2":  # a partly frozen backbone: batch norms in both modes
        for layer in backbone.layers:
            if not layer.name.startswith("stack3"):
                layer.trainable = False


@pytest.mark.parametrize(
    "training,frozen",
    [
        (True, None),  # fine-tuning: batch statistics, moving averages updated
        (True, "stacks 0-2"),  # two-stage / discriminative: frozen blocks in inference mode
        (True, "backbone"),  # frozen: every batch norm folded, the input gradient still exact
        (False, None),  # inference with gradients (e.g. a saliency map)
    ],
)
def test_matches_the_stock_layers(twins, training, frozen):
    stock, fast = twins
    for model in twins:
        _freeze(model, frozen)
    expected = _step(stock, _images(), training)
    with one_torch_function(fast):
        _assert_close(expected, _step(fast, _images(), training))


def test_predict_folds_batch_norm_and_follows_every_weight_change(twins):
    stock, fast = twins
    images = _images()
    expected = stock.predict(images, verbose=0)
    with one_torch_function(fast):
        _assert_close([expected], [fast.predict(images, verbose=0)], rtol=1e-5)
    # Folded kernels are cached: each kind of change must reach them.
    stock_bn, fast_bn = (m.get_layer("backbone").get_layer("stack2_block1_2_bn") for m in twins)
    for name in ("moving_variance", "moving_mean", "gamma", "beta"):
        value = np.random.default_rng(len(name)).uniform(0.5, 2, getattr(stock_bn, name).shape)
        getattr(stock_bn, name).assign(value)
        getattr(fast_bn, name).assign(value)
        _assert_close([stock.predict(images, verbose=0)], [fast.predict(images, verbose=0)], rtol=1e-5)
    # ... and so must an optimizer step. (The stock twin takes the stepped weights: two separate
    # steps of a random model at this rate differ by their float32 rounding, amplified.)
    before = fast.predict(images, verbose=0)
    fast.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    fast.fit(images, np.arange(4) % 5, batch_size=4, epochs=1, verbose=0)
    after = fast.predict(images, verbose=0)
    assert np.abs(after - before).max() > 1e-3
    stock.set_weights(fast.get_weights())
    _assert_close([stock.predict(images, verbose=0)], [after], rtol=1e-5)


def test_frozen_fit_moves_only_the_head(twins):
    _, fast = twins
    fast.get_layer("backbone").trainable = False
    backbone = [keras.ops.convert_to_numpy(w) for w in fast.get_layer("backbone").weights]
    head = fast.get_layer("head").get_weights()
    fast.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    fast.fit(_images(8), np.arange(8) % 5, batch_size=4, epochs=1, verbose=0)
    for want, w in zip(backbone, fast.get_layer("backbone").weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), want)
    assert np.abs(fast.get_layer("head").get_weights()[0] - head[0]).max() > 0


def test_config_and_symbolic_calls_are_unchanged(twins):
    stock, fast = twins
    backbone = fast.get_layer("backbone")
    assert backbone.get_config() == stock.get_layer("backbone").get_config()
    # A new functional model over the backbone builds as usual (symbolic call).
    features = backbone(keras.Input((SIZE, SIZE, 3)))
    assert tuple(features.shape) == (None, 1, 1, 512)
    torch_resnet.uninstall(backbone)
    assert "call" not in vars(backbone)
    _assert_close([stock.predict(_images(), verbose=0)], [fast.predict(_images(), verbose=0)], rtol=1e-5)


def test_other_layouts_keep_the_stock_layers():
    import keras_hub

    bottleneck = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="bottleneck_block",
        use_pre_activation=False,
        image_shape=(SIZE, SIZE, 3),
    )
    assert not torch_resnet.install(bottleneck)
    assert "call" not in vars(bottleneck)


def test_torch_compile_and_float64_get_the_layers_one_by_one(twins, monkeypatch):
    import keras_hub
    import torch

    stock, fast = twins

    def fail(*args):
        raise AssertionError("the one-function path ran")

    monkeypatch.setattr(torch_resnet, "_conv_bn_forward", fail)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    _assert_close([stock.predict(_images(), verbose=0)], [fast.predict(_images(), verbose=0)], rtol=1e-5)

    def small_backbone(dtype):
        return keras_hub.models.ResNetBackbone(
            input_conv_filters=[64],
            input_conv_kernel_sizes=[7],
            stackwise_num_filters=[64, 128],
            stackwise_num_blocks=[1, 1],
            stackwise_num_strides=[1, 2],
            block_type="basic_block",
            use_pre_activation=False,
            image_shape=(SIZE, SIZE, 3),
            dtype=dtype,
        )

    assert torch_resnet.install(small_backbone("float32"))  # any basic-block layout
    assert torch_resnet.install(small_backbone("mixed_float16"))  # mixed precision: served
    assert torch_resnet.install(small_backbone("mixed_bfloat16"))
    assert not torch_resnet.install(small_backbone("float64"))
