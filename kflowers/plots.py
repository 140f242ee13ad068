"""Pictures: learning curves, comparisons and confusion matrices, drawn without a display and marked as
kflowers's (`drawn_by_kflowers`), so that a later run replaces only its own."""

import os

import numpy as np

from kflowers.errors import KflowersError
from kflowers.files import atomic_path
from kflowers.files import check_regular


def new_figure(rows=1, cols=1, figsize=(6.4, 4.8), squeeze=True):
    """A matplotlib `Figure` and its axes, made with the object API: no pyplot state, so a notebook's
    backend and open figures are left alone.

    Example:
    ```python
    figure, ax = new_figure(figsize=(4, 3))
    save_figure(figure, "plot.png")
    ```
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    return figure, figure.subplots(rows, cols, squeeze=squeeze)


def _tidy(ax, values=None):
    """Whole-number epochs; a log scale when values span orders of magnitude."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    values = np.asarray([v for v in (values or []) if v is not None and np.isfinite(v)], float)
    if values.size and values.min() > 0 and values.max() / values.min() > 50:
        ax.set_yscale("log")


# The PNG text field that says kflowers drew a picture (`drawn_by_kflowers`).
PICTURE_SOFTWARE = "kflowers"


def save_figure(figure, path):
    """Write `figure` to the PNG `path` atomically, marked as kflowers's (`drawn_by_kflowers`); return `path`."""
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=100, bbox_inches="tight", format="png", metadata={"Software": PICTURE_SOFTWARE})
    return str(path)


def drawn_by_kflowers(path):
    """Whether `path` is a PNG that kflowers drew (its `Software` text field says so)."""
    from PIL import Image

    try:
        check_regular(path, limit=64 << 20)
        with Image.open(path) as image:
            return image.format == "PNG" and image.info.get("Software") == PICTURE_SOFTWARE
    except (OSError, ValueError, SyntaxError):
        return False


def check_picture_replaceable(path):
    """Refuse to write a picture over a file that is not a picture kflowers drew (outside run directories,
    where `--out` may be any folder: `evaluate`, `explain`).

    Raises:
        KflowersError: `path` exists and kflowers did not draw it.
    """
    if os.path.lexists(path) and not drawn_by_kflowers(path):
        raise KflowersError(
            f"{path} exists and is not a picture kflowers drew: move it or choose another --out (kflowers "
            "replaces only its own pictures)"
        )


def plot_history(history, path, title=None):
    """Loss and accuracy per epoch, train against test, side by side.

    Args:
        history: `{metric: [value per epoch]}` with `loss`, `accuracy`,
            `test_loss`, `test_accuracy` (a `keras.callbacks.History.history`
            renamed by `kflowers`), or a list of such rows.
    """
    figure, (ax_loss, ax_acc) = new_figure(1, 2, figsize=(11, 4))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.plot(epochs, history[metric], "o-", label="train")
        if f"test_{metric}" in history:
            ax.plot(epochs, history[f"test_{metric}"], "o-", label="test")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        _tidy(ax, list(history[metric]) + list(history.get(f"test_{metric}", [])) if metric == "loss" else None)
        _mark_sizes(ax, history.get("image_size"))
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


def _mark_sizes(ax, sizes):
    """Progressive resizing: a dotted line where the training side changes, labelled with the new side."""
    if not sizes:
        return
    for epoch in range(1, len(sizes)):
        if sizes[epoch] != sizes[epoch - 1]:
            ax.axvline(epoch + 0.5, color="grey", linestyle=":", linewidth=1)
            ax.annotate(
                f"{sizes[epoch]:g} px", (epoch + 0.5, 1), xycoords=("data", "axes fraction"), fontsize=8, va="top"
            )


def plot_comparison(histories, path):
    """Learning curves of several runs: test accuracy and train/test loss.

    Args:
        histories: `{run name: history dict}`.
    """
    figure, (ax_acc, ax_loss) = new_figure(1, 2, figsize=(12, 4.5))
    for index, (name, history) in enumerate(histories.items()):
        colour = f"C{index}"
        epochs = np.arange(1, len(history["loss"]) + 1)
        ax_acc.plot(epochs, history["test_accuracy"], "o-", color=colour, label=name)
        ax_loss.plot(epochs, history["loss"], "--", color=colour, alpha=0.6)
        ax_loss.plot(epochs, history["test_loss"], "o-", color=colour, label=name)
    ax_acc.set_title("test accuracy")
    ax_loss.set_title("loss (solid: test, dashed: train)")
    _tidy(ax_acc)
    _tidy(ax_loss, [v for h in histories.values() for key in ("loss", "test_loss") for v in h[key]])
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(figure, path)


def plot_confusion(matrix, class_names, path, title="confusion matrix (rows: true class)"):
    """A confusion matrix with counts in the cells."""
    matrix = np.asarray(matrix)
    size = max(4.0, 0.9 * len(class_names) + 2)
    figure, ax = new_figure(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > threshold else "black")
    ax.set_title(title)
    return save_figure(figure, path)
