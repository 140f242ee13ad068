"""Where the model looks, and which photos it gets most wrong.

`grad_cam(model, images)` is Grad-CAM on the backbone's last convolutional
features. For a kflowers classifier the head is a Dense layer on globally
average-pooled features, so the gradient of a class's logit with respect to
the feature map is the same at every position: the head's weight for that
class, divided by the number of positions. Grad-CAM's channel weights are
therefore exactly the head's weights, and the map is
`relu(features @ head_kernel[:, class])` (the class activation map of Zhou et
al., which Grad-CAM reduces to here). No gradient tape is needed, so it runs
the same on every backend. A head of its own that is not linear at inference
(a hidden layer) gets Grad-CAM's channel weights from the backend's autodiff:
the gradient of the class's logit with respect to the pooled features.

`plot_top_losses` draws the test photos with the highest loss (fastai's
`plot_top_losses`); `explain_images` writes one Grad-CAM overlay per photo
(`kflowers explain`).
"""

import os

import numpy as np

from kflowers.models.parts import model_parts
from kflowers.inference.predict import class_names_of
from kflowers.inference.predict import decode_predictions
from kflowers.inference.predict import prepare_images


def grad_cam(model, pixels, class_index=None, normalize=True):
    """Grad-CAM heat maps of a batch, on the backbone's last feature map.

    Args:
        model: a kflowers classifier.
        pixels: `(N, S, S, 3)` images as the model takes them (0-255).
        class_index: the class to explain, an int or one per image; default:
            each image's predicted class.
        normalize: scale each map to 0-1 (its peak at 1); `False` keeps the
            class-evidence units, comparable across images.

    Returns:
        `(heatmaps, logits)`: `(N, h, w)` maps (`h`, `w`: the last feature
        map's size, `S / 32`) and the `(N, classes)` logits.

    Example:
    ```python
    heatmaps, logits = grad_cam(model, prepare_images(["rose.jpg"], model.input_shape[1]))
    ```
    """
    import keras

    parts = model_parts(model)
    images = keras.ops.convert_to_tensor(pixels)
    features = parts.backbone(parts.preprocess(images) if parts.preprocess else images, training=False)
    features = keras.ops.convert_to_numpy(keras.ops.cast(features, "float32"))
    pooled = features.mean(axis=(1, 2))
    logits = keras.ops.convert_to_numpy(parts.apply_head(pooled, training=False)).astype("float32")
    if class_index is None:
        classes = logits.argmax(axis=-1)
    else:
        classes = np.broadcast_to(np.asarray(class_index), (len(features),))
    if parts.linear_head:
        weights = keras.ops.convert_to_numpy(parts.head.kernel).astype("float32")[:, classes].T
    else:
        weights = _logit_gradients(parts, pooled, classes, logits.shape[-1])
    maps = np.maximum(np.einsum("nhwc,nc->nhw", features, weights), 0)
    if not normalize:
        return maps, logits
    peak = maps.reshape(len(maps), -1).max(axis=1)
    maps = maps / np.where(peak > 0, peak, 1)[:, None, None]
    return maps, logits


def _logit_gradients(parts, pooled, classes, num_classes):
    """`(N, C)`: the gradient of each image's class logit with respect to its pooled features, through
    the head's layers (in inference mode), by the backend's autodiff."""
    import keras

    chosen = keras.ops.convert_to_tensor(np.eye(num_classes, dtype="float32")[classes])

    def chosen_logits(x):  # images are independent: the sum's gradient is each image's own
        return keras.ops.sum(keras.ops.cast(parts.apply_head(x, training=False), "float32") * chosen)

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        x = keras.ops.convert_to_tensor(pooled).requires_grad_()
        (gradient,) = torch.autograd.grad(chosen_logits(x), [x])
    elif backend == "jax":
        import jax

        gradient = jax.grad(chosen_logits)(keras.ops.convert_to_tensor(pooled))
    else:
        import tensorflow as tf

        x = tf.constant(pooled)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = chosen_logits(x)
        gradient = tape.gradient(y, x)
    return keras.ops.convert_to_numpy(gradient).astype("float32")


def overlay(pixels, heatmap, alpha=0.45):
    """`heatmap` (0-1, any size) resized to `pixels` and laid over it in the jet colours, as uint8 RGB."""
    import albumentations as A
    from matplotlib import colormaps

    height, width = pixels.shape[:2]
    resized = A.Resize(height, width)(image=heatmap.astype("float32"))["image"]
    colours = colormaps["jet"](np.clip(resized, 0, 1))[..., :3] * 255
    return np.clip((1 - alpha) * pixels + alpha * colours, 0, 255).astype(np.uint8)


