"""Channels-last layers that run on torch's own channels-last kernels.

Keras's torch backend stores images channels-last (`NHWC`). Around every
convolution it copies the activation into torch's `NCHW` layout and then
into `channels_last` memory (two copies), around pooling into `NCHW` and
back, and it runs `BatchNormalization` as a chain of element-wise ops. But
an `NHWC` tensor *is* an `NCHW` tensor in torch's `channels_last` memory
format - a `permute` away, no copy - and torch's convolution, batch norm and
max pooling kernels run fastest in that format. The layers here are the
Keras layers with only that changed: same weights, same config, same
results (to float32 rounding; tested against the stock layers and, for a
whole ResNet18 training step, against plain torch).

`switch(layer)` gives one stock layer the fast path in place: it sets the
layer's `convolution_op` (Conv2D) or `call` (BatchNormalization,
MaxPooling2D) on the instance, so the layer stays of its stock class, with
its config, weights and saved form unchanged (`keras.models.save_model` and
`load_model` need no kflowers). On other backends, and wherever the fast
path does not apply (masks, float16, channels-first, asymmetric padding,
`torch.compile`), the layer runs the stock Keras code; where a reason other
than the layer's own settings stops it, it says so once in the log.
`kflowers.use_torch_kernels(model)` switches a whole model
(`kflowers.models.torch_kernels`).

Example:
```python
conv = keras.layers.Conv2D(64, 3, padding="same")
kflowers.models.torch_kernels.layers.switch(conv)  # True
```
"""

import logging
import types
import weakref

import keras

log = logging.getLogger("kflowers")
_SAID = set()


def say_once(message):
    """Log `message` (why the torch fast path steps aside) once per process."""
    if message not in _SAID:
        _SAID.add(message)
        log.info(message)


# Conv2D layer -> (kernel version, kernel in torch's layout); see reordered_kernel.
_REORDERED_KERNELS = weakref.WeakKeyDictionary()


def compiling():
    """Whether torch.compile (`jit_compile=True`) is tracing: it compiles Keras's own layers its own way."""
    import torch

    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return bool(is_compiling and is_compiling())


# Compute dtypes the fast path runs: float32, and mixed precision's bfloat16 and float16 (variables and
# BatchNorm statistics stay float32, as Keras keeps them).
FAST_DTYPES = ("float32", "bfloat16", "float16")


def fast_path_applies(inputs, channels_last=True):
    """Whether 4D channels-last `inputs` can take the torch fast path.

    Inputs of another dtype (float64) and torch.compile's tracing are said
    once in the log, since they come from the user's settings
    (`jit_compile=True`) rather than the layer's.
    """
    if not (channels_last and keras.backend.backend() == "torch" and len(inputs.shape) == 4):
        return False
    dtype = keras.backend.standardize_dtype(inputs.dtype)
    if dtype not in FAST_DTYPES:
        say_once(f"the torch fast path steps aside for {dtype} inputs: Keras's layers run them")
        return False
    if compiling():
        say_once(
            "the torch fast path steps aside under torch.compile (jit_compile=True): "
            "it compiles Keras's layers its own way"
        )
        return False
    return True


def to_nchw(x):
    """An NHWC torch tensor as NCHW: a view, in torch's channels_last memory format when contiguous."""
    return x.permute(0, 3, 1, 2)


def to_nhwc(x):
    """The inverse of `to_nchw`."""
    return x.permute(0, 2, 3, 1)


def torch_kernel(kernel):
    """A Keras `(h, w, in, out)` kernel as torch's `(out, in, h, w)`, in channels_last memory."""
    # (h, w, in, out) -> (out, h, w, in) is one 2D transpose, which torch
    # copies about twice as fast as the equivalent 4D permute.
    h, w, i, o = kernel.shape
    return kernel.reshape(h * w * i, o).t().contiguous().view(o, h, w, i).permute(0, 3, 1, 2)


class TensorVersions:
    """A cache key that changes when any of its tensors is written to or replaced.

    torch counts in-place writes in each tensor's `_version` (Keras's `assign`
    and its optimizers' updates are in place). torch has no public counter for
    this (an upstream gap): `tests/test_torch_layers.py` fails loudly if
    `_version` stops counting. The key holds the tensors themselves and
    compares them by identity, so a new tensor that happens to reuse an old
    one's address and count is never taken for it.
    """

    def __init__(self, tensors):
        self.tensors = tuple(tensors)
        self.state = tuple((t.data_ptr(), t._version, t.device) for t in self.tensors)

    def __eq__(self, other):
        if not isinstance(other, TensorVersions) or len(other.tensors) != len(self.tensors):
            return False
        return all(a is b for a, b in zip(self.tensors, other.tensors)) and self.state == other.state

    __hash__ = None


def versions(*tensors):
    """`TensorVersions(tensors)`: a key that changes when any of `tensors` is written to or replaced."""
    return TensorVersions(tensors)


def stored(variable):
    """The tensor a Keras variable stores (float32 under mixed precision).

    Inside a layer's call, Keras's autocast hands out a fresh copy of each
    float variable in the compute dtype; the fast path casts (and caches the
    cast) itself, so it reads the stored tensor. Keras has no public switch
    for this: `AutocastScope(None)` is the one its own code uses.
    """
    if not isinstance(variable, keras.Variable):
        return variable
    try:
        from keras.src.backend.common.variables import AutocastScope
    except ImportError:  # Keras moved it (tests/test_torch_layers.py fails then): read the value as it comes
        _warn_once("keras.src.backend.common.variables.AutocastScope is gone: the fast path reads cast copies")
        return variable.value
    with AutocastScope(None):
        return variable.value


_WARNED = set()


def _warn_once(message):
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


