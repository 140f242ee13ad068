"""The loss a kflowers model trains with under the modern recipe, and how its files name it for plain Keras."""

import types

import keras


@keras.saving.register_keras_serializable(package="kflowers")
class SparseCrossentropyWithSmoothing(keras.losses.Loss):
    """Cross-entropy of integer labels against logits, with label smoothing.

    Keras's `SparseCategoricalCrossentropy` has no `label_smoothing`; this is
    its `CategoricalCrossentropy` on one-hot labels, so datasets keep their
    integer labels and the `"accuracy"` metric stays sparse.

    Args:
        label_smoothing: the weight moved from the true class to a uniform
            distribution over all classes. Defaults to `0.1`.

    Example:
    ```python
    model.compile(optimizer, SparseCrossentropyWithSmoothing(0.1), metrics=["accuracy"])
    ```
    """

    def __init__(self, label_smoothing=0.1, name="sparse_crossentropy_with_smoothing", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        one_hot = keras.ops.one_hot(labels, keras.ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            one_hot, y_pred, from_logits=True, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def saved_with_keras_loss(model):
    """Let every `.keras` file of `model` name Keras's own loss where it is compiled with kflowers's.

    `model.save` and `keras.callbacks.ModelCheckpoint` write the loss the
    model is compiled with; `SparseCrossentropyWithSmoothing` is registered
    only where kflowers is imported, so plain `keras.models.load_model` could
    not open such a file. With this, the file names Keras's
    `SparseCategoricalCrossentropy(from_logits=True)` instead (the CLI's
    `model.keras` always did): it loads anywhere, compiled without label
    smoothing, which `kflowers.training.train` sets again for each stage it
    compiles. Training on a loaded file with plain `fit` has no smoothing.
    The model itself trains with the loss it was compiled with.

    Args:
        model: a compiled `keras.Model`; its instance's `get_compile_config`
            (what Keras's saving asks) is set, nothing else changes.

    Example:
    ```python
    model.compile("sgd", SparseCrossentropyWithSmoothing(0.1), metrics=["accuracy"])
    saved_with_keras_loss(model).save("smoothed.keras")  # opens with plain keras.models.load_model
    ```
    """

    def get_compile_config(self):
        config = type(self).get_compile_config(self)
        loss = config.get("loss") if isinstance(config, dict) else None
        if isinstance(loss, dict) and loss.get("class_name") == SparseCrossentropyWithSmoothing.__name__:
            stock = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            config = {**config, "loss": keras.saving.serialize_keras_object(stock)}
        return config

    model.get_compile_config = types.MethodType(get_compile_config, model)
    return model
