"""keras-hub's ResNet18 backbone run as one torch function (torch backend).

Keras runs a functional model layer by layer, each layer a separate op on a
fresh tensor. For ResNet18 that costs more than the arithmetic suggests:
keras-hub pads explicitly (`ZeroPadding2D`, a fill and a copy) before every
strided convolution and the max pool, `ReLU` and `Add` write new tensors
where torchvision works in place, and in inference a batch norm is a whole
pass over memory that could have been folded into the convolution before it.
Layers can't fix this one at a time (a layer doesn't know who else reads its
output), but the backbone as a whole can.

`install(backbone)` gives a keras-hub `ResNetBackbone` with ResNet18's
layout (basic blocks, post-activation) a `call` that runs the same
computation as one torch function over the backbone's own variables:

- padding goes into the convolution or the max pool (after a ReLU,
  zero padding and torch's `-inf` padding give the same maximum);
- `ReLU` and the residual `Add` work in place, as in torchvision;
- a batch norm in inference mode whose weights need no gradient (predict,
  a frozen backbone, frozen blocks) is folded into its convolution: one
  kernel and a bias, cached until any of the five variables changes;
- a batch norm in training mode is torch's fused kernel with Keras's
  statistics rule (`kflowers.models.torch_kernels.layers.batch_norm_training`).

Each layer's own `trainable` flag decides its mode, as in Keras. The
backbone object stays a `ResNetBackbone` (the `call` is set on the
instance): its config, weights and saved files are unchanged, and anything
the fast path does not cover (other backends, float64, masks, symbolic
tensors, `torch.compile`, a backbone that isn't ResNet18's layout) runs its
layers one by one. Under mixed precision it computes in the policy's dtype
(bfloat16 or float16) with float32 variables and BatchNorm statistics.
Tested against the stock layers (outputs, gradients, moving statistics)
and, for a whole training step, against plain torch.

Example:
```python
model = kflowers.build_model(weights=None, torch_kernels=False)
backbone = kflowers.model_parts(model).backbone
kflowers.models.torch_kernels.resnet.install(backbone)  # True (kflowers.use_torch_kernels does this)
```
"""

import types
import weakref

import keras

from kflowers.models.torch_kernels import layers as torch_layers

# Conv2D layer -> (key of the five variables' versions, folded kernel, bias).
_FOLDED = weakref.WeakKeyDictionary()


def install(backbone):
    """Run `backbone` as one torch function when it has ResNet18's layout.

    Args:
        backbone: a `keras_hub.models.ResNetBackbone`.

    Returns:
        Whether the fast path was installed (`False` on other backends and
        for layouts other than basic blocks with post-activation).
    """
    if keras.backend.backend() != "torch":
        return False
    plan = _plan(backbone)
    if plan is None:
        policy = backbone.dtype_policy
        reason = "not ResNet18's layout" if _is(backbone, type(backbone)) else f"dtype policy {policy.name}"
        torch_layers.say_once(
            f"the torch fast path does not serve {backbone.name} ({reason}); it runs Keras's layers one by one"
        )
        return False
    backbone._torch_plan = plan
    backbone.call = types.MethodType(_call, backbone)
    return True


def uninstall(backbone):
    """Undo `install`: `backbone` runs its layers one by one again.

    Returns:
        Whether it had been installed.
    """
    installed = "call" in vars(backbone)
    if installed:
        del backbone.call
        del backbone._torch_plan
    return installed


