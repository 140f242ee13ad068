"""A learning-rate range test, after fastai's `lr_find`.

Train for a few dozen batches while the learning rate grows exponentially
from `min_lr` to `max_lr`, record each batch's loss, stop once the loss
explodes, and suggest the rate where the smoothed loss falls fastest. The
model's weights are put back afterwards.
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
        out.append(average / (1 - beta ** i))
    return np.asarray(out)


def lr_find(data, strategy="finetune", weights="default", batch_size=64, image_size=224, steps=100,
            min_lr=1e-7, max_lr=10.0, seed=0, plot_path=None):
    """Run the range test on the training split of `data`.

    Returns:
        `{"rates", "losses", "suggestion"}`; writes the plot to `plot_path`.
    """
    import keras

    from kflowers.data import FlowerDataset
    from kflowers.data import scan_folder
    from kflowers.data import split_dataset
    from kflowers.model import build_model
    from kflowers.strategies import compile_for
    from kflowers.strategies import get_strategy

    strategy = get_strategy(strategy)
    keras.utils.set_random_seed(seed)
    folder = scan_folder(data)
    train, _ = split_dataset(folder, seed=seed)
    dataset = FlowerDataset.from_folder(train, batch_size=batch_size, image_size=image_size,
                                        shuffle=True, seed=seed)
    model = build_model(len(folder.class_names), strategy.weights if weights == "default" else weights,
                        image_size=image_size)
    compile_for(model, strategy)
    optimizers = getattr(model.optimizer, "optimizers", None) or [model.optimizer]
    rates = np.geomspace(min_lr, max_lr, steps)
    tried, losses = [], []
    best = np.inf
    step = 0
    while step < steps:
        for index in range(len(dataset)):
            if step >= steps:
                break
            for optimizer in optimizers:
                optimizer.learning_rate = rates[step]
            images, labels = dataset[index]
            loss = float(model.train_on_batch(images, labels, return_dict=True)["loss"])
            tried.append(float(rates[step]))
            losses.append(loss)
            step += 1
            best = min(best, loss)
            if not np.isfinite(loss) or loss > 4 * best:
                step = steps
                break
        dataset.on_epoch_end()
    suggestion = suggest_learning_rate(tried, losses)
    if plot_path:
        _plot(tried, losses, suggestion, plot_path)
    return {"rates": tried, "losses": losses, "suggestion": suggestion}


def _plot(rates, losses, suggestion, path):
    from kflowers.reports import _pyplot
    from kflowers.reports import _save

    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(rates, losses, alpha=0.35, label="loss per batch")
    ax.plot(rates, _smooth(losses, 0.98), label="smoothed")
    ax.axvline(suggestion, color="C3", linestyle="--", label=f"suggestion {suggestion:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(figure, path)
