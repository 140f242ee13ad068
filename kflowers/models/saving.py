"""Saving and loading a classifier as one `.keras` file that remembers its class names, checked on load."""

import json
import logging
import os
import re
import zipfile
from kflowers.errors import WeightsError
from kflowers.files import check_regular
from kflowers.errors import first_line
from kflowers.errors import user_message

log = logging.getLogger("kflowers")


# Where Keras's own `model.save` (and so `ModelCheckpoint`) puts them: the model's assets (`remember_class_names`).
_CLASSES_ASSET = "kflowers_class_names.json"


# Where files saved by earlier kflowers versions keep them: an extra entry of the archive (still read).
_CLASSES_ENTRY = "kflowers.json"


# The largest input side a model file may declare (a larger one is a damaged or edited file): above the
# largest training side (`--image-size`, at most 4096) times the modern recipe's test scale, since a run
# saves its model at the side it scores test images at.
MAX_INPUT_SIZE = 8192
MAX_CLASSES_ENTRY_BYTES = 1 << 20  # a million bytes of class names is already absurd


# The largest square input a model file may declare: a 4096 px image is 50 MB of float32 per layer input
# at the stem; a 12,000 px one took 3.8 GB to predict one image.


def save_model(model, path, class_names):
    """Save `model` to a `.keras` file that also records its class names.

    The write is atomic: the file is written beside `path` and renamed, so
    a crash leaves the previous file (if any) intact. The class names go
    where Keras's own `model.save` puts them once the model remembers them
    (`remember_class_names`, which this calls): the file still loads with
    plain `keras.models.load_model`: keras-hub saves the backbone as its
    config, so the file holds stock Keras layers whether or not the model
    ran on kflowers's torch path (`torch_kernels`).
    """
    from kflowers.files import atomic_path

    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"model files end in .keras: {path}")
    remember_class_names(model, class_names)
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)


def remember_class_names(model, class_names):
    """Give `model` its class names, kept by every `.keras` file Keras writes of it.

    Sets `model.class_names`, and lets Keras's own saving (`model.save`,
    `keras.callbacks.ModelCheckpoint`) write them into the file's assets,
    where `kflowers.load_model` reads them. This is the `save_assets` hook
    Keras calls on every object it saves, set on this model alone; a file
    written this way still loads with plain `keras.models.load_model`.

    Args:
        model: `keras.Model`. Any Keras model.
        class_names: list of str. One name per class, in label order.

    Example:
    ```python
    remember_class_names(model, ["daisy", "dandelion", "rose", "sunflower", "tulip"])
    model.save("best.keras")  # or keras.callbacks.ModelCheckpoint("best.keras") in fit
    kflowers.load_model("best.keras").class_names  # ['daisy', 'dandelion', ...]
    ```
    """
    import types

    model.class_names = [str(name) for name in class_names]

    def save_assets(self, directory):
        with open(os.path.join(directory, _CLASSES_ASSET), "w") as f:
            json.dump({"class_names": self.class_names}, f)

    model.save_assets = types.MethodType(save_assets, model)
    return model


