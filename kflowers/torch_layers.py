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

`use_torch_kernels(model)` switches a model's layers over in place by
changing the class of each matching layer to the subclass here (which adds
no state). Unlike `keras.models.clone_model`, that keeps the model as it
is: keras-hub's `ResNetBackbone` stays a `ResNetBackbone`, still saves as
its config, and a saved model is made of stock layers that load without
kflowers. On other backends, and wherever the fast path does not apply
(masks, float16, channels-first, asymmetric padding), the layers run the
stock Keras code.

Example:
>>> model = kflowers.build_model(weights=None, torch_kernels=False)
>>> kflowers.use_torch_kernels(model)   # what build_model does by default
41
"""

import logging
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


def _torch_fast_path(inputs, channels_last=True):
    """Whether 4D channels-last `inputs` can take the torch fast path."""
    return (
        channels_last
        and keras.backend.backend() == "torch"
        and len(inputs.shape) == 4
        and keras.backend.standardize_dtype(inputs.dtype) == "float32"
    )


def _to_nchw(x):
    # A contiguous NHWC tensor seen as NCHW: torch's channels_last format.
    return x.permute(0, 3, 1, 2)


def _to_nhwc(x):
    return x.permute(0, 2, 3, 1)


def torch_kernel(kernel):
    """A Keras `(h, w, in, out)` kernel as torch's `(out, in, h, w)`, in channels_last memory."""
    # (h, w, in, out) -> (out, h, w, in) is one 2D transpose, which torch
    # copies about twice as fast as the equivalent 4D permute.
    h, w, i, o = kernel.shape
    return kernel.reshape(h * w * i, o).t().contiguous().view(o, h, w, i).permute(0, 3, 1, 2)


def versions(*tensors):
    """A key that changes when any of `tensors` is written to or replaced.

    torch counts in-place writes in `_version`; Keras's `assign` and its
    optimizers' updates are in place.
    """
    return tuple((t.data_ptr(), t._version, t.device) for t in tensors)


def reordered_kernel(layer, kernel):
    """`torch_kernel(kernel)` for `layer`, kept while `kernel` is unchanged.

    Reordering a 3x3x512x512 kernel is a strided copy of 9 MB (about as
    long as that layer's convolution of 8 small images); without gradients
    to carry (inference, frozen layers) the reordered kernel is kept until
    the variable changes (`versions`).
    """
    import torch

    if kernel.requires_grad and torch.is_grad_enabled():
        return torch_kernel(kernel)
    key = versions(kernel)
    cached = _REORDERED_KERNELS.get(layer)
    if cached is None or cached[0] != key:
        cached = _REORDERED_KERNELS[layer] = (key, torch_kernel(kernel.detach()))
    return cached[1]


def batch_norm_training(layer, x):
    """Batch norm of NCHW `x` with the batch's statistics; updates `layer`'s moving ones.

    torch's fused kernel computes the output and the batch statistics in one
    pass; the moving variance follows Keras's rule (the biased batch
    variance), not torch's `BatchNorm2d` (the unbiased one).
    """
    import torch

    gamma = layer.gamma.value if layer.scale else None
    beta = layer.beta.value if layer.center else None
    # momentum=1 makes torch write the batch's own statistics into `mean`
    # and `var` (the variance unbiased), from the same fused pass.
    channels = x.shape[1]
    mean = torch.zeros(channels, dtype=x.dtype, device=x.device)
    var = torch.ones(channels, dtype=x.dtype, device=x.device)
    outputs = torch.nn.functional.batch_norm(
        x, mean, var, gamma, beta, training=True, momentum=1.0, eps=layer.epsilon)
    n = x.numel() // channels
    biased_var = var * ((n - 1) / n) if n > 1 else var
    layer.moving_mean.assign(layer.moving_mean * layer.momentum + mean * (1.0 - layer.momentum))
    layer.moving_variance.assign(
        layer.moving_variance * layer.momentum + biased_var * (1.0 - layer.momentum))
    return outputs


@keras.saving.register_keras_serializable(package="kflowers")
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` that calls `torch.nn.functional.conv2d` on channels-last memory."""

    def convolution_op(self, inputs, kernel):
        padding = self._torch_padding()
        if padding is None or not _torch_fast_path(inputs, self.data_format == "channels_last"):
            return super().convolution_op(inputs, kernel)
        import torch

        weight = reordered_kernel(self, keras.ops.convert_to_tensor(kernel))
        x = _to_nchw(inputs).contiguous(memory_format=torch.channels_last)
        outputs = torch.nn.functional.conv2d(
            x, weight, stride=self.strides, padding=padding, dilation=self.dilation_rate,
            groups=self.groups,
        )
        return _to_nhwc(outputs)

    def _torch_padding(self):
        """torch's `padding` for this layer, or `None` when it has no symmetric equivalent."""
        if self.padding == "valid":
            return 0
        if all(s == 1 and k % 2 == 1 for s, k in zip(self.strides, self.kernel_size)):
            return tuple((k - 1) // 2 * d for k, d in zip(self.kernel_size, self.dilation_rate))
        return None


@keras.saving.register_keras_serializable(package="kflowers")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` computed by torch's fused batch norm.

    The statistics are Keras's: the moving variance is updated with the
    biased batch variance, as the stock layer does (torch's own
    `BatchNorm2d` uses the unbiased one).
    """

    def call(self, inputs, training=None, mask=None):
        if (mask is not None or self.renorm or self.synchronized
                or not _torch_fast_path(inputs, self.axis in (-1, 3))):
            return super().call(inputs, training=training, mask=mask)
        import torch

        x = _to_nchw(inputs).contiguous(memory_format=torch.channels_last)
        if training and self.trainable:
            outputs = batch_norm_training(self, x)
        else:
            outputs = torch.nn.functional.batch_norm(
                x, self.moving_mean.value, self.moving_variance.value,
                self.gamma.value if self.scale else None, self.beta.value if self.center else None,
                training=False, eps=self.epsilon)
        return _to_nhwc(outputs)


@keras.saving.register_keras_serializable(package="kflowers")
class MaxPooling2D(keras.layers.MaxPooling2D):
    """`keras.layers.MaxPooling2D` on channels-last memory (only `"valid"` padding)."""

    def call(self, inputs):
        if self.padding != "valid" or not _torch_fast_path(inputs, self.data_format == "channels_last"):
            return super().call(inputs)
        import torch

        x = _to_nchw(inputs).contiguous(memory_format=torch.channels_last)
        return _to_nhwc(torch.nn.functional.max_pool2d(x, self.pool_size, self.strides))


_FAST_CLASSES = {
    keras.layers.Conv2D: Conv2D,
    keras.layers.BatchNormalization: BatchNormalization,
    keras.layers.MaxPooling2D: MaxPooling2D,
}


def use_torch_kernels(model):
    """Switch `model`'s stock Conv2D/BatchNormalization/MaxPooling2D layers to the ones here.

    Nested models are included, and a keras-hub `ResNetBackbone` with
    ResNet18's layout also runs as one torch function
    (`kflowers.torch_resnet`). Does nothing on backends other than torch.

    Args:
        model: a built `keras.Model`.

    Returns:
        The number of layers switched.
    """
    if keras.backend.backend() != "torch":
        return 0
    from keras_hub.models import ResNetBackbone

    from kflowers import torch_resnet

    switched = 0
    for layer in [model, *_all_layers(model)]:
        fast = _FAST_CLASSES.get(type(layer))
        if fast is not None:
            layer.__class__ = fast
            switched += 1
        elif isinstance(layer, ResNetBackbone):
            torch_resnet.install(layer)
    return switched


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)
