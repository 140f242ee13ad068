"""Losses a kflowers model is compiled with, registered so that a saved model's compile state loads."""

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
