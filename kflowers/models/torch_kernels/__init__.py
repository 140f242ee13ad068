"""`use_torch_kernels(model)`: a model's layers on torch's channels-last kernels.

The one switch that `build_model` and `load_model` use. It switches every
stock `Conv2D`, `BatchNormalization` and `MaxPooling2D` layer, nested models
included (`kflowers.models.torch_kernels.layers`), and runs a keras-hub `ResNetBackbone`
with ResNet18's layout as one torch function (`kflowers.models.torch_kernels.resnet`).
Both work on the instances: classes, configs, weights and saved files stay
Keras's. `keras.models.clone_model` builds new layers from their configs, so
a clone runs the stock layers until it is switched too.

Example:
```python
model = kflowers.build_model(weights=None, torch_kernels=False)
kflowers.use_torch_kernels(model)  # 41 (what build_model does by default)
```
"""

import keras

from kflowers.models.torch_kernels import layers as torch_layers
from kflowers.models.torch_kernels import resnet as torch_resnet


def use_torch_kernels(model):
    """Switch `model`'s stock Conv2D/BatchNormalization/MaxPooling2D layers, and a ResNet18 backbone.

    Does nothing on backends other than torch.

    Args:
        model: a built `keras.Model`.

    Returns:
        The number of layers switched.
    """
    if keras.backend.backend() != "torch":
        return 0
    from keras_hub.models import ResNetBackbone

    switched = 0
    for layer in [model, *_all_layers(model)]:
        if torch_layers.switch(layer):
            switched += 1
        elif isinstance(layer, ResNetBackbone) and "call" not in vars(layer):
            torch_resnet.install(layer)
    return switched


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)
