"""The lesson's grid of sample photos: a first look at a dataset (`kflowers show`)."""

import numpy as np

from kflowers.data.images import read_image
from kflowers.plots import new_figure
from kflowers.plots import save_figure


def plot_samples(folder, path, rows=3, cols=5, seed=0, image_size=None):
    """The lesson's grid of random images titled with their class.

    Args:
        folder: an `ImageFolder`.
        path: the PNG file to write.
        rows, cols: grid shape (3x5 as in the lesson).
        seed: which images are drawn.
        image_size: show images resized as the model sees them; `None`
            shows them as they are on disk.
    """
    rng = np.random.default_rng(seed)
    count = min(rows * cols, len(folder))
    chosen = rng.choice(len(folder), size=count, replace=False)
    figure, axes = new_figure(rows, cols, figsize=(cols * 2.4, rows * 2.6))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, index in zip(np.ravel(axes), chosen):
        pixels = read_image(folder.paths[index], min_size=image_size)
        if image_size:
            import albumentations as A

            pixels = A.Resize(image_size, image_size)(image=pixels)["image"]
        ax.imshow(pixels)
        ax.set_title(folder.class_names[folder.labels[index]])
    return save_figure(figure, path)
