"""Frozen training on cached features: one backbone pass instead of one per epoch.

With the backbone frozen and no train-time augmentation, the backbone maps
each image to the same 512-d vector in every epoch. `fit_head_on_features`
computes those vectors once for the training and test images, fits the
model's own `head` layer on them, and leaves the full model with the trained
head. No backbone activations are kept for backpropagation, and the head sees
exactly what it would see in the full model (BatchNorm in inference mode).
"""

import numpy as np


def pooled_features(model, dataset, verbose=0):
    """The `pool` layer's outputs for every image of `dataset`, in `paths` order."""
    import keras

    extractor = keras.Model(model.input, model.get_layer("pool").output)
    if hasattr(dataset, "in_order"):
        dataset = dataset.in_order()
    return extractor.predict(dataset, verbose=verbose)


class _FeatureBatches:
    """Shuffled batches of cached features, in the same order as `FlowerDataset`'s."""

    def __init__(self, features, dataset):
        import keras

        outer = self

        class Batches(keras.utils.PyDataset):
            def __len__(self):
                return len(dataset)

            def __getitem__(self, index):
                chosen = dataset.order(outer.epoch)[index * dataset.batch_size:(index + 1) * dataset.batch_size]
                return features[chosen], dataset.labels[chosen]

        self.epoch = 0
        self.batches = Batches()


def fit_head_on_features(model, train_data, test_data=None, epochs=5, optimizer=None, callbacks=(),
                         verbose=1, initial_epoch=0):
    """Fit `model`'s head on cached backbone features.

    Args:
        model: a compiled model from `build_model` whose backbone is frozen.
        train_data: a `FlowerDataset` without augmentation.
        test_data: a `FlowerDataset` evaluated after every epoch.
        epochs: epochs to train (`fit`'s meaning, with `initial_epoch`).
        optimizer: default: a fresh copy of the model's optimizer.
        callbacks: Keras callbacks (they see the head model, and logs with
            `val_*` keys as in a normal `fit`).
        verbose: Keras's progress bar setting.

    Returns:
        The `keras.callbacks.History` of the head's training; its
        `test_features` attribute holds the cached test features (or `None`).
    """
    import keras

    if model.get_layer("backbone").trainable:
        raise ValueError("the feature cache needs a frozen backbone")
    if getattr(train_data, "augment", False):
        raise ValueError("the feature cache can't be used with train-time augmentation")
    if verbose:
        print(f"Caching backbone features of {len(train_data.paths)} training images"
              + (f" and {len(test_data.paths)} test images" if test_data is not None else ""))
    train_features = pooled_features(model, train_data, verbose=verbose)
    validation = None
    if test_data is not None:
        validation = (pooled_features(model, test_data, verbose=verbose), np.asarray(test_data.labels))

    inputs = keras.Input(shape=train_features.shape[1:], name="features")
    head_model = keras.Model(inputs, model.get_layer("head")(inputs), name="head_on_features")
    if optimizer is None:
        optimizer = type(model.optimizer).from_config(model.optimizer.get_config())
    head_model.compile(optimizer=optimizer, loss=model.loss, metrics=["accuracy"])
    batches = _FeatureBatches(train_features, train_data)

    class FollowEpochs(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            batches.epoch = epoch

    history = head_model.fit(batches.batches, validation_data=validation, epochs=epochs,
                             initial_epoch=initial_epoch, shuffle=False, verbose=verbose,
                             callbacks=[FollowEpochs(), *callbacks])
    history.test_features = None if validation is None else validation[0]
    return history
