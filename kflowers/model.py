"""`build_model`: the ResNet18 classifier, and where its weights come from.

The model is a functional `keras.Model`:

    images (0-255, channels-last)
      -> `preprocess`  Normalization with ImageNet's mean and std, scaled to 0-255
      -> `backbone`    keras_hub.models.ResNetBackbone (ResNet18)
      -> `pool`        GlobalAveragePooling2D  (the 512-d features)
      -> `head`        Dense(num_classes), logits

It is made only of built-in Keras and keras-hub layers, so a saved model loads
with plain `keras.models.load_model`. torchvision's and timm's checkpoints use
the same key names for ResNet18; keras-hub's timm converter maps them onto
`ResNetBackbone`, and `kflowers` feeds it through a small state-dict loader.
"""

import json
import logging
import os
import re
import zipfile

import numpy as np
from kflowers.errors import WeightsError
from kflowers.errors import first_line
from kflowers.options import weights_value
from kflowers.parts import HEAD
from kflowers.parts import model_parts

log = logging.getLogger("kflowers")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TORCHVISION_RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
# torchvision names its checkpoints after the first 8 hex digits of their sha256.
TORCHVISION_RESNET18_SHA256_PREFIX = "f37072fd"

RESNET18_CONFIG = dict(
    input_conv_filters=[64],
    input_conv_kernel_sizes=[7],
    stackwise_num_filters=[64, 128, 256, 512],
    stackwise_num_blocks=[2, 2, 2, 2],
    stackwise_num_strides=[1, 2, 2, 2],
    block_type="basic_block",
    use_pre_activation=False,
)

# Keys of a torchvision/timm ResNet18 state dict that the backbone ignores.
_IGNORED_KEYS = re.compile(r"(^fc\.(weight|bias)$)|(\.num_batches_tracked$)")


def build_model(num_classes=5, weights="imagenet", image_size=224, name="kflowers_resnet18", torch_kernels=True):
    """The ResNet18 flower classifier, as a functional `keras.Model`.

    Args:
        num_classes: number of classes (outputs of the `head`).
        weights: where the backbone's weights come from:
            `None` or `"none"`: random initialisation;
            `"imagenet"`: torchvision's ImageNet ResNet18 checkpoint
            (`resnet18-f37072fd.pth`), downloaded once and hash-checked;
            a keras-hub preset (`"resnet_18_imagenet"`,
            `"hf://timm/resnet18.a1_in1k"`, or a local preset folder);
            a file: a torchvision-layout `.pth`/`.pt` state dict, a
            timm-layout `.safetensors`, or a Keras `.weights.h5` saved from a
            backbone or from a whole kflowers model.
        image_size: side of the square input images; `None` accepts any size.
        name: the model's name.
        torch_kernels: on the torch backend, run the backbone on torch's
            channels-last kernels (`kflowers.torch_layers`) as one torch
            function (`kflowers.torch_resnet`); same weights, config and
            results, faster (see the README's Performance table). `False`
            keeps Keras's stock layers. Other backends ignore it.

    Returns:
        A `keras.Model` from `(batch, S, S, 3)` pixels in 0-255 (uint8 or
        float) to `(batch, num_classes)` logits.

    Example:
    >>> model = build_model(num_classes=5, weights="imagenet")
    >>> kflowers.model_parts(model).backbone.trainable = False   # freeze
    >>> model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    """
    import keras
    import keras_hub

    weights = weights_value(weights)
    shape = (image_size, image_size, 3)
    inputs = keras.Input(shape=shape, name="images")
    preprocess = keras.layers.Normalization(
        mean=[255.0 * m for m in IMAGENET_MEAN],
        variance=[(255.0 * s) ** 2 for s in IMAGENET_STD],
        name="preprocess",
    )
    x = preprocess(inputs)
    is_preset = isinstance(weights, str) and _is_preset(weights)
    if is_preset:
        backbone = _backbone_from_preset(weights, shape)
    else:
        backbone = keras_hub.models.ResNetBackbone(
            **RESNET18_CONFIG, image_shape=shape, data_format="channels_last", name="backbone"
        )
    features = backbone(x)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    # float32 logits whatever the dtype policy, as keras.io recommends for mixed precision.
    logits = keras.layers.Dense(num_classes, dtype="float32", name="head")(pooled)
    model = keras.Model(inputs, logits, name=name)
    if weights is not None and not is_preset:
        load_weights(model, weights)
    if torch_kernels:
        from kflowers.torch_kernels import use_torch_kernels

        use_torch_kernels(model)
    return model


