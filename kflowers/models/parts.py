"""Where a kflowers classifier keeps its parts.

`build_model` makes a functional model `images -> preprocess -> backbone ->
pool -> head`. `model_parts(model)` names those parts, so that no other
module looks layers up by string.
"""

import dataclasses

from kflowers.errors import NotAClassifier

PREPROCESS, BACKBONE, POOL, HEAD = "preprocess", "backbone", "pool", "head"


@dataclasses.dataclass(frozen=True)
class ModelParts:
    """The layers of a kflowers classifier.

    Attributes:
        preprocess: the `Normalization` layer (ImageNet mean and std, 0-255).
        backbone: the keras-hub `ResNetBackbone`.
        pool: the `GlobalAveragePooling2D` layer.
        head: the `Dense` layer from pooled features to logits.
    """

    preprocess: object
    backbone: object
    pool: object
    head: object

    @property
    def features(self):
        """The pooled features: the symbolic output of `pool`."""
        return self.pool.output


def model_parts(model):
    """The `ModelParts` of a model from `build_model` (or one saved from it).

    Example:
    >>> parts = model_parts(model)
    >>> parts.backbone.trainable = False   # freeze
    """
    try:
        return ModelParts(*(model.get_layer(name) for name in (PREPROCESS, BACKBONE, POOL, HEAD)))
    except ValueError as error:
        raise NotAClassifier(
            f"{model.name} is not a kflowers classifier (it needs layers named "
            f"{PREPROCESS}, {BACKBONE}, {POOL} and {HEAD})"
        ) from error
