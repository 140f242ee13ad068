"""A learning-rate range test, after fastai's `lr_find`.

Train for a few dozen batches while the learning rate grows exponentially
from `min_lr` to `max_lr`, record each batch's loss, stop once the loss
explodes, and suggest the rate where the smoothed loss falls fastest. The
model's weights and optimizer state are put back afterwards.

`kflowers lr-find` runs it on a folder: `kflowers.runs.lr_find`.
"""

import numpy as np

# The sweep's defaults: training steps, and the first and last learning rate.
SWEEP = {"steps": 100, "min_lr": 1e-7, "max_lr": 10.0}


def suggest_learning_rate(rates, losses, smoothing=0.98):
    """The learning rate at the steepest descent of the smoothed loss curve."""
    rates, losses = np.asarray(rates, float), np.asarray(losses, float)
    smoothed = smooth(losses, smoothing)
    if len(rates) < 3:
        return float(rates[np.argmin(smoothed)])
    slopes = np.gradient(smoothed, np.log10(rates))
    # Only before the minimum: past it the loss is already diverging.
    stop = max(int(np.argmin(smoothed)), 2)
    return float(rates[int(np.argmin(slopes[:stop]))])


def smooth(values, beta=0.98):
    """`values` smoothed by an exponential moving average of momentum `beta`, bias-corrected."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = beta * average + (1 - beta) * value
        out.append(average / (1 - beta**i))
    return np.asarray(out)


def find_learning_rate(model, dataset, steps=SWEEP["steps"], min_lr=SWEEP["min_lr"], max_lr=SWEEP["max_lr"], verbose=1):
    """The range test on a compiled `model`; the model is left as it was found.

    The learning rate grows exponentially from `min_lr` to `max_lr` over
    `steps` batches of `dataset`. With several optimizers (a
    `MultiOptimizer`, as the discriminative strategy compiles), the swept
    rate is the last optimizer's (the head's) and the others keep their
    ratio to it. Afterwards the model's weights, the optimizer's variables
    and its learning rates are put back.

    Returns:
        `{"rates", "losses", "suggestion", "at_bound", "stopped_early"}`:
        `at_bound` is true when the suggestion is among the first or last
        few rates tried (5% of the sweep, at least 2), a sign to widen the
        sweep; `stopped_early` is `None`, or why the sweep stopped before
        `steps` (the loss diverged).

    Raises:
        ValueError: `min_lr` is not below `max_lr`.
    """
    if not min_lr < max_lr:
        raise ValueError(f"the sweep goes up: min_lr ({min_lr:g}) must be below max_lr ({max_lr:g})")
    import keras

    optimizers = getattr(model.optimizer, "optimizers", None) or [model.optimizer]
    model.optimizer.build(model.trainable_variables)
    start_rates = [float(keras.ops.convert_to_numpy(o.learning_rate)) for o in optimizers]
    ratios = [rate / start_rates[-1] for rate in start_rates]
    weights = model.get_weights()
    optimizer_state = [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]
    rates = np.geomspace(min_lr, max_lr, steps)
    progress = keras.utils.Progbar(steps, verbose=verbose, unit_name="batch")
    tried, losses, best = [], [], np.inf

    def batches():
        while True:
            for index in range(len(dataset)):
                yield dataset[index]
            dataset.on_epoch_end()

    try:
        for rate, (images, labels) in zip(rates, batches()):
            for optimizer, ratio in zip(optimizers, ratios):
                optimizer.learning_rate = rate * ratio
            loss = float(model.train_on_batch(images, labels, return_dict=True)["loss"])
            tried.append(float(rate))
            losses.append(loss)
            progress.update(len(tried), [("loss", loss)])
            best = min(best, loss)
            if not np.isfinite(loss) or loss > 4 * best:
                break
    finally:
        model.set_weights(weights)
        for variable, value in zip(model.optimizer.variables, optimizer_state):
            variable.assign(value)
        for optimizer, rate in zip(optimizers, start_rates):
            optimizer.learning_rate = rate
    finite = [(rate, loss) for rate, loss in zip(tried, losses) if np.isfinite(loss)] or [(tried[0], 0.0)]
    suggestion = suggest_learning_rate(*zip(*finite))
    edge = max(2, len(tried) // 20)
    index = tried.index(suggestion)
    stopped = None
    if len(tried) < steps:
        stopped = f"the loss diverged at learning rate {tried[-1]:.2e} ({losses[-1]:.4g}, best {best:.4g})"
    return {
        "rates": tried,
        "losses": losses,
        "suggestion": suggestion,
        "at_bound": index < edge or index >= len(tried) - edge,
        "stopped_early": stopped,
    }