def with_image_size(model, image_size):
    """The same classifier, weights and dtype policy, for `image_size` inputs.

    A ResNet ends in global pooling, so its weights serve any input size;
    only the `Input` is fixed when the model is built. The modern scratch
    recipe trains on random-resized crops, which show objects larger than a
    whole resized photo does, and scores test photos at a higher resolution
    to match ("FixRes", Touvron et al. 2019).

    Args:
        model: a model from `build_model` (or `load_model`).
        image_size: int, the side of the new model's square inputs.

    Returns:
        A new `keras.Model` from `build_model` with `model`'s weights.

    Example:
    >>> model = build_model(weights=None, image_size=96)
    >>> with_image_size(model, 128).input_shape
    (None, 128, 128, 3)
    """
    import keras

    parts = model_parts(model)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(parts.backbone.dtype_policy.name)  # the layers keep it
    try:
        resized = build_model(
            num_classes=parts.head.units,
            weights=None,
            image_size=image_size,
            name=model.name,
        )
    finally:
        keras.mixed_precision.set_global_policy(previous)
    resized.set_weights(model.get_weights())
    if hasattr(model, "class_names"):
        resized.class_names = model.class_names
    return resized


def load_weights(model, source):
    """Load backbone (or whole-model) weights into a model from `build_model`.

    Args:
        model: a model from `build_model`.
        source: `"imagenet"` or a path, as for `build_model(weights=...)`.

    Raises:
        WeightsError: unknown source, or weights that don't fit ResNet18; the
            message lists the missing, unexpected or mis-shaped entries.
    """
    backbone = model_parts(model).backbone
    if source == "imagenet":
        source = fetch_imagenet_checkpoint()
    path = os.fspath(source)
    if not os.path.exists(path):
        raise WeightsError(
            f"unknown weights {source!r}: expected 'imagenet', a keras-hub preset, or an "
            "existing .pth, .safetensors or .weights.h5 file"
        )
    lower = path.lower()
    if lower.endswith((".pth", ".pt", ".bin")):
        load_state_dict(backbone, read_torch_state_dict(path))
    elif lower.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            state = load_file(path)
        except Exception as error:
            raise WeightsError(f"cannot read {path}: {first_line(error)}") from error
        load_state_dict(backbone, state)
    elif lower.endswith(".h5"):
        _load_keras_weights(model, backbone, path)
    else:
        raise WeightsError(f"unknown weights file type: {path} (expected .pth, .safetensors or .weights.h5)")


def read_torch_state_dict(path):
    """A `.pth` checkpoint as `{key: numpy array}` (needs torch)."""
    try:
        import torch
    except ImportError:
        raise WeightsError(
            f"reading {path} needs PyTorch (pip install torch); .safetensors and .weights.h5 files load without it"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsError(f"cannot read {path}: {first_line(error)}") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}


def load_state_dict(backbone, state):
    """Copy a torchvision/timm-layout ResNet18 state dict into `backbone`.

    The key mapping is keras-hub's timm converter; this checks the whole
    file first, so a checkpoint of another architecture fails with every
    problem named instead of a half-loaded backbone.
    """
    from keras_hub.src.utils.timm import convert_resnet

    recorder = _StateDictLoader(state, dry_run=True)
    convert_resnet.convert_weights(backbone, recorder, {"architecture": "resnet18"})
    unexpected = sorted(k for k in state if k not in recorder.used and not _IGNORED_KEYS.search(k))
    if recorder.missing or recorder.mismatched or unexpected:
        raise WeightsError(_describe_mismatch(recorder.missing, recorder.mismatched, unexpected))
    convert_resnet.convert_weights(backbone, _StateDictLoader(state), {"architecture": "resnet18"})


class _StateDictLoader:
    """The `port_weight` interface of keras-hub's converters, over a dict."""

    def __init__(self, state, dry_run=False):
        self.state = state
        self.dry_run = dry_run
        self.used = set()
        self.missing = []
        self.mismatched = []

    def port_weight(self, keras_variable, hf_weight_key, hook_fn=None):
        self.used.add(hf_weight_key)
        if hf_weight_key not in self.state:
            self.missing.append(hf_weight_key)
            return
        value = np.asarray(self.state[hf_weight_key])
        if hook_fn:
            value = hook_fn(value, list(keras_variable.shape))
        if tuple(value.shape) != tuple(keras_variable.shape):
            self.mismatched.append((hf_weight_key, tuple(self.state[hf_weight_key].shape), tuple(keras_variable.shape)))
            return
        if not self.dry_run:
            keras_variable.assign(value.astype(keras_variable.dtype))


