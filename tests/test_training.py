"""Freezing, unfreezing mid-fit, and discriminative learning rates: which
weights must stay fixed and which must move."""

import keras
import numpy as np
import pytest

import kflowers
from kflowers.callbacks import UnfreezeBackbone
from kflowers.strategies import classification_loss
from kflowers.strategies import discriminative_optimizer

SIZE = 32


def snapshot(layer):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in layer.variables]


def data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, SIZE, SIZE, 3)).astype("uint8"), rng.integers(0, 5, n).astype("int32")


def test_frozen_fit_keeps_every_backbone_variable_and_moves_the_head():
    keras.utils.set_random_seed(0)
    model = kflowers.build_model(weights=None, image_size=SIZE)
    backbone = model.get_layer("backbone")
    backbone.trainable = False
    model.compile(keras.optimizers.SGD(1e-2), classification_loss(), metrics=["accuracy"])
    before, head_before = snapshot(backbone), snapshot(model.get_layer("head"))
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    after = snapshot(backbone)
    names = [v.path for v in backbone.variables]
    assert any("moving_mean" in n for n in names) and any("moving_variance" in n for n in names)
    for name, a, b in zip(names, before, after):
        np.testing.assert_array_equal(a, b, err_msg=f"{name} changed in a frozen fit")
    for a, b in zip(head_before, snapshot(model.get_layer("head"))):
        assert not np.array_equal(a, b)


class Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.backbone, self.rates = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.backbone.append(snapshot(self.model.get_layer("backbone")))
        self.rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))


def test_unfreeze_backbone_in_one_fit():
    keras.utils.set_random_seed(0)
    model = kflowers.build_model(weights=None, image_size=SIZE)
    model.get_layer("backbone").trainable = False
    model.compile(keras.optimizers.SGD(1e-2), classification_loss(), metrics=["accuracy"])
    start = snapshot(model.get_layer("backbone"))
    recorder = Recorder()
    x, y = data()
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=4,
        verbose=0,
        callbacks=[UnfreezeBackbone(epoch=2, learning_rate=1e-4, verbose=0), recorder],
    )
    for epoch in (0, 1):  # frozen: weights and BatchNorm statistics fixed
        for a, b in zip(start, recorder.backbone[epoch]):
            np.testing.assert_array_equal(a, b)
    for earlier, later in [(start, recorder.backbone[2]), (recorder.backbone[2], recorder.backbone[3])]:
        moved = [not np.array_equal(a, b) for a, b in zip(earlier, later)]
        assert all(moved), f"{moved.count(False)} backbone variables did not move after unfreezing"
    assert recorder.rates == pytest.approx([1e-2, 1e-2, 1e-4, 1e-4])
    assert model.get_layer("backbone").trainable
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 4 * 2


def test_unfreeze_keeps_the_optimizer_kind_and_settings():
    model = kflowers.build_model(weights=None, image_size=SIZE)
    model.get_layer("backbone").trainable = False
    model.compile(keras.optimizers.SGD(1e-2, momentum=0.9, nesterov=True), classification_loss())
    x, y = data(8)
    model.fit(
        x, y, batch_size=8, epochs=2, verbose=0, callbacks=[UnfreezeBackbone(epoch=1, learning_rate=1e-3, verbose=0)]
    )
    config = model.optimizer.get_config()
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert config["momentum"] == 0.9 and config["nesterov"] and config["learning_rate"] == pytest.approx(1e-3)


def one_step_deltas(optimizer_for):
    """Variable changes after one identical SGD step, backbone and head."""
    keras.utils.set_random_seed(0)
    model = kflowers.build_model(weights=None, image_size=SIZE)
    model.compile(optimizer_for(model), classification_loss())
    backbone, head = model.get_layer("backbone"), model.get_layer("head")
    trainable_bb = [v for v in backbone.trainable_variables]
    before_bb = [np.array(keras.ops.convert_to_numpy(v)) for v in trainable_bb]
    before_head = snapshot(head)
    x, y = data(8)
    model.train_on_batch(x, y)
    d_bb = [keras.ops.convert_to_numpy(v) - b for v, b in zip(trainable_bb, before_bb)]
    d_head = [a - b for a, b in zip(snapshot(head), before_head)]
    return d_bb, d_head


def test_discriminative_learning_rates():
    plain_bb, plain_head = one_step_deltas(lambda m: keras.optimizers.SGD(1.0))
    multi_bb, multi_head = one_step_deltas(
        lambda m: discriminative_optimizer(m, backbone_learning_rate=1e-4, head_learning_rate=1e-3, optimizer="sgd")
    )

    # Same model, same batch, same gradients: each delta is its own rate times
    # the lr=1 delta (fitted per variable; rounding of w - lr*g is ~1e-7 of w,
    # up to 1e-3 of the delta for variables with tiny gradients).
    def rate(multi, plain):
        return float(np.sum(multi * plain) / np.sum(plain * plain))

    assert [rate(m, p) for m, p in zip(multi_bb, plain_bb)] == pytest.approx([1e-4] * len(plain_bb), rel=1e-2)
    assert [rate(m, p) for m, p in zip(multi_head, plain_head)] == pytest.approx([1e-3, 1e-3], rel=1e-2)