def explain_images(model, images, out_dir, top_k=3, class_names=None, labels=None):
    """Write a Grad-CAM picture per photo into `out_dir`; return the written paths.

    Each PNG (`gradcam_figure`) shows the photo at its own resolution beside
    the heat map of its top class laid over it, with a colour bar, the file
    name, the true class when known, and the `top_k` classes with their
    probabilities.

    Args:
        model: a kflowers classifier.
        images: image file paths.
        out_dir: the folder to write `NAME.gradcam.png` files into.
        top_k: classes named in the title.
        class_names: default: the model's.
        labels: the true class name of each image; default: the name of the
            image's folder when it is one of the classes (as in a dataset).
    """
    from kflowers.plots import save_figure

    names = class_names or class_names_of(model)
    targets = []
    for path in images:
        targets.append(_unused_name(out_dir, path, targets))
    check_targets(images, targets)
    written = []
    for index, (path, target) in enumerate(zip(images, targets)):
        label = labels[index] if labels is not None else _folder_class(path, names)
        figure = gradcam_figure(model, path, names, top_k=top_k, label=label)
        written.append(save_figure(figure, target))
    return written


def check_targets(images, targets):
    """Refuse, before any picture is written, a picture that would land on one of the input photos or on
    a file that is not a picture kflowers drew.

    Raises:
        KflowersError: the first such target, named.
    """
    from kflowers.errors import KflowersError
    from kflowers.plots import check_picture_replaceable

    inputs = {os.path.realpath(path) for path in images}
    for target in targets:
        if os.path.realpath(target) in inputs:
            raise KflowersError(
                f"{target} is one of the photos to explain and would be its Grad-CAM picture: choose another --out"
            )
        check_picture_replaceable(target)


MAX_SIDE = 1024  # photos larger than this are shown shrunk to it


def gradcam_figure(model, path, class_names, top_k=3, label=None):
    """The Grad-CAM picture of one photo, as a `matplotlib.figure.Figure` (see `explain_images`)."""
    import albumentations as A
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from kflowers.data.images import read_image
    from kflowers.plots import new_figure

    pixels = prepare_images([path], model.input_shape[1] or 224)
    heatmaps, logits = grad_cam(model, pixels)
    top = decode_predictions(logits, class_names, top_k)[0]
    photo = read_image(path)
    if max(photo.shape[:2]) > MAX_SIDE:
        photo = A.LongestMaxSize(MAX_SIDE)(image=photo)["image"]
    figure, (left, right) = new_figure(1, 2, figsize=(10, 5.2))
    left.imshow(photo)
    left.set_title(os.path.basename(os.fspath(path)) + (f"\ntrue class: {label}" if label else ""), fontsize=10)
    right.imshow(overlay(photo, heatmaps[0]))
    right.set_title("\n".join(f"{name} {p:.2f}" for name, p in top), fontsize=10)
    for ax in (left, right):
        ax.axis("off")
    colours = ScalarMappable(norm=Normalize(0, 1), cmap="jet")
    figure.colorbar(colours, ax=right, fraction=0.046, pad=0.04, label=f"evidence for {top[0][0]} (Grad-CAM)")
    return figure


def _folder_class(path, class_names):
    folder = os.path.basename(os.path.dirname(os.fspath(path)))
    return folder if folder in class_names else None


def _unused_name(out_dir, path, written):
    """`NAME.gradcam.png` for image `path`; two images with the same name (in two folders) get
    `NAME.2.gradcam.png` and so on, so that no picture of this call overwrites another."""
    stem = os.path.splitext(os.path.basename(path))[0]
    candidate, number = os.path.join(out_dir, f"{stem}.gradcam.png"), 1
    while candidate in written:
        number += 1
        candidate = os.path.join(out_dir, f"{stem}.{number}.gradcam.png")
    return candidate


def top_losses(logits, labels, count=9):
    """Indices of the `count` samples with the highest cross-entropy loss, highest first, and their losses."""
    from kflowers.inference.predict import log_softmax

    losses = -log_softmax(logits)[np.arange(len(labels)), np.asarray(labels)]
    order = np.argsort(-losses, kind="stable")[:count]
    return order, losses[order]


def plot_top_losses(paths, labels, logits, class_names, path, count=9, image_size=None):
    """The photos the model gets most wrong: photo, true and predicted class, probability and loss.

    Args:
        paths, labels: the evaluated images and their true labels.
        logits: the model's logits for them.
        class_names: names of the labels.
        path: the PNG to write.
        count: how many photos (a grid of up to 3 columns).
        image_size: show the photos as the model saw them (resized).
    """
    from kflowers.data.images import read_image
    from kflowers.plots import new_figure
    from kflowers.plots import save_figure

    order, losses = top_losses(logits, labels, count)
    answers = decode_predictions(np.asarray(logits)[order], class_names, top_k=1)
    cols = min(3, max(1, len(order)))
    rows = max(1, -(-len(order) // cols))
    figure, axes = new_figure(rows, cols, figsize=(cols * 3.2, rows * 3.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, index, loss, answer in zip(axes.ravel(), order, losses, answers):
        pixels = read_image(paths[index], min_size=image_size)
        if image_size:
            pixels = prepare_images([pixels], image_size)[0]
        predicted, probability = answer[0]
        ax.imshow(pixels)
        ax.set_title(
            f"true {class_names[labels[index]]}\npredicted {predicted} {probability:.2f}\nloss {loss:.2f}", fontsize=9
        )
    figure.suptitle("highest test losses")
    return save_figure(figure, path)
