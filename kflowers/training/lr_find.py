"""A learning-rate range test, after fastai's `lr_find`.

Train for a few dozen batches while the learning rate grows exponentially
from `min_lr` to `max_lr`, record each batch's loss, stop once the loss
explodes, and suggest the rate where the smoothed loss falls fastest. The
model's weights and optimizer state are put back afterwards.
"""

import numpy as np


def suggest_learning_rate(rates, losses, smoothing=0.98):
    """The learning rate at the steepest descent of the smoothed loss curve."""
    rates, losses = np.asarray(rates, float), np.asarray(losses, float)
    smoothed = _smooth(losses, smoothing)
    if len(rates) < 3:
        return float(rates[np.argmin(smoothed)])
    slopes = np.gradient(smoothed, np.log10(rates))
    # Only before the minimum: past it the loss is already diverging.
    stop = max(int(np.argmin(smoothed)), 2)
    return float(rates[int(np.argmin(slopes[:stop]))])


def _smooth(values, beta):
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = beta * average + (1 - beta) * value
        out.append(average / (1 - beta**i))
    return np.asarray(out)


def find_learning_rate(model, dataset, steps=100, min_lr=1e-7, max_lr=10.0, verbose=1):
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


def lr_find(
    data,
    strategy="finetune",
    weights="default",
    batch_size=64,
    image_size=224,
    steps=100,
    min_lr=1e-7,
    max_lr=10.0,
    seed=0,
    plot_path=None,
    verbose=1,
):
    """Run the range test for `strategy` on the training split of `data`.

    Returns:
        `find_learning_rate`'s dict; writes the plot to `plot_path`.
    """
    import keras

    from kflowers.data.dataset import FlowerDataset
    from kflowers.data.folders import scan_folder
    from kflowers.data.folders import split_dataset
    from kflowers.models.resnet import build_model
    from kflowers.training.strategies import compile_for
    from kflowers.training.strategies import get_strategy

    strategy = get_strategy(strategy)
    keras.utils.set_random_seed(seed)
    folder = scan_folder(data)
    train, _ = split_dataset(folder, seed=seed)
    dataset = FlowerDataset.from_folder(train, batch_size=batch_size, image_size=image_size, shuffle=True, seed=seed)
    model = build_model(len(folder.class_names), strategy.weights_for(weights), image_size=image_size)
    compile_for(model, strategy)
    result = find_learning_rate(model, dataset, steps=steps, min_lr=min_lr, max_lr=max_lr, verbose=verbose)
    if plot_path:
        _plot(result["rates"], result["losses"], result["suggestion"], plot_path)
    return result


def _plot(rates, losses, suggestion, path):
    from kflowers.plots import new_figure
    from kflowers.plots import save_figure

    figure, ax = new_figure(figsize=(7, 4.5))
    ax.plot(rates, losses, alpha=0.35, label="loss per batch")
    ax.plot(rates, _smooth(losses, 0.98), label="smoothed")
    ax.axvline(suggestion, color="C3", linestyle="--", label=f"suggestion {suggestion:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(figure, path)