def _plan(backbone):
    """The stem's and each block's (conv, bn, stride, padding), or `None` if
    `backbone` isn't ResNet18's layout."""
    config = backbone.get_config()
    if (
        config.get("block_type") != "basic_block"
        or config.get("use_pre_activation")
        or getattr(backbone, "data_format", "channels_last") != "channels_last"
        or len(config.get("input_conv_filters", [])) != 1
    ):
        return None
    try:
        stem_kernel = config["input_conv_kernel_sizes"][0]
        stem = _conv_bn(backbone, "conv1", stem_kernel, 2, (stem_kernel - 1) // 2)
        _check_pool(_layer(backbone, "pool1_pad"), _layer(backbone, "pool1_pool"))
        blocks = []
        channels = config["input_conv_filters"][0]
        for s, (filters, count, stride) in enumerate(
            zip(config["stackwise_num_filters"], config["stackwise_num_blocks"], config["stackwise_num_strides"])
        ):
            for b in range(count):
                name = f"stack{s}_block{b}"
                block_stride = stride if b == 0 else 1
                if _layer(backbone, f"{name}_0_conv", optional=True):
                    shortcut = _conv_bn(backbone, f"{name}_0", 1, block_stride, 0)
                elif block_stride == 1 and channels == filters:
                    shortcut = None
                else:
                    raise _NotResNet
                first = _conv_bn(backbone, f"{name}_1", 3, block_stride, 1)
                second = _conv_bn(backbone, f"{name}_2", 3, 1, 1)
                _check(
                    _is(_layer(backbone, f"{name}_add"), keras.layers.Add)
                    and _is_relu(_layer(backbone, f"{name}_1_relu"))
                    and _is_relu(_layer(backbone, f"{name}_out"))
                )
                blocks.append((shortcut, first, second))
                channels = filters
    except _NotResNet:
        return None
    return stem, blocks


class _NotResNet(Exception):
    pass


def _check(condition):
    if not condition:
        raise _NotResNet


def _layer(backbone, name, optional=False):
    for layer in backbone.layers:
        if layer.name == name:
            return layer
    _check(optional)
    return None


def _is(layer, cls):
    policy = layer.dtype_policy
    return (
        isinstance(layer, cls)
        and policy.variable_dtype == "float32"
        and policy.compute_dtype in torch_layers.FAST_DTYPES
    )


def _is_relu(layer):
    return _is(layer, keras.layers.Activation) and layer.activation is keras.activations.relu


def _conv_bn(backbone, prefix, kernel_size, stride, padding):
    """(conv, bn, stride, padding) for `prefix`_conv / `prefix`_bn, checked.

    keras-hub pads explicitly (`prefix`_pad, then a "valid" conv) before a
    strided convolution, and uses "same" padding otherwise.
    """
    conv, bn = _layer(backbone, f"{prefix}_conv"), _layer(backbone, f"{prefix}_bn")
    pad = _layer(backbone, f"{prefix}_pad", optional=True)
    if pad is not None:
        _check(_is(pad, keras.layers.ZeroPadding2D) and pad.padding == ((padding,) * 2,) * 2)
    conv_padding = "same" if padding and pad is None else "valid"
    _check(
        _is(conv, keras.layers.Conv2D)
        and _is(bn, keras.layers.BatchNormalization)
        and tuple(conv.kernel_size) == (kernel_size,) * 2
        and tuple(conv.strides) == (stride,) * 2
        and conv.padding == conv_padding
        and not conv.use_bias
        and conv.groups == 1
        and tuple(conv.dilation_rate) == (1, 1)
        and conv.activation is keras.activations.linear
        and conv.data_format == "channels_last"
        and bn.axis in (-1, 3)
        and bn.center
        and bn.scale
        and not bn.renorm
        and not bn.synchronized
    )
    return conv, bn, stride, padding


def _check_pool(pad, pool):
    """The stem's max pool: zero padding 1, then a 3x3 "valid" pool of stride 2."""
    _check(
        _is(pad, keras.layers.ZeroPadding2D)
        and pad.padding == ((1, 1), (1, 1))
        and _is(pool, keras.layers.MaxPooling2D)
        and pool.padding == "valid"
        and tuple(pool.pool_size) == (3, 3)
        and tuple(pool.strides) == (2, 2)
        and pool.data_format == "channels_last"
    )


def _call(self, inputs, training=None, mask=None):
    import torch

    if mask is not None or not isinstance(inputs, torch.Tensor) or inputs.device.type == "meta":
        return type(self).call(self, inputs, training=training, mask=mask)  # symbolic or masked: silently
    if not torch_layers.fast_path_applies(inputs):  # says why, once
        return type(self).call(self, inputs, training=training, mask=mask)
    stem, blocks = self._torch_plan
    x = torch_layers.to_nchw(inputs).contiguous(memory_format=torch.channels_last)
    x = _conv_bn_forward(x, *stem, training).relu_()
    # After a ReLU, torch's -inf padding gives the same maximum as keras-hub's zeros.
    x = torch.nn.functional.max_pool2d(x, 3, 2, padding=1)
    for shortcut, first, second in blocks:
        identity = x if shortcut is None else _conv_bn_forward(x, *shortcut, training)
        y = _conv_bn_forward(x, *first, training).relu_()
        x = _conv_bn_forward(y, *second, training).add_(identity).relu_()
    return torch_layers.to_nhwc(x)


def _conv_bn_forward(x, conv, bn, stride, padding, training):
    import torch

    kernel, gamma, beta = (torch_layers.stored(v) for v in (conv.kernel, bn.gamma, bn.beta))
    bn_training = bool(training) and bn.trainable
    needs_grad = torch.is_grad_enabled() and (kernel.requires_grad or gamma.requires_grad or beta.requires_grad)
    if not bn_training and not needs_grad:
        weight, bias = _folded(conv, bn, x.dtype)
        return torch.nn.functional.conv2d(x, weight, bias, stride=stride, padding=padding)
    weight = torch_layers.reordered_kernel(conv, kernel, x.dtype)  # mixed precision: the compute dtype
    y = torch.nn.functional.conv2d(x, weight, stride=stride, padding=padding)
    if bn_training:
        return torch_layers.batch_norm_training(bn, y)
    return torch.nn.functional.batch_norm(
        y,
        torch_layers.stored(bn.moving_mean),
        torch_layers.stored(bn.moving_variance),
        gamma,
        beta,
        training=False,
        eps=bn.epsilon,
    )


def _folded(conv, bn, dtype):
    """`conv` followed by `bn` in inference mode as one kernel and bias in `dtype`, cached.

    The folding is done in float32 (the variables' dtype) and then cast.
    """
    import torch

    variables = [torch_layers.stored(v) for v in (conv.kernel, bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance)]
    key = (torch_layers.versions(*variables), dtype)
    cached = _FOLDED.get(conv)
    if cached is None or cached[0] != key:
        # Never inference tensors, even when first folded under torch.inference_mode(): a later call that
        # needs a gradient (an input gradient through a frozen backbone) saves them for backward.
        with torch.inference_mode(False), torch.no_grad():
            kernel, gamma, beta, mean, var = (v.detach().float() for v in variables)
            scale = gamma * torch.rsqrt(var + bn.epsilon)
            weight = torch_layers.torch_kernel(kernel * scale).to(dtype)
            cached = _FOLDED[conv] = (key, weight, (beta - mean * scale).to(dtype))
    return cached[1], cached[2]
