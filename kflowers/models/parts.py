"""Where a kflowers classifier keeps its parts.

`build_model` makes a functional model `images -> preprocess -> backbone ->
pool -> head`. `model_parts(model)` finds those parts by the model's
structure (the keras-hub backbone, the global pooling after it, every layer
from there to the output), so a model with a head of its own (Dropout then
Dense, a hidden layer) is a classifier too, and no other module looks layers
up by string.
"""

import dataclasses

from kflowers.errors import NotAClassifier

PREPROCESS, BACKBONE, POOL, HEAD = "preprocess", "backbone", "pool", "head"

# Layers that pass their input through unchanged at inference: a head of these and a final Dense is linear.
_IDENTITY_AT_INFERENCE = ("Dropout", "SpatialDropout1D", "GaussianDropout", "GaussianNoise", "AlphaDropout", "Identity")


@dataclasses.dataclass(frozen=True)
class ModelParts:
    """The layers of a kflowers classifier.

    Attributes:
        preprocess: the layer before the backbone (`build_model`'s ImageNet
            `Normalization`), or `None` when the backbone takes the images.
        backbone: the keras-hub `ResNetBackbone`.
        pool: the `GlobalAveragePooling2D` layer after it.
        head_layers: tuple of layers. Every layer from the pooled features
            to the logits, in order (`build_model`'s: one `Dense` named
            `head`).
    """

    preprocess: object
    backbone: object
    pool: object
    head_layers: tuple

    @property
    def head(self):
        """The last layer: the `Dense` that gives the logits."""
        return self.head_layers[-1]

    @property
    def features(self):
        """The pooled features: the symbolic output of `pool`."""
        return self.pool.output

    @property
    def linear_head(self):
        """Whether the head is one affine map at inference (a Dense, after layers such as Dropout)."""
        return all(type(layer).__name__ in _IDENTITY_AT_INFERENCE for layer in self.head_layers[:-1])

    def apply_head(self, features, training=None):
        """The head's layers applied to pooled `features` (symbolic or not), in order.

        Example:
        ```python
        parts = model_parts(model)
        inputs = keras.Input(shape=(512,))
        head_model = keras.Model(inputs, parts.apply_head(inputs))  # features -> logits, the same layers
        ```
        """
        x = features
        for layer in self.head_layers:
            x = layer(x, training=training) if _takes_training(layer) else layer(x)
        return x


def model_parts(model):
    """The `ModelParts` of a classifier built by `build_model` (or like it, with a head of its own).

    Raises:
        NotAClassifier: no keras-hub ResNet backbone followed by global
            average pooling and a chain of layers ending in a `Dense` output.

    Example:
    ```python
    parts = model_parts(model)
    parts.backbone.trainable = False   # freeze
    ```
    """
    import keras

    layers = list(getattr(model, "layers", []))
    backbone = next((layer for layer in layers if _is_backbone(layer)), None)
    if backbone is None:
        raise NotAClassifier(f"{model.name} is not a kflowers classifier: it has no keras-hub ResNet backbone")
    position = layers.index(backbone)
    after = layers[position + 1 :]
    if not after or not isinstance(after[0], keras.layers.GlobalAveragePooling2D):
        raise NotAClassifier(
            f"{model.name} is not a kflowers classifier: its backbone is not followed by global pooling"
        )
    pool, head_layers = after[0], tuple(after[1:])
    chain = (pool, *head_layers)
    linked = all(_tensor(b, "input") is _tensor(a, "output") for a, b in zip(chain, chain[1:]))
    if not head_layers or not linked or not isinstance(head_layers[-1], keras.layers.Dense):
        raise NotAClassifier(
            f"{model.name} is not a kflowers classifier: after its pooling it needs a chain of layers "
            "ending in a Dense layer (the logits)"
        )
    if _tensor(head_layers[-1], "output") is not model.outputs[0] or len(model.outputs) != 1:
        raise NotAClassifier(f"{model.name} is not a kflowers classifier: its head's Dense is not its one output")
    preprocess = (
        layers[position - 1] if position > 0 and not isinstance(layers[position - 1], keras.layers.InputLayer) else None
    )
    return ModelParts(preprocess, backbone, pool, head_layers)


def _is_backbone(layer):
    try:
        import keras_hub
    except ImportError:  # pragma: no cover - keras-hub is a dependency
        return False
    return isinstance(layer, keras_hub.models.ResNetBackbone)


def _tensor(layer, which):
    """`layer.input` or `layer.output` (`which`), or `None` where the layer was called more than once, or never."""
    try:
        return getattr(layer, which)
    except (AttributeError, ValueError):
        return None


def _takes_training(layer):
    import inspect

    return "training" in inspect.signature(layer.call).parameters
