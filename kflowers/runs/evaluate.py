"""Scoring a model on a dataset, and which images of a folder `kflowers evaluate` scores.

Example:
```python
results = evaluate_model(model, test_ds, folder.class_names)
results["accuracy"], results["per_class"]["rose"]["recall"]
```
"""

import contextlib
import logging
import os

import numpy as np

from kflowers.errors import KflowersError
from kflowers.files import open_regular
from kflowers.inference.predict import log_softmax
from kflowers.inference.predict import softmax
from kflowers.models.parts import model_parts
from kflowers.runs.record import read_run_json

log = logging.getLogger("kflowers")


def _mean_of_views(model, views):
    """Log of the mean probability over `views` (datasets of the same images): logits of the averaged model."""
    probabilities = np.mean([softmax(model.predict(view, verbose=0)) for view in views], axis=0)
    return np.log(np.maximum(probabilities, np.finfo("float64").tiny))


# Test-time augmentation: the views of each test image whose probabilities are averaged (`test_views`).
TTA_VIEWS = ("flip", "multi-crop")


def test_views(dataset, tta):
    """The views of a `FlowerDataset`'s images that `tta` scores, in order.

    `False`: the images. `True` or `"flip"`: the images and their mirror
    images. `"multi-crop"`: each of those, also moved by 1/16 of the side
    left, right, up and down (10 views, as the ten crops of AlexNet's
    evaluation, without the margin a crop needs).

    Example:
    ```python
    len(test_views(test_ds, "multi-crop"))  # 10
    ```
    """
    if not tta:
        return [dataset.in_order()]
    if tta is True or tta == "flip":
        return [dataset.in_order(), dataset.mirrored()]
    if tta != "multi-crop":
        raise ValueError(f"unknown test-time augmentation {tta!r}; choose from False, {', '.join(TTA_VIEWS)}")
    step = max(1, dataset.image_size // 16)
    views = []
    for dx, dy in ((0, 0), (step, 0), (-step, 0), (0, step), (0, -step)):
        view = dataset.shifted(dx, dy)
        views += [view, view.mirrored()]
    return views


def evaluate_model(model, dataset, class_names, features=None, tta=False):
    """Accuracy, loss, per-class precision/recall/F1 and the confusion matrix.

    `features`: the `pool` outputs of `dataset`'s images, when already known
    (the feature cache): then only the head runs. `tta`: score each image as
    the mean of the probabilities of its views (`test_views`: `True` or
    `"flip"`, the image and its mirror image; `"multi-crop"`, ten views; a
    `FlowerDataset`; the whole model runs, whatever `features` says).

    Returns:
        `{"accuracy", "loss", "per_class": {name: {precision, recall, f1, support}},
        "confusion": [[...]], "predictions", "labels"}`.
    """
    from sklearn.metrics import classification_report
    from sklearn.metrics import confusion_matrix

    if tta:
        logits = _mean_of_views(model, test_views(dataset, tta))
    elif features is not None:
        import keras

        parts = model_parts(model)
        logits = np.concatenate(
            [
                keras.ops.convert_to_numpy(parts.apply_head(features[i : i + 1024], training=False))
                for i in range(0, len(features), 1024)
            ]
        )
    else:
        if hasattr(dataset, "in_order"):
            dataset = dataset.in_order()
        logits = model.predict(dataset, verbose=0)
    predictions = np.argmax(logits, axis=-1)
    labels = np.asarray(dataset.labels)
    loss = float(-np.mean(log_softmax(logits)[np.arange(len(labels)), labels])) if len(labels) else None
    indices = list(range(len(class_names)))
    report = classification_report(
        labels, predictions, labels=indices, target_names=class_names, output_dict=True, zero_division=0
    )
    per_class = {
        name: {
            "precision": report[name]["precision"],
            "recall": report[name]["recall"],
            "f1": report[name]["f1-score"],
            "support": int(report[name]["support"]),
        }
        for name in class_names
    }
    return {
        "accuracy": float(np.mean(predictions == labels)),
        "loss": loss,
        "per_class": per_class,
        "confusion": confusion_matrix(labels, predictions, labels=indices).tolist(),
        "predictions": predictions,
        "labels": labels,
        "logits": logits,
    }


class RunSplit:
    """Which images `kflowers evaluate` scores, and which of them the model trained on (see `run_split`)."""

    def __init__(self, side, data, chosen=None, train=None, train_root=None, test=None):
        self.side, self.data, self.chosen, self.train, self.train_root = side, data, chosen, train, train_root
        self.test = test

    def keep(self, path):
        name = os.path.relpath(path, self.data)
        if self.side == "unseen":
            return name not in (self.train or ())
        return self.chosen is None or name in self.chosen

    def describe(self):
        if self.side == "unseen":
            return f"every image in {self.data} the model did not train on"
        return f"every image in {self.data}" if self.chosen is None else f"the run's {self.side} split"

    def missing(self, paths):
        """How many images of the chosen side are not among `paths` (not in the data folder given). By default
        (`"unseen"`) the run's test images count, when the folder is the run's (holds any of its images)."""
        names = {os.path.relpath(p, self.data) for p in paths}
        if self.side == "unseen":
            ours = (self.train or set()) | (self.test or set())
            return len(self.test - names) if self.test and names & ours else 0
        return 0 if self.chosen is None else len(self.chosen - names)

    def trained_on(self, paths):
        """How many of `paths` the model trained on: the same file (by path in the data folder) or the
        same bytes (by SHA-256 against the run's training images, where they can be read)."""
        if not self.train:
            return 0
        same_path = {p for p in paths if os.path.relpath(p, self.data) in self.train}
        digests = set()
        for name in self.train if self.train_root and os.path.isdir(self.train_root) else ():
            with contextlib.suppress(OSError):
                digests.add(_sha256(os.path.join(self.train_root, name)))
        same_bytes = set()
        for path in paths:
            if path not in same_path and digests:
                with contextlib.suppress(OSError):
                    if _sha256(path) in digests:
                        same_bytes.add(path)
        return len(same_path) + len(same_bytes)


def _sha256(path):
    """The SHA-256 of a regular file's first 64 MiB (a FIFO or a device is refused: `open_regular`)."""
    import hashlib

    with open_regular(path, limit=None) as f:
        return hashlib.sha256(f.read(64 << 20)).hexdigest()


def run_split(run_dir, data, paths, side=None):
    """The images of `paths` (found under `data`) that `kflowers evaluate --split side` scores.

    Reads `split.json` and `config.json` in `run_dir` (the model's folder):
    `side` is `"test"`, `"train"`, `"all"`, or `None` (the default):
    `"unseen"`, every image the model did not train on: the run's test side
    on its own data, all of a folder of new photos. Images are matched by
    their path inside the data folder, however `--data` is spelt.

    Raises:
        KflowersError: `side` is test or train and there is no readable split.json.
    """
    split = read_run_json(os.path.join(run_dir, "split.json"))
    config = read_run_json(os.path.join(run_dir, "config.json")) or {}
    valid = isinstance(split, dict) and all(isinstance(split.get(k), list) for k in ("train", "test"))
    if not valid:
        if side in ("test", "train"):
            raise KflowersError(
                f"--split {side}: no readable split.json beside the model (in {run_dir}); use --split all"
            )
        return RunSplit("all", data)
    run_data = config.get("data") if isinstance(config, dict) and isinstance(config.get("data"), str) else None

    def relative(names):
        return {os.path.relpath(str(p), run_data) if run_data else str(p) for p in names}

    side = side or "unseen"
    train, test = relative(split["train"]), relative(split["test"])
    chosen = None if side in ("all", "unseen") else test if side == "test" else train
    return RunSplit(side, data, chosen, train, run_data, test)


def evaluate_folder(model_path, data, side=None, image_size=None, out=None):
    """Score the model in `model_path` on the images of `data` (class subfolders): `kflowers evaluate`.

    Labels are matched by class name; which images are scored is `run_split`'s
    choice (by default every image the model did not train on).

    Args:
        model_path: a kflowers `.keras` file (its run directory's `split.json`
            says what it trained on, when it is beside it).
        data: a folder of class subfolders.
        side: `"test"`, `"train"`, `"all"` or `None` (`run_split`).
        image_size: must be the model's input size, when it has one.
        out: a folder to draw `confusion.png` into (never over a user's file).

    Returns:
        A dict: `accuracy`, `split`, `images`, `missing`, `left_out_as_training`,
        `trained_on`, `per_class`, `confusion`, `classes`, `description`,
        `confusion_png` (its path, or `None`).

    Raises:
        KflowersError: the data's classes are not the model's, or no image is left to score.
    """
    from kflowers.data.dataset import FlowerDataset
    from kflowers.data.folders import scan_folder
    from kflowers.models.saving import load_model
    from kflowers.plots import check_picture_replaceable
    from kflowers.plots import plot_confusion

    if out:  # never over a user's file (checked before the work)
        check_picture_replaceable(os.path.join(out, "confusion.png"))
    model = load_model(model_path)
    folder = scan_folder(data)
    _check_classes(model, folder, image_size)
    chosen = run_split(os.path.dirname(os.path.abspath(model_path)), data, folder.paths, side)
    keep = _chosen_images(chosen, folder, data)
    to_model = [model.class_names.index(name) for name in folder.class_names]  # labels by name
    paths = [folder.paths[i] for i in keep]
    labels = [to_model[folder.labels[i]] for i in keep]
    size = image_size or model.input_shape[1] or 224
    results = evaluate_model(model, FlowerDataset(paths, labels, batch_size=128, image_size=size), model.class_names)
    confusion_png = None
    if out:  # never into the model's run directory unless asked to
        confusion_png = plot_confusion(results["confusion"], model.class_names, os.path.join(out, "confusion.png"))
    return {
        "accuracy": results["accuracy"],
        "split": chosen.side,
        "images": len(paths),
        "missing": chosen.missing(folder.paths),
        "left_out_as_training": len(folder.paths) - len(keep) if chosen.side == "unseen" else 0,
        "trained_on": chosen.trained_on(paths),
        "per_class": results["per_class"],
        "confusion": results["confusion"],
        "classes": model.class_names,
        "description": chosen.describe(),
        "confusion_png": confusion_png,
    }


def _check_classes(model, folder, image_size):
    unknown = [name for name in folder.class_names if name not in model.class_names]
    if unknown:
        raise KflowersError(
            f"the model was trained on {', '.join(model.class_names)}; the data has other classes: {', '.join(unknown)}"
        )
    fixed = model.input_shape[1]
    if image_size and fixed and image_size != fixed:
        raise KflowersError(f"--image-size {image_size}: the model takes {fixed} px images; leave --image-size out")


def _chosen_images(chosen, folder, data):
    """The indices of `folder`'s images that `chosen` (a `RunSplit`) scores; the run's missing ones said."""
    keep = [i for i, path in enumerate(folder.paths) if chosen.keep(path)]
    missing = chosen.missing(folder.paths)
    if missing:
        log.warning(
            "%d of the run's %d %s images are not in %s: scoring the %d found",
            missing,
            len(keep) + missing,
            chosen.side,
            data,
            len(keep),
        )
    if not keep and chosen.side == "unseen":
        raise KflowersError(f"the model trained on every image in {data}; --split train scores them anyway")
    if not keep:
        raise KflowersError(f"none of the images in {data} is on the run's {chosen.side} side")
    return keep
