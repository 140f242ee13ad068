"""`build_model`: the ResNet18 flower classifier, as a functional `keras.Model`.

    images (0-255, channels-last)
      -> `preprocess`  Normalization with ImageNet's mean and std, scaled to 0-255
      -> `backbone`    keras_hub.models.ResNetBackbone (ResNet18)
      -> `pool`        GlobalAveragePooling2D  (the 512-d features)
      -> `head`        Dense(num_classes), logits

It is made only of built-in Keras and keras-hub layers, so a saved model loads
with plain `keras.models.load_model`.
"""

from kflowers.models.parts import model_parts
from kflowers.models.weights import backbone_from_preset
from kflowers.models.weights import is_preset
from kflowers.models.weights import load_weights
from kflowers.models.weights import weights_value


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
        num_classes: int. The number of classes (outputs of the `head`).
            Defaults to `5`.
        weights: str, path or `None`. Where the backbone's weights come
            from: `None` or `"none"`: random initialisation; `"imagenet"`:
            torchvision's ImageNet ResNet18 checkpoint
            (`resnet18-f37072fd.pth`), downloaded once and hash-checked; a
            keras-hub preset (`"resnet_18_imagenet"`,
            `"hf://timm/resnet18.a1_in1k"`, or a local preset folder); a
            file: a torchvision-layout `.pth`/`.pt` state dict, a
            timm-layout `.safetensors`, or a Keras `.weights.h5` saved from
            a backbone or from a whole kflowers model. Defaults to
            `"imagenet"`.
        image_size: int or `None`. The side of the square input images;
            `None` accepts any size. Defaults to `224`.
        name: str. The model's name. Defaults to `"kflowers_resnet18"`.
        torch_kernels: bool. On the torch backend, run the backbone on
            torch's channels-last kernels as one torch function
            (`kflowers.models.torch_kernels`); same weights, config and
            results, faster (see docs/performance.md). `False` keeps
            Keras's stock layers. Other backends ignore it. Defaults to
            `True`.

    Returns:
        A `keras.Model` from `(batch, S, S, 3)` pixels in 0-255 (uint8 or
        float) to `(batch, num_classes)` logits.

    Example:
    ```python
    model = build_model(num_classes=5, weights="imagenet")
    kflowers.model_parts(model).backbone.trainable = False   # freeze
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ```
    """
    import keras

    weights = weights_value(weights)
    from_preset = isinstance(weights, str) and is_preset(weights)
    inputs, pooled = _pooled_resnet18(image_size, weights if from_preset else None)
    # float32 logits whatever the dtype policy, as keras.io recommends for mixed precision.
    logits = keras.layers.Dense(num_classes, dtype="float32", name="head")(pooled)
    model = keras.Model(inputs, logits, name=name)
    if weights is not None and not from_preset:
        load_weights(model, weights)
    if torch_kernels:
        from kflowers.models.torch_kernels import use_torch_kernels

        use_torch_kernels(model)
    return model


def _pooled_resnet18(image_size, preset=None):
    """`(inputs, pooled features)`: images -> ImageNet normalisation -> ResNet18 backbone -> global pooling."""
    import keras
    import keras_hub

    shape = (image_size, image_size, 3)
    inputs = keras.Input(shape=shape, name="images")
    preprocess = keras.layers.Normalization(
        mean=[255.0 * m for m in IMAGENET_MEAN],
        variance=[(255.0 * s) ** 2 for s in IMAGENET_STD],
        name="preprocess",
    )
    if preset is not None:
        backbone = backbone_from_preset(preset, shape)
    else:
        backbone = keras_hub.models.ResNetBackbone(
            **RESNET18_CONFIG, image_shape=shape, data_format="channels_last", name="backbone"
        )
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(preprocess(inputs)))
    return inputs, pooled


def with_image_size(model, image_size):
    """The same classifier, weights and dtype policy, for `image_size` inputs.

    A ResNet ends in global pooling, so its weights serve any input size;
    only the `Input` is fixed when the model is built. The modern scratch
    recipe trains on random-resized crops, which show objects larger than a
    whole resized photo does, and scores test photos at a higher resolution
    to match ("FixRes", Touvron et al. 2019).

    Args:
        model: `keras.Model`. A model from `build_model` (or `load_model`),
            whose head may be its own (`model_parts`).
        image_size: int. The side of the new model's square inputs.

    Returns:
        A new `keras.Model` with `model`'s layers (its head's too) and
        weights, on torch's kernels where `build_model` would put it.

    Example:
    ```python
    model = build_model(weights=None, image_size=96)
    with_image_size(model, 128).input_shape  # (None, 128, 128, 3)
    ```
    """
    import keras

    parts = model_parts(model)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(parts.backbone.dtype_policy.name)  # the layers keep it
    try:
        inputs, x = _pooled_resnet18(image_size)
        for layer in parts.head_layers:  # the model's own head, rebuilt from its layers' configs
            x = type(layer).from_config(layer.get_config())(x)
        resized = keras.Model(inputs, x, name=model.name)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    resized.set_weights(model.get_weights())
    from kflowers.models.torch_kernels import use_torch_kernels

    use_torch_kernels(resized)
    from kflowers.models.saving import remember_class_names

    if hasattr(model, "class_names"):
        remember_class_names(resized, model.class_names)
    return resized
