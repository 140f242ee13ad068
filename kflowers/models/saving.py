"""Saving and loading a classifier as one `.keras` file that remembers its class names, checked on load."""

import json
import os
import zipfile
from kflowers.errors import WeightsError
from kflowers.errors import first_line
from kflowers.models.parts import HEAD


_CLASSES_ENTRY = "kflowers.json"


MAX_CLASSES_ENTRY_BYTES = 1 << 20  # a million bytes of class names is already absurd


# The largest square input a model file may declare: a 4096 px image is 50 MB of float32 per layer input
# at the stem; a 12,000 px one took 3.8 GB to predict one image.
MAX_INPUT_SIZE = 4096


def save_model(model, path, class_names):
    """Save `model` to a `.keras` file that also records its class names.

    The write is atomic: the file is written beside `path` and renamed, so
    a crash leaves the previous file (if any) intact. The class names go in
    an extra `kflowers.json` entry of the archive, which Keras ignores: the
    file still loads with plain `keras.models.load_model`: keras-hub saves
    the backbone as its config, so the file holds stock Keras layers whether
    or not the model ran on kflowers's torch path (`torch_kernels`).
    """
    from kflowers.files import atomic_path

    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"model files end in .keras: {path}")
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(_CLASSES_ENTRY, json.dumps({"class_names": list(class_names)}))


def read_class_names(path):
    """The class names saved with a `.keras` model, or `None` when it has none.

    Raises:
        WeightsError: the names are there but damaged (not a list of distinct
            strings).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            if _CLASSES_ENTRY not in archive.namelist():
                return None
            if archive.getinfo(_CLASSES_ENTRY).file_size > MAX_CLASSES_ENTRY_BYTES:  # checked before reading
                raise WeightsError(
                    f"{path}: its {_CLASSES_ENTRY} declares {archive.getinfo(_CLASSES_ENTRY).file_size:,} bytes "
                    f"(class names take at most {MAX_CLASSES_ENTRY_BYTES:,}): the file was edited or damaged"
                )
            with archive.open(_CLASSES_ENTRY) as entry:
                names = json.loads(entry.read(MAX_CLASSES_ENTRY_BYTES + 1))["class_names"]
    except WeightsError:
        raise
    except (zipfile.BadZipFile, OSError):
        return None
    except (KeyError, ValueError, TypeError, RecursionError):
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise WeightsError(
            f"{path}: its class names ({_CLASSES_ENTRY}) are damaged: expected a list of distinct strings"
        )
    return names


def load_model(path, torch_kernels=True):
    """Load a kflowers `.keras` model; `model.class_names` holds its class names.

    The file is checked: it must be a Keras archive (else "corrupt"), hold a
    kflowers classifier (an image model ending in the `head` layer), and its
    class names, when saved, must match the head's outputs. Keras loads it in
    safe mode: a file with Lambda layers (arbitrary code) is refused.

    Args:
        path: a `.keras` file.
        torch_kernels: as for `build_model`: on the torch backend, run the
            convolutions, batch norms and max pooling on torch's
            channels-last kernels.

    Raises:
        WeightsError: the file is missing, corrupt, not a kflowers classifier,
            or its class names don't fit its outputs.
    """
    import keras

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"model file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise WeightsError(f"{path} is corrupt or not a .keras model file (not a zip archive)")
    import kflowers.models.losses  # noqa: F401 - registers SparseCrossentropyWithSmoothing, a compiled model's loss

    names = read_class_names(path)
    try:
        model = keras.models.load_model(path)
    except Exception as error:
        raise WeightsError(f"cannot load {path}: corrupt or not a Keras model ({first_line(error)})") from error
    if not _is_classifier(model):
        raise WeightsError(
            f"{path} is a Keras model but not a kflowers classifier (an image input of "
            "shape (size, size, 3) and a final Dense layer named 'head')"
        )
    side = max(d for d in model.input_shape[1:3] if d is not None) if any(model.input_shape[1:3]) else None
    if side is not None and side > MAX_INPUT_SIZE:
        raise WeightsError(
            f"{path} declares {side} px input images (at most {MAX_INPUT_SIZE} px): the file was edited or damaged"
        )
    outputs = model.output_shape[-1]
    classes = max(2, outputs)  # one output: a binary classifier of two classes
    if names is None:
        names = [str(i) for i in range(classes)]
    elif len(names) != classes:
        raise WeightsError(
            f"{path}: its class names ({len(names)}) don't match its {outputs} outputs; the file was edited or damaged"
        )
    if torch_kernels:
        from kflowers.models.torch_kernels import use_torch_kernels

        use_torch_kernels(model)
    model.class_names = names
    return model


def _is_classifier(model):
    import keras

    try:
        head = model.get_layer(HEAD)
        shape = model.input_shape
    except (ValueError, AttributeError):
        return False
    return isinstance(head, keras.layers.Dense) and len(shape) == 4 and shape[-1] == 3 and model.layers[-1] is head
