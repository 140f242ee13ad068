"""`kflowers lr-find`: the learning-rate range test (`kflowers.training.lr_find`) as a run of its own.

The same data, split, model and first-stage compile as `kflowers train` would
use, then a sweep of the learning rate over a few dozen batches, and a plot.

Example:
```python
result = lr_find("flowers", strategy="finetune", weights=None, image_size=64, steps=30, plot_path="lr.png")
result["suggestion"]
```
"""

from kflowers.options import LESSON_DEFAULTS
from kflowers.options import RunOptions
from kflowers.training.lr_find import SWEEP


def lr_find(
    data,
    strategy="finetune",
    weights="default",
    batch_size=RunOptions.batch_size,
    image_size=LESSON_DEFAULTS["image_size"],
    steps=SWEEP["steps"],
    min_lr=SWEEP["min_lr"],
    max_lr=SWEEP["max_lr"],
    seed=0,
    plot_path=None,
    verbose=1,
):
    """Run the range test for `strategy`'s first stage (the lesson's recipe) on the training split of `data`.

    Args:
        data: str or `None`. A folder of class subfolders (`None`: the flowers dataset, downloaded).
        strategy: str. The strategy whose first stage is swept. Defaults to `"finetune"`.
        weights: the backbone's start (`"default"`: the strategy's own).
        batch_size, image_size, seed: as `kflowers train`'s.
        steps, min_lr, max_lr: the sweep (`find_learning_rate`).
        plot_path: str or `None`. Where to draw the loss against the rate.
        verbose: int. Keras's progress bar setting.

    Returns:
        `find_learning_rate`'s dict; writes the plot to `plot_path`.
    """
    import keras

    from kflowers.data.dataset import FlowerDataset
    from kflowers.data.folders import scan_folder
    from kflowers.data.folders import split_dataset
    from kflowers.models.resnet import build_model
    from kflowers.recipes import LESSON
    from kflowers.runs.run import data_root
    from kflowers.training.loop import plan_stages
    from kflowers.training.lr_find import find_learning_rate
    from kflowers.training.strategies import compile_stage
    from kflowers.training.strategies import get_strategy

    strategy = get_strategy(strategy)
    keras.utils.set_random_seed(seed)
    folder = scan_folder(data_root(data))
    train, _ = split_dataset(folder, seed=seed)
    dataset = FlowerDataset.from_folder(train, batch_size=batch_size, image_size=image_size, shuffle=True, seed=seed)
    model = build_model(len(folder.class_names), strategy.weights_for(weights), image_size=image_size)
    first = plan_stages(strategy, cached=False)[0]
    compile_stage(model, strategy, LESSON, first.name, first.end - first.start, len(dataset))
    result = find_learning_rate(model, dataset, steps=steps, min_lr=min_lr, max_lr=max_lr, verbose=verbose)
    if plot_path:
        plot_sweep(result["rates"], result["losses"], result["suggestion"], plot_path)
    return result


def plot_sweep(rates, losses, suggestion, path):
    """Draw the sweep's loss per batch (and smoothed) against the learning rate, the suggestion marked."""
    from kflowers.plots import new_figure
    from kflowers.plots import save_figure
    from kflowers.training.lr_find import smooth

    figure, ax = new_figure(figsize=(7, 4.5))
    ax.plot(rates, losses, alpha=0.35, label="loss per batch")
    ax.plot(rates, smooth(losses, 0.98), label="smoothed")
    ax.axvline(suggestion, color="C3", linestyle="--", label=f"suggestion {suggestion:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(figure, path)
