"""`build_model`: the ResNet18 flower classifier, as a functional `keras.Model`.

    images (0-255, channels-last)
      -> `preprocess`  Normalization with ImageNet's mean and std, scaled to 0-255
      -> `backbone`    keras_hub.models.ResNetBackbone (ResNet18)
      -> `pool`        GlobalAveragePooling2D  (the 512-d features)
      -> `head`        Dense(num_classes), logits

It is made only of built-in Keras and keras-hub layers, so a saved model loads
with plain `keras.models.load_model`.
"""

from kflowers.options import weights_value
from kflowers.models.parts import model_parts
from kflowers.models.weights import _backbone_from_preset
from kflowers.models.weights import _is_preset
from kflowers.models.weights import load_weights


IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


RESNET18_CONFIG = dict(
    input_conv_filters=[64],
    input_conv_kernel_sizes=[7],
    stackwise_num_filters=[64, 128, 256, 512],
    stackwise_num_blocks=[2, 2, 2, 2],
    stackwise_num_strides=[1, 2, 2, 2],
    block_type="basic_block",
    use_pre_activation=False,
)


def build_model(num_classes=5, weights="imagenet", image_size=224, name="kflowers_resnet18", torch_kernels=True):
    """The ResNet18 flower classifier, as a functional `keras.Model`.

    Args:
        num_classes: number of classes (outputs of the `head`).
        weights: where the backbone's weights come from:
            `None` or `"none"`: random initialisation;
            `"imagenet"`: torchvision's ImageNet ResNet18 checkpoint
            (`resnet18-f37072fd.pth`), downloaded once and hash-checked;
            a keras-hub preset (`"resnet_18_imagenet"`,
            `"hf://timm/resnet18.a1_in1k"`, or a local preset folder);
            a file: a torchvision-layout `.pth`/`.pt` state dict, a
            timm-layout `.safetensors`, or a Keras `.weights.h5` saved from a
            backbone or from a whole kflowers model.
        image_size: side of the square input images; `None` accepts any size.
        name: the model's name.
        torch_kernels: on the torch backend, run the backbone on torch's
            channels-last kernels (`kflowers.torch_layers`) as one torch
            function (`kflowers.torch_resnet`); same weights, config and
            results, faster (see docs/performance.md). `False`
            keeps Keras's stock layers. Other backends ignore it.

    Returns:
        A `keras.Model` from `(batch, S, S, 3)` pixels in 0-255 (uint8 or
        float) to `(batch, num_classes)` logits.

    Example:
    >>> model = build_model(num_classes=5, weights="imagenet")
    >>> kflowers.model_parts(model).backbone.trainable = False   # freeze
    >>> model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    """
    import keras
    import keras_hub

    weights = weights_value(weights)
    shape = (image_size, image_size, 3)
    inputs = keras.Input(shape=shape, name="images")
    preprocess = keras.layers.Normalization(
        mean=[255.0 * m for m in IMAGENET_MEAN],
        variance=[(255.0 * s) ** 2 for s in IMAGENET_STD],
        name="preprocess",
    )
    x = preprocess(inputs)
    is_preset = isinstance(weights, str) and _is_preset(weights)
    if is_preset:
        backbone = _backbone_from_preset(weights, shape)
    else:
        backbone = keras_hub.models.ResNetBackbone(
            **RESNET18_CONFIG, image_shape=shape, data_format="channels_last", name="backbone"
        )
    features = backbone(x)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    # float32 logits whatever the dtype policy, as keras.io recommends for mixed precision.
    logits = keras.layers.Dense(num_classes, dtype="float32", name="head")(pooled)
    model = keras.Model(inputs, logits, name=name)
    if weights is not None and not is_preset:
        load_weights(model, weights)
    if torch_kernels:
        from kflowers.models.torch_kernels import use_torch_kernels

        use_torch_kernels(model)
    return model


def with_image_size(model, image_size):
    """The same classifier, weights and dtype policy, for `image_size` inputs.

    A ResNet ends in global pooling, so its weights serve any input size;
    only the `Input` is fixed when the model is built. The modern scratch
    recipe trains on random-resized crops, which show objects larger than a
    whole resized photo does, and scores test photos at a higher resolution
    to match ("FixRes", Touvron et al. 2019).

    Args:
        model: a model from `build_model` (or `load_model`).
        image_size: int, the side of the new model's square inputs.

    Returns:
        A new `keras.Model` from `build_model` with `model`'s weights.

    Example:
    >>> model = build_model(weights=None, image_size=96)
    >>> with_image_size(model, 128).input_shape
    (None, 128, 128, 3)
    """
    import keras

    parts = model_parts(model)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(parts.backbone.dtype_policy.name)  # the layers keep it
    try:
        resized = build_model(
            num_classes=parts.head.units,
            weights=None,
            image_size=image_size,
            name=model.name,
        )
    finally:
        keras.mixed_precision.set_global_policy(previous)
    resized.set_weights(model.get_weights())
    if hasattr(model, "class_names"):
        resized.class_names = model.class_names
    return resized
