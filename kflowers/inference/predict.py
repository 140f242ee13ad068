"""Asking a trained classifier "what flower is this?" from Python.

`predict_images(model, images)` takes photos as files, PIL images or arrays
of any size, prepares them exactly as training did (decoded by
`kflowers.data.images.read_image`, resized by albumentations to the model's input
size, kept as 0-255 pixels) and returns the top classes with their
probabilities, the way keras-hub's `decode_imagenet_predictions` does.
"""

import logging
import os

import numpy as np

from kflowers.data.images import read_image

log = logging.getLogger("kflowers")

_warned = set()


def prepare_images(images, image_size):
    """Photos as one `(N, image_size, image_size, 3)` uint8 batch, as the model saw them in training.

    Args:
        images: one image or a list of them: file paths, PIL images, or
            `(H, W, 3)` / `(H, W)` arrays of 0-255 pixels, any size.
        image_size: the side of the model's input.

    Raises:
        UnreadableImage: a file can't be decoded (the message says why).
    """
    import albumentations as A

    if isinstance(images, (str, os.PathLike, np.ndarray)) and np.ndim(images) <= 3 or _is_pil(images):
        images = [images]
    resize = A.Compose([A.Resize(image_size, image_size)])
    batch = []
    for image in images:
        if isinstance(image, (str, os.PathLike)):
            pixels = read_image(image, min_size=image_size)
        elif _is_pil(image):
            from PIL import ImageOps

            pixels = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        else:
            pixels = _as_uint8(np.asarray(image))
        batch.append(resize(image=pixels)["image"])
    return np.stack(batch)


def _is_pil(image):
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with scikit-image
        return False
    return isinstance(image, Image.Image)


def _as_uint8(pixels):
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W, 3) image, got an array of shape {pixels.shape}")
    pixels = np.broadcast_to(pixels[..., :3], pixels.shape[:2] + (3,))
    if pixels.dtype != np.uint8:
        if pixels.size and float(np.nanmax(pixels)) <= 1.0 and "0-1" not in _warned:
            _warned.add("0-1")
            log.warning(
                "these pixels look like 0-1 values; kflowers models take 0-255 pixels "
                "(multiply by 255 first), as they were trained on"
            )
        pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels)


def decode_predictions(outputs, class_names, top_k=5, activation="linear"):
    """Probabilities from a classifier's `outputs`, and the `top_k` classes of each row.

    Args:
        outputs: array of shape `(N, C)`. One row per image: logits (a
            linear head, kflowers's own), or the probabilities of a head
            with a `"softmax"` or `"sigmoid"` activation. One output per row
            is a binary classifier: how likely the second class is
            (`class_names` then has two names).
        class_names: list of str. The name of each class.
        top_k: int. How many classes to keep per image. Defaults to `5`.
        activation: str. The head's activation (see `output_activation`).
            Defaults to `"linear"`.

    Returns:
        One list per image of `(class_name, probability)` pairs, most likely
        first.

    Example:
    ```python
    decode_predictions(np.array([[2.0, 0.0, 1.0]]), ["a", "b", "c"], top_k=2)  # [[('a', 0.665...), ('c', 0.244...)]]
    decode_predictions(np.array([[0.0]]), ["cat", "dog"])  # [[('cat', 0.5), ('dog', 0.5)]]: one logit, binary
    ```
    """
    probabilities = class_probabilities(outputs, activation)
    top_k = min(top_k, probabilities.shape[-1])
    order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :top_k]
    return [[(class_names[i], float(row[i])) for i in picks] for row, picks in zip(probabilities, order)]


def class_probabilities(outputs, activation="linear"):
    """Each class's probability, in float64, from a classifier's `outputs` (see `decode_predictions`)."""
    outputs = np.asarray(outputs, "float64")
    if outputs.shape[-1] == 1:  # binary: the probability of the second class
        second = outputs[:, 0] if activation == "sigmoid" else 1.0 / (1.0 + np.exp(-outputs[:, 0]))
        return np.stack([1.0 - second, second], axis=-1)
    if activation == "softmax":
        return outputs
    return softmax(outputs)


def output_activation(model):
    """The activation of the model's last layer: `"softmax"`, `"sigmoid"` or `"linear"` (logits)."""
    name = getattr(getattr(model.layers[-1], "activation", None), "__name__", "linear")
    return name if name in ("softmax", "sigmoid") else "linear"


def log_softmax(logits):
    """Log-probabilities from `logits` (one row per image), in float64: the one place kflowers computes them.

    Example:
    ```python
    np.exp(log_softmax(np.array([[0.0, np.log(3.0)]])))  # array([[0.25, 0.75]])
    ```
    """
    logits = np.asarray(logits, "float64")
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits):
    """Probabilities from `logits` (one row per image), in float64 (see `log_softmax`)."""
    return np.exp(log_softmax(logits))


def class_names_of(model):
    """The class names a kflowers model carries (`load_model` sets them), or `"0"`, `"1"`, ..."""
    names = getattr(model, "class_names", None)
    return list(names) if names else [str(i) for i in range(max(2, model.output_shape[-1]))]


def predict_images(model, images, top_k=5, class_names=None, batch_size=64):
    """The `top_k` classes of each image, with probabilities.

    Args:
        model: `keras.Model`. A classifier (`load_model`, `build_model` or
            a run's `model.keras`).
        images: str, path, PIL image or array, or a list of them. File
            paths, PIL images or `(H, W, 3)` arrays of 0-255 pixels, any
            size (resized as in training). Pixels that look like 0-1 values
            get a warning, once.
        top_k: int. How many classes to keep per image. Defaults to `5`.
        class_names: list of str or `None`. The names of the model's
            outputs. Defaults to `None`: the model's own (`model.class_names`).
        batch_size: int. Images per forward pass. Defaults to `64`.

    Returns:
        One list per image of `(class_name, probability)` pairs, most likely
        first.

    Example:
    ```python
    model = kflowers.load_model("runs/latest/model.keras")
    kflowers.predict_images(model, "rose.jpg", top_k=2)  # [[('rose', 0.93), ('tulip', 0.04)]]
    ```
    """
    size = model.input_shape[1] or 224
    pixels = prepare_images(images, size)
    logits = model.predict(pixels, batch_size=batch_size, verbose=0)
    return decode_predictions(logits, class_names or class_names_of(model), top_k, output_activation(model))
