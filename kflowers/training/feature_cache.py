"""Frozen training on cached features: one backbone pass instead of one per epoch.

With the backbone frozen and no train-time augmentation, the backbone maps
each image to the same 512-d vector in every epoch. `FeatureCache` computes
those vectors once for the training and test images and serves them in the
batches the images would have come in; the model's own head layers train on
them (`head_model`), so the full model ends with the trained head. No
backbone activations are kept for backpropagation, and the head sees
exactly what it would see in the full model (BatchNorm in inference mode).
"""

import time

import numpy as np

from kflowers.models.parts import model_parts


def pooled_features(model, dataset, verbose=0):
    """The pooled features of every image of `dataset`, in `paths` order."""
    import keras

    parts = model_parts(model)
    extractor = keras.Model(model.input, parts.features)
    if hasattr(dataset, "in_order"):
        dataset = dataset.unsharded().in_order()
    return extractor.predict(dataset, verbose=verbose)


class FeatureCache:
    """A model's pooled features of a `FlowerDataset`'s images, computed once.

    Args:
        model: a model from `build_model` whose backbone is frozen.
        train_data: a `FlowerDataset` without augmentation (sharded or not).
        test_data: an optional `FlowerDataset`.
        verbose: Keras's progress bar setting for the feature pass.

    Attributes:
        head_model: a `keras.Model` from features to logits made of the
            model's own head layers (training it trains the model's head).
        batches: a `keras.utils.PyDataset` of `(features, labels)` batches,
            the same samples in the same order as `train_data`'s batches in
            the epoch `fit` is in (`follow_epochs` keeps it there).
        validation: `(test features, test labels)` or `None`.
        seconds: how long the feature pass took.
    """

    def __init__(self, model, train_data, test_data=None, verbose=0):
        import keras

        parts = model_parts(model)
        if parts.backbone.trainable:
            raise ValueError("the feature cache needs a frozen backbone")
        if getattr(train_data, "augment", False):
            raise ValueError("the feature cache needs a FlowerDataset without augmentation")
        if verbose:
            print(
                f"Caching backbone features of {len(train_data.paths)} training images"
                + (f" and {len(test_data.paths)} test images" if test_data is not None else "")
            )
        started = time.perf_counter()
        features = pooled_features(model, train_data, verbose=verbose)
        self.validation = None
        if test_data is not None:
            self.validation = (pooled_features(model, test_data, verbose=verbose), np.asarray(test_data.labels))
        self.seconds = time.perf_counter() - started  # the feature pass
        inputs = keras.Input(shape=features.shape[1:], name="features")
        self.head_model = keras.Model(inputs, parts.apply_head(inputs), name="head_on_features")
        self.epoch = 0
        cache = self

        class Batches(keras.utils.PyDataset):
            def __len__(self):
                return len(train_data)

            def __getitem__(self, index):
                chosen = train_data.batch_indices(index, cache.epoch)
                return features[chosen], train_data.labels[chosen]

        class FollowEpochs(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                cache.epoch = epoch

        self.batches = Batches()
        self.follow_epochs = FollowEpochs()

    def fit(self, initial_epoch, epochs, callbacks=(), verbose=1):
        """Train the head on the cached features (`head_model.fit`), epochs `initial_epoch..epochs`.

        Callbacks that write model files (`BackupAndRestore`, `ModelCheckpoint`)
        are left out: here they would save the head alone.
        """
        import keras

        file_writers = (keras.callbacks.BackupAndRestore, keras.callbacks.ModelCheckpoint)
        self.head_model.fit(
            self.batches,
            validation_data=self.validation,
            initial_epoch=initial_epoch,
            epochs=epochs,
            shuffle=False,
            verbose=verbose,
            callbacks=[self.follow_epochs, *[c for c in callbacks if not isinstance(c, file_writers)]],
        )

    @property
    def test_features(self):
        return None if self.validation is None else self.validation[0]