def test_discriminative_optimizer_survives_save_and_load(tmp_path):
    model = kflowers.build_model(weights=None, image_size=SIZE)
    model.compile(discriminative_optimizer(model), classification_loss())
    x, y = data(8)
    model.train_on_batch(x, y)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    assert isinstance(loaded.optimizer, keras.optimizers.MultiOptimizer)


def test_strategies_compile_as_the_lesson_says():
    model = kflowers.build_model(weights=None, image_size=SIZE)
    callbacks = kflowers.compile_for(model, "two-stage")
    assert not model.get_layer("backbone").trainable
    assert [type(c).__name__ for c in callbacks] == ["UnfreezeBackbone"]
    assert callbacks[0].epoch == 5 and callbacks[0].learning_rate == 1e-4
    assert kflowers.compile_for(model, "frozen") == []
    assert not model.get_layer("backbone").trainable
    kflowers.compile_for(model, "finetune")
    assert model.get_layer("backbone").trainable
    kflowers.compile_for(model, "discriminative")
    assert isinstance(model.optimizer, keras.optimizers.MultiOptimizer)
    with pytest.raises(ValueError, match="unknown strategy"):
        kflowers.compile_for(model, "magic")


def test_lr_find_keeps_the_discriminative_ratio_and_leaves_the_model_as_found():
    from kflowers.lr_find import find_learning_rate
    from kflowers.strategies import compile_for

    keras.utils.set_random_seed(0)
    model = kflowers.build_model(weights=None, image_size=SIZE)
    compile_for(model, "discriminative")  # backbone 1e-4, head 1e-3
    seen = []

    class Dataset:
        images, labels = data(16)

        def __len__(self):
            return 2

        def __getitem__(self, index):
            backbone_opt, head_opt = model.optimizer.optimizers
            seen.append(
                (
                    float(keras.ops.convert_to_numpy(backbone_opt.learning_rate)),
                    float(keras.ops.convert_to_numpy(head_opt.learning_rate)),
                )
            )
            return self.images[index * 8 : (index + 1) * 8], self.labels[index * 8 : (index + 1) * 8]

        def on_epoch_end(self):
            pass

    weights = model.get_weights()
    result = find_learning_rate(model, Dataset(), steps=5, min_lr=1e-5, max_lr=1e-3, verbose=0)
    assert result["rates"] == pytest.approx(list(np.geomspace(1e-5, 1e-3, 5)))
    # The rates were set before each batch was read for the next step: compare from the second on.
    for (backbone_rate, head_rate), rate in zip(seen[1:], result["rates"][:-1]):
        assert head_rate == pytest.approx(rate) and backbone_rate == pytest.approx(rate / 10)
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    rates = [float(keras.ops.convert_to_numpy(o.learning_rate)) for o in model.optimizer.optimizers]
    assert rates == pytest.approx([1e-4, 1e-3])
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0


class Crash(Exception):
    pass


class CrashAt(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at, self.epoch = (epoch, batch), None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise Crash


@pytest.mark.parametrize("crash_epoch", [0, 2], ids=["before the switch", "after the switch"])
def test_unfreeze_with_keras_backup_and_adam_resumes_exactly(tmp_path, crash_epoch):
    if keras.backend.backend() == "jax":
        pytest.skip(
            "jax's optimizers update exactly the variables they were built for: the moments "
            "restart at the switch (documented in UnfreezeBackbone)"
        )
    x, y = data(16)

    def fit(backup, *extra):
        keras.utils.set_random_seed(0)
        model = kflowers.build_model(weights=None, image_size=SIZE)
        kflowers.model_parts(model).backbone.trainable = False
        model.compile(keras.optimizers.Adam(1e-3), classification_loss())
        callbacks = [
            keras.callbacks.BackupAndRestore(str(backup)),
            UnfreezeBackbone(epoch=1, learning_rate=1e-4, verbose=0),
            *extra,
        ]
        model.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0, callbacks=callbacks)
        return model

    straight = fit(tmp_path / "straight")
    with pytest.raises(Crash):
        fit(tmp_path / "crashed", CrashAt(crash_epoch, 1))
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*Skipping variable loading.*")
        resumed = fit(tmp_path / "crashed")
    assert int(keras.ops.convert_to_numpy(resumed.optimizer.iterations)) == 4 * 2
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(straight.optimizer.variables, resumed.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