def _describe_mismatch(missing, mismatched, unexpected, limit=6):
    def listing(items):
        shown = ", ".join(items[:limit])
        return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {listing(missing)}")
    if mismatched:
        parts.append(
            f"{len(mismatched)} shape mismatch(es): "
            + listing([f"{k} {tuple(a)} (ResNet18 needs {_torch_shape(b)})" for k, a, b in mismatched])
        )
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {listing(unexpected)}")
    return "the checkpoint is not a torchvision/timm ResNet18: " + "; ".join(parts)


def _torch_shape(keras_shape):
    if len(keras_shape) == 4:  # HWIO -> OIHW
        h, w, i, o = keras_shape
        return (o, i, h, w)
    return tuple(keras_shape)


def _load_keras_weights(model, backbone, path):
    import warnings

    errors = []
    for target in (backbone, model):
        try:
            with warnings.catch_warnings():
                # Keras warns about each group it can't match before it raises.
                warnings.simplefilter("ignore")
                target.load_weights(path)
            return
        except Exception as error:  # Keras raises ValueError or KeyError here
            errors.append(first_line(error))
    raise WeightsError(f"{path} fits neither a ResNet18 backbone nor this model: {errors[-1]}")


def _is_preset(weights):
    return (
        weights.startswith(("hf://", "kaggle://", "gs://", "modelscope://"))
        or re.fullmatch(r"[a-z0-9_]+", weights) is not None
        and weights != "imagenet"
        or os.path.isdir(weights)
    )


def _backbone_from_preset(preset, shape):
    import keras_hub

    try:
        backbone = keras_hub.models.ResNetBackbone.from_preset(
            preset, image_shape=shape, data_format="channels_last", name="backbone"
        )
    except Exception as error:
        raise WeightsError(f"cannot load keras-hub preset {preset!r}: {first_line(error)}") from error
    if backbone.block_type != "basic_block" or list(backbone.stackwise_num_blocks) != [2, 2, 2, 2]:
        raise WeightsError(
            f"preset {preset!r} is not a ResNet18 ({backbone.block_type}, blocks {list(backbone.stackwise_num_blocks)})"
        )
    return backbone


def fetch_imagenet_checkpoint(
    cache_dir=None, url=TORCHVISION_RESNET18_URL, sha256_prefix=TORCHVISION_RESNET18_SHA256_PREFIX
):
    """Download torchvision's ResNet18 ImageNet checkpoint; return its path.

    Cached by `keras.utils.get_file` (`~/.keras/models`). A file whose sha256
    does not start with torchvision's prefix is deleted and fetched once
    more, then raises `WeightsError`.
    """
    import keras

    from kflowers.data import sha256_of

    fname = url.rsplit("/", 1)[-1]
    for attempt in range(2):
        try:
            path = keras.utils.get_file(
                fname, url, cache_subdir="models", cache_dir=cache_dir, force_download=attempt > 0
            )
        except Exception as error:
            raise WeightsError(
                f"could not download the ImageNet weights from {url} ({first_line(error)}); "
                "without network, pass --weights PATH (a .pth, .safetensors or .weights.h5 "
                "file) or --weights none"
            ) from error
        digest = sha256_of(path)
        if digest.startswith(sha256_prefix):
            return path
        os.remove(path)
        log.warning(
            "%s is corrupted (sha256 %s...); %s",
            fname,
            digest[:8],
            "downloading it again" if attempt == 0 else "giving up",
        )
    raise WeightsError(f"the downloaded {fname} failed its hash check twice (sha256 should start with {sha256_prefix})")


# ------------------------------------------------------------ save / load

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
    import kflowers.losses  # noqa: F401 - registers SparseCrossentropyWithSmoothing, a compiled model's loss

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
    if names is None:
        names = [str(i) for i in range(outputs)]
    elif len(names) != outputs:
        raise WeightsError(
            f"{path}: its class names ({len(names)}) don't match its {outputs} outputs; the file was edited or damaged"
        )
    if torch_kernels:
        from kflowers.torch_kernels import use_torch_kernels

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
