"""Where a backbone's weights come from: torchvision's ImageNet checkpoint, `.pth`, `.safetensors`,
`.weights.h5` files and keras-hub presets.

torchvision's and timm's checkpoints use the same key names for ResNet18;
kflowers checks a state dict against that layout and hands it to keras-hub's
timm loader (`ResNetBackbone.from_preset` on a preset folder it writes), which
maps the keys onto `ResNetBackbone`.
"""

import json
import logging
import os
import re
import tempfile

import numpy as np

from kflowers.errors import WeightsError
from kflowers.files import check_regular
from kflowers.errors import first_line
from kflowers.models.parts import model_parts

log = logging.getLogger("kflowers")


TORCHVISION_RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"


# torchvision names its checkpoints after the first 8 hex digits of their sha256.
TORCHVISION_RESNET18_SHA256_PREFIX = "f37072fd"


# Keys of a torchvision/timm ResNet18 state dict that the backbone ignores.
_IGNORED_KEYS = re.compile(r"(^fc\.(weight|bias)$)|(\.num_batches_tracked$)")


def weights_value(weights):
    """`weights` as `build_model` takes it: the text "none" (any case: the command line's and the examples'
    spelling) means `None`, a backbone with random weights; anything else is kept."""
    return None if isinstance(weights, str) and weights.lower() == "none" else weights


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
    check_regular(path)  # a FIFO would block torch.load forever, a device never end
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


def resnet18_state_shapes():
    """`{key: shape}` of a torchvision/timm ResNet18 state dict's backbone (its `fc` head aside)."""
    shapes = {"conv1.weight": (64, 3, 7, 7)}

    def batch_norm(prefix, channels):
        shapes.update({f"{prefix}.{name}": (channels,) for name in ("weight", "bias", "running_mean", "running_var")})

    batch_norm("bn1", 64)
    inputs = 64
    for stage, channels in enumerate((64, 128, 256, 512), start=1):
        for block in (0, 1):
            prefix = f"layer{stage}.{block}"
            shapes[f"{prefix}.conv1.weight"] = (channels, inputs if block == 0 else channels, 3, 3)
            batch_norm(f"{prefix}.bn1", channels)
            shapes[f"{prefix}.conv2.weight"] = (channels, channels, 3, 3)
            batch_norm(f"{prefix}.bn2", channels)
            if block == 0 and stage > 1:  # the shortcut that halves the side and widens the channels
                shapes[f"{prefix}.downsample.0.weight"] = (channels, inputs, 1, 1)
                batch_norm(f"{prefix}.downsample.1", channels)
        inputs = channels
    return shapes


def load_state_dict(backbone, state):
    """Copy a torchvision/timm-layout ResNet18 state dict into `backbone`.

    The whole dict is checked first against ResNet18's layout
    (`resnet18_state_shapes`), so a checkpoint of another architecture fails
    with every problem named instead of a half-loaded backbone. The copy is
    keras-hub's own, through its public API: the backbone's entries are
    written as a timm preset folder (`config.json`, `model.safetensors`) and
    read by `ResNetBackbone.from_preset`.
    """
    from safetensors.numpy import save_file

    expected = resnet18_state_shapes()
    missing = [key for key in expected if key not in state]
    mismatched = [
        (key, tuple(np.shape(state[key])), shape)
        for key, shape in expected.items()
        if key in state and tuple(np.shape(state[key])) != shape
    ]
    unexpected = sorted(key for key in state if key not in expected and not _IGNORED_KEYS.search(key))
    if missing or mismatched or unexpected:
        raise WeightsError(_describe_mismatch(missing, mismatched, unexpected))
    with tempfile.TemporaryDirectory(prefix="kflowers-preset-") as preset:
        with open(os.path.join(preset, "config.json"), "w") as f:
            json.dump({"architecture": "resnet18", "num_classes": 1000}, f)
        weights = {key: np.ascontiguousarray(state[key], dtype="float32") for key in expected}
        save_file(weights, os.path.join(preset, "model.safetensors"))
        loaded = backbone_from_preset(preset, backbone.image_shape)
    backbone.set_weights(loaded.get_weights())


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
            + listing([f"{k} {tuple(a)} (ResNet18 needs {tuple(b)})" for k, a, b in mismatched])
        )
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {listing(unexpected)}")
    return "the checkpoint is not a torchvision/timm ResNet18: " + "; ".join(parts)


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


def is_preset(weights):
    """Whether `weights` (a string) names a keras-hub preset: a preset name, a `hf://`-style URI or a folder."""
    return (
        weights.startswith(("hf://", "kaggle://", "gs://", "modelscope://"))
        or re.fullmatch(r"[a-z0-9_]+", weights) is not None
        and weights != "imagenet"
        or os.path.isdir(weights)
    )


def backbone_from_preset(preset, shape):
    """A ResNet18 `ResNetBackbone` for `shape` inputs from a keras-hub preset; `WeightsError` otherwise."""
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

    from kflowers.data.download import sha256_of

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