def read_class_names(path):
    """The class names saved with a `.keras` model, or `None` when it has none.

    Raises:
        WeightsError: the names are there but damaged (not a list of distinct
            strings).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.namelist()
            entry = next((e for e in entries if e == _CLASSES_ENTRY), None) or next(
                (e for e in entries if e.startswith("assets/") and e.endswith("/" + _CLASSES_ASSET)), None
            )
            if entry is None:
                return None
            if archive.getinfo(entry).file_size > MAX_CLASSES_ENTRY_BYTES:  # checked before reading
                raise WeightsError(
                    f"{path}: its {os.path.basename(entry)} declares {archive.getinfo(entry).file_size:,} bytes "
                    f"(class names take at most {MAX_CLASSES_ENTRY_BYTES:,}): the file was edited or damaged"
                )
            with archive.open(entry) as opened:
                names = json.loads(opened.read(MAX_CLASSES_ENTRY_BYTES + 1))["class_names"]
    except WeightsError:
        raise
    except (zipfile.BadZipFile, OSError):
        return None
    except (KeyError, ValueError, TypeError, RecursionError):
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise WeightsError(f"{path}: its class names are damaged: expected a list of distinct strings")
    return names


def load_model(path, torch_kernels=True, custom_objects=None):
    """Load a kflowers `.keras` model; `model.class_names` holds its class names.

    The file is checked: it must be a Keras archive (else "corrupt"), hold a
    classifier (an image model whose output is a `Dense` layer), and its
    class names, when saved, must match the head's outputs. Keras loads it in
    safe mode: a file with Lambda layers (arbitrary code) is refused.

    Args:
        path: str or path. A `.keras` file.
        torch_kernels: bool. As for `build_model`: on the torch backend,
            run the convolutions, batch norms and max pooling on torch's
            channels-last kernels. Defaults to `True`.
        custom_objects: dict. As for `keras.models.load_model`: the classes
            and functions of your own that the file names (a custom layer or
            loss not registered with `keras.saving.register_keras_serializable`).

    A file with no class names (saved by a model that was loaded with plain
    `keras.models.load_model`, which knows nothing of them) loads with the
    names `"0"`, `"1"`, ..., and a warning says so once.

    Raises:
        WeightsError: the file is missing, corrupt, not a kflowers classifier,
            names a class Keras cannot find, or its class names don't fit its outputs.
    """
    import keras

    path = os.fspath(path)
    if not os.path.exists(path):
        raise WeightsError(f"model file not found: {path}")
    check_regular(path)  # a FIFO would block the zip reader forever
    if not zipfile.is_zipfile(path):
        raise WeightsError(f"{path} is corrupt or not a .keras model file (not a zip archive)")
    import kflowers.models.losses  # noqa: F401 - registers SparseCrossentropyWithSmoothing, a compiled model's loss

    _check_members(path)
    names = read_class_names(path)
    try:
        model = keras.models.load_model(path, custom_objects=custom_objects)
    except Exception as error:
        raise _load_error(path, error) from error
    if not _is_classifier(model):
        raise WeightsError(
            f"{path} is a Keras model but not a kflowers classifier (an image input of "
            "shape (size, size, 3) and a Dense output layer)"
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
        log.warning(
            "%s carries no class names (saved after a plain keras.models.load_model?): they are %s; "
            "kflowers.remember_class_names(model, names) before saving keeps them",
            path,
            ", ".join(names),
        )
    elif len(names) != classes:
        raise WeightsError(
            f"{path}: its class names ({len(names)}) don't match its {outputs} outputs; the file was edited or damaged"
        )
    if torch_kernels:
        from kflowers.models.torch_kernels import use_torch_kernels

        use_torch_kernels(model)
    return remember_class_names(model, names)


def _load_error(path, error):
    """The one line for a file Keras could not load: the environment's fault, a class of the user's, or the file's."""
    environment = user_message(error)  # a full disk or a read-only temporary folder, not the file's fault
    if environment and not isinstance(error, WeightsError):
        return WeightsError(f"cannot load {path}: {environment}")
    unknown = re.search(r"Could not locate (?:class|function) '([^']+)'", str(error))
    if unknown:  # custom_objects is looked up by the registered name ("package>Class") when there is one
        registered = re.compile(r"'registered_name': '([^']+)'").search(str(error), unknown.end())
        key = registered.group(1) if registered else unknown.group(1)
        return WeightsError(
            f"cannot load {path}: it uses {unknown.group(1)}, which Keras cannot find: import the module that "
            f"defines it (registered with keras.saving.register_keras_serializable) or pass custom_objects={{{key!r}: "
            f"{unknown.group(1)}}}"
        )
    return WeightsError(f"cannot load {path}: corrupt or not a Keras model ({first_line(error)})")


def _is_classifier(model):
    """An image input and one Dense output (its name and the layers before it are the model's own)."""
    import keras

    try:
        shape = model.input_shape
        outputs = model.outputs
    except (ValueError, AttributeError):
        return False
    last = model.layers[-1] if model.layers else None
    return (
        isinstance(last, keras.layers.Dense)
        and len(outputs) == 1
        and isinstance(shape, tuple)
        and len(shape) == 4
        and shape[-1] == 3
    )


def _check_members(path):
    """Refuse a `.keras` archive with a member that would land outside it (`../x`, `/x`): no file Keras wrote
    has one, and Python's zipfile would only warn about it."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError) as error:
        raise WeightsError(f"{path} is corrupt or not a .keras model file ({first_line(error)})") from error
    outside = [n for n in names if n.startswith(("/", "\\")) or ".." in n.replace("\\", "/").split("/")]
    if outside:
        raise WeightsError(
            f"{path} holds an entry outside the archive ({outside[0]!r}): it is not a file Keras wrote; refused"
        )
