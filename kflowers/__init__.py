"""kflowers: ResNet18 transfer learning on the flowers dataset, in Keras 3.

`import kflowers` is cheap: Keras, torch and keras-hub load on first use of
the names below.
"""

import importlib
import os
import sys


def _backend_already_chosen():
    """Keras imported before kflowers, with no KERAS_BACKEND: it chose its own default (tensorflow). Say so
    once, and how to get the torch backend kflowers promises."""
    import warnings

    backend = sys.modules["keras"].backend.backend()
    if backend != "torch":
        warnings.warn(
            f"Keras was imported before kflowers without KERAS_BACKEND set, so it runs on {backend}, not on "
            "torch (kflowers's default, with its fast path): set KERAS_BACKEND=torch before Python starts, or "
            "import kflowers before keras",
            stacklevel=3,
        )


# kflowers runs on the torch backend unless KERAS_BACKEND says otherwise.
if "KERAS_BACKEND" not in os.environ and "keras" in sys.modules:
    _backend_already_chosen()
os.environ.setdefault("KERAS_BACKEND", "torch")

from kflowers import native_logs  # noqa: E402 - after the backend is set; imports nothing heavy

native_logs.install()

try:
    from importlib.metadata import version as _version

    __version__ = _version("kflowers")  # pyproject.toml's, the one place it is written
except Exception:  # noqa: BLE001 - not installed (run from a source tree)
    __version__ = "unknown"

_EXPORTS = {
    "build_model": "kflowers.model",
    "with_image_size": "kflowers.model",
    "load_weights": "kflowers.model",
    "save_model": "kflowers.model",
    "load_model": "kflowers.model",
    "use_torch_kernels": "kflowers.torch_kernels",
    "WeightsError": "kflowers.model",
    "download_flowers": "kflowers.data",
    "scan_folder": "kflowers.data",
    "split_dataset": "kflowers.data",
    "FlowerDataset": "kflowers.data",
    "ImageFolder": "kflowers.data",
    "DataError": "kflowers.data",
    "read_image": "kflowers.images",
    "UnreadableImage": "kflowers.images",
    "model_parts": "kflowers.parts",
    "train": "kflowers.training",
    "discriminative_optimizer": "kflowers.strategies",
    "STRATEGIES": "kflowers.strategies",
    "compile_for": "kflowers.strategies",
    "predict_images": "kflowers.predict",
    "decode_predictions": "kflowers.predict",
    "RunOptions": "kflowers.options",
    "KflowersError": "kflowers.errors",
    "TrainingDiverged": "kflowers.errors",
}

# Submodules reachable as attributes (`kflowers.training.train(...)`), imported on first use.
_SUBMODULES = [
    "backup",
    "callbacks",
    "data",
    "distributed",
    "errors",
    "explain",
    "export",
    "feature_cache",
    "files",
    "images",
    "losses",
    "lr_find",
    "model",
    "native_logs",
    "options",
    "parts",
    "predict",
    "recipes",
    "run_directory",
    "reports",
    "runs",
    "strategies",
    "torch_kernels",
    "torch_layers",
    "torch_resnet",
    "training",
]

__all__ = sorted(_EXPORTS) + _SUBMODULES


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"kflowers.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kflowers' has no attribute {name!r}")