def reordered_kernel(layer, kernel, dtype=None):
    """`torch_kernel(kernel)` in `dtype` for `layer`, kept while `kernel` is unchanged.

    Reordering a 3x3x512x512 kernel is a strided copy of 9 MB (about as
    long as that layer's convolution of 8 small images); without gradients
    to carry (inference, frozen layers) the reordered kernel is kept until
    the variable changes (`versions`). Under mixed precision the kernel is
    cast first (half the bytes to reorder).
    """
    import torch

    dtype = dtype or kernel.dtype
    if kernel.requires_grad and torch.is_grad_enabled():
        return torch_kernel(kernel.to(dtype))
    key = (versions(kernel), dtype)
    cached = _REORDERED_KERNELS.get(layer)
    if cached is None or cached[0] != key:
        cached = _REORDERED_KERNELS[layer] = (key, torch_kernel(kernel.detach().to(dtype)))
    return cached[1]


def batch_norm_training(layer, x):
    """Batch norm of NCHW `x` with the batch's statistics; updates `layer`'s moving ones.

    torch's fused kernel computes the output and the batch statistics in one
    pass; the moving variance follows Keras's rule (the biased batch
    variance), not torch's `BatchNorm2d` (the unbiased one).
    """
    import torch

    gamma = stored(layer.gamma) if layer.scale else None
    beta = stored(layer.beta) if layer.center else None
    # momentum=1 makes torch write the batch's own statistics into `mean`
    # and `var` (the variance unbiased), from the same fused pass.
    channels = x.shape[1]
    statistics = stored(layer.moving_mean).dtype  # float32 under mixed precision too
    mean = torch.zeros(channels, dtype=statistics, device=x.device)
    var = torch.ones(channels, dtype=statistics, device=x.device)
    outputs = torch.nn.functional.batch_norm(x, mean, var, gamma, beta, training=True, momentum=1.0, eps=layer.epsilon)
    n = x.numel() // channels
    biased_var = var * ((n - 1) / n) if n > 1 else var
    layer.moving_mean.assign(layer.moving_mean * layer.momentum + mean * (1.0 - layer.momentum))
    layer.moving_variance.assign(layer.moving_variance * layer.momentum + biased_var * (1.0 - layer.momentum))
    return outputs


def _conv_convolution_op(self, inputs, kernel):
    """Conv2D: `torch.nn.functional.conv2d` on channels-last memory."""
    padding = _torch_padding(self)
    if padding is None or not fast_path_applies(inputs, self.data_format == "channels_last"):
        return type(self).convolution_op(self, inputs, kernel)
    import torch

    weight = reordered_kernel(self, stored(kernel), inputs.dtype)
    x = to_nchw(inputs).contiguous(memory_format=torch.channels_last)
    outputs = torch.nn.functional.conv2d(
        x, weight, stride=self.strides, padding=padding, dilation=self.dilation_rate, groups=self.groups
    )
    return to_nhwc(outputs)


def _torch_padding(conv):
    """torch's `padding` for `conv`, or `None` when it has no symmetric equivalent."""
    if conv.padding == "valid":
        return 0
    if all(s == 1 and k % 2 == 1 for s, k in zip(conv.strides, conv.kernel_size)):
        return tuple((k - 1) // 2 * d for k, d in zip(conv.kernel_size, conv.dilation_rate))
    return None


def _batch_norm_call(self, inputs, training=None, mask=None):
    """BatchNormalization: torch's fused batch norm, with Keras's statistics rule
    (the moving variance follows the biased batch variance, not torch's unbiased one)."""
    if mask is not None or self.renorm or self.synchronized or not fast_path_applies(inputs, self.axis in (-1, 3)):
        return type(self).call(self, inputs, training=training, mask=mask)
    import torch

    x = to_nchw(inputs).contiguous(memory_format=torch.channels_last)
    if training and self.trainable:
        outputs = batch_norm_training(self, x)
    else:
        outputs = torch.nn.functional.batch_norm(
            x,
            stored(self.moving_mean),
            stored(self.moving_variance),
            stored(self.gamma) if self.scale else None,
            stored(self.beta) if self.center else None,
            training=False,
            eps=self.epsilon,
        )
    return to_nhwc(outputs)


def _max_pooling_call(self, inputs):
    """MaxPooling2D ("valid" padding only): torch's max pooling on channels-last memory."""
    if self.padding != "valid" or not fast_path_applies(inputs, self.data_format == "channels_last"):
        return type(self).call(self, inputs)
    import torch

    x = to_nchw(inputs).contiguous(memory_format=torch.channels_last)
    return to_nhwc(torch.nn.functional.max_pool2d(x, self.pool_size, self.strides))


# Stock class -> (the method the fast path replaces, its replacement).
_FAST_METHODS = {
    keras.layers.Conv2D: ("convolution_op", _conv_convolution_op),
    keras.layers.BatchNormalization: ("call", _batch_norm_call),
    keras.layers.MaxPooling2D: ("call", _max_pooling_call),
}


def is_switched(layer):
    """Whether `switch` gave `layer` the fast path."""
    name = _FAST_METHODS.get(type(layer), (None,))[0]
    return name is not None and name in vars(layer)


def switch(layer):
    """Give a stock Conv2D, BatchNormalization or MaxPooling2D layer the fast path, in place.

    Args:
        layer: any Keras layer; other classes (subclasses too) are left alone.

    Returns:
        Whether `layer` was switched now (`False` when it is not one of the
        three, already switched, or the backend is not torch).
    """
    if keras.backend.backend() != "torch" or type(layer) not in _FAST_METHODS or is_switched(layer):
        return False
    name, method = _FAST_METHODS[type(layer)]
    setattr(layer, name, types.MethodType(method, layer))
    return True
