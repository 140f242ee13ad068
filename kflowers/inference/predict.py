"""Asking a trained classifier "what flower is this?" from Python.

`predict_images(model, images)` takes photos as files, PIL images or arrays
of any size, prepares them exactly as training did (decoded by
`kflowers.data.images.read_image`, resized by albumentations to the model's input
size, kept as 0-255 pixels) and returns the top classes with their
probabilities, the way keras-hub's `decode_imagenet_predictions` does.
`iter_predictions` is its streaming form: batches are decoded by threads
while the model answers the one before, and each photo's answer comes as
soon as its batch is done, so memory stays flat however many photos there are.
"""

import collections
import contextlib
import logging
import math
import os

import numpy as np

from kflowers.data.images import UnreadableImage
from kflowers.data.images import read_image
from kflowers.data.read_ahead import ReadAhead

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
    return np.stack([prepare_image(image, image_size) for image in _as_list(images)])


def prepare_image(image, image_size):
    """One photo (a path, an open binary file, a PIL image or an array) as the model's `(S, S, 3)` uint8 input,
    decoded and resized exactly as `FlowerDataset` prepares a test image.

    Raises:
        UnreadableImage: a file can't be decoded (the message says why).
    """
    import albumentations as A

    if isinstance(image, (str, os.PathLike)) or hasattr(image, "read"):
        pixels = read_image(image, min_size=image_size)
    elif _is_pil(image):
        from PIL import ImageOps

        pixels = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    else:
        pixels = _as_uint8(np.asarray(image))
    return A.Resize(image_size, image_size)(image=pixels)["image"]


def _as_list(images):
    """`images` as a list of single images (one image, or a batch array, or any iterable of them)."""
    if isinstance(images, (str, os.PathLike, np.ndarray)) and np.ndim(images) <= 3 or _is_pil(images):
        return [images]
    return list(images)


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

    Raises:
        UnreadableImage: a file can't be decoded (`iter_predictions` skips
            such files instead).

    Example:
    ```python
    model = kflowers.load_model("runs/latest/model.keras")
    kflowers.predict_images(model, "rose.jpg", top_k=2)  # [[('rose', 0.93), ('tulip', 0.04)]]
    ```
    """
    answers = []
    for answer in iter_predictions(model, images, top_k, class_names, batch_size, workers=1):
        if answer.error is not None:
            raise UnreadableImage(f"{answer.image}: {answer.error}")
        answers.append(answer.top)
    return answers


Prediction = collections.namedtuple("Prediction", ["image", "top", "error"])
Prediction.__doc__ = """One photo's answer from `iter_predictions`: the `image` as given, its `top` classes as
`(class_name, probability)` pairs (most likely first), or `None` and the `error` that says why it can't be
read."""


def iter_predictions(model, images, top_k=5, class_names=None, batch_size=32, workers=2, precision="float32"):
    """The streaming form of `predict_images`: one `Prediction` per image, in order, batch by batch.

    Photos are decoded and resized by `workers` threads a few batches ahead
    of the model (`kflowers.data.read_ahead.ReadAhead`, as in training), so
    decoding overlaps inference, and at most `workers + 2` batches are held
    at once, however many images there are. A file that can't be read is
    answered with its `error` instead of stopping the others.

    Args:
        model: `keras.Model`. A classifier, as for `predict_images`.
        images: the same kinds as `predict_images`: paths (a folder's
            `kflowers.data.folders.image_files`), PIL images or arrays.
        top_k: int. How many classes to keep per image. Defaults to `5`.
        class_names: list of str or `None`. Defaults to `None`: the model's.
        batch_size: int. Images per forward pass. Defaults to `32`.
        workers: int. Decoding threads. Defaults to `2`.
        precision: str. `"float32"` or `"bfloat16"` (see
            `inference_precision`). Defaults to `"float32"`.

    Yields:
        `Prediction(image, top, error)`.

    Example:
    ```python
    from kflowers.data.folders import image_files

    model = kflowers.load_model("runs/latest/model.keras")
    for answer in kflowers.iter_predictions(model, image_files("flowers"), top_k=1):
        print(answer.image, answer.top or answer.error)
    ```
    """
    items = _as_list(images)
    size = model.input_shape[1] or 224
    names = class_names or class_names_of(model)
    activation = output_activation(model)
    count = math.ceil(len(items) / batch_size)

    def read(index, epoch):
        chunk = items[index * batch_size : (index + 1) * batch_size]
        pixels, errors = [], []
        for image in chunk:
            try:
                pixels.append(prepare_image(image, size))
                errors.append(None)
            except UnreadableImage as error:
                errors.append(str(error))
        return chunk, (np.stack(pixels) if pixels else None), errors

    reader = ReadAhead(threads=max(1, workers), depth=max(1, workers) + 1)
    try:
        for index in range(count):
            chunk, pixels, errors = reader.get(read, 0, index, count)
            tops = iter(())
            if pixels is not None:
                tops = iter(decode_predictions(forward(model, pixels, precision), names, top_k, activation))
            for image, error in zip(chunk, errors):
                yield Prediction(image, None if error else next(tops), error)
    finally:
        reader.close()


def forward(model, pixels, precision="float32"):
    """The model's outputs for one batch of `(N, S, S, 3)` uint8 pixels, as float32 numpy, in inference mode
    (`predict_on_batch`: no gradients), under `inference_precision(precision)`."""
    with inference_precision(precision):
        outputs = model.predict_on_batch(pixels)
    return np.asarray(outputs, "float32")


PRECISIONS = ("auto", "float32", "bfloat16")


def choose_precision(requested="auto"):
    """The precision inference runs in, and why: `(precision, reason)`.

    `"auto"` is bfloat16 where it is native (a CPU with AVX512_BF16 or AMX,
    a CUDA GPU that supports it) on the torch backend, and float32
    elsewhere; bfloat16 asked for on another backend is an error.

    Raises:
        KflowersError: `requested` is not one of `PRECISIONS`, or bfloat16 off torch.
    """
    import keras

    from kflowers.errors import KflowersError
    from kflowers.options import native_bfloat16

    backend = keras.backend.backend()
    if requested not in PRECISIONS:
        raise KflowersError(f"precision {requested!r}: choose one of {', '.join(PRECISIONS)}")
    if requested == "bfloat16" and backend != "torch":
        raise KflowersError(f"--precision bfloat16 runs on the torch backend (Keras runs on {backend}); use float32")
    if requested != "auto":
        return requested, "as asked"
    if backend != "torch":
        return "float32", f"bfloat16 inference is for the torch backend (Keras runs on {backend})"
    if native_bfloat16():
        return "bfloat16", "this machine computes bfloat16 natively"
    return "float32", "this machine has no native bfloat16 (--precision bfloat16 forces it)"


@contextlib.contextmanager
def inference_precision(precision):
    """Run the model's arithmetic in `precision` inside the block: `"bfloat16"` is torch's autocast (on the
    device the model's weights are on; the weights stay float32), `"float32"` changes nothing."""
    if precision != "bfloat16":
        yield
        return
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        yield
