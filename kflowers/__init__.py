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

try:
    from importlib.metadata import version as _version

    __version__ = _version("kflowers")  # pyproject.toml's, the one place it is written
except Exception:  # noqa: BLE001 - not installed (run from a source tree)
    __version__ = "unknown"

_EXPORTS = {
    "build_model": "kflowers.models.resnet",
    "with_image_size": "kflowers.models.resnet",
    "load_weights": "kflowers.models.weights",
    "save_model": "kflowers.models.saving",
    "load_model": "kflowers.models.saving",
    "remember_class_names": "kflowers.models.saving",
    "use_torch_kernels": "kflowers.models.torch_kernels",
    "WeightsError": "kflowers.errors",
    "download_flowers": "kflowers.data.download",
    "scan_folder": "kflowers.data.folders",
    "split_dataset": "kflowers.data.folders",
    "FlowerDataset": "kflowers.data.dataset",
    "ImageFolder": "kflowers.data.folders",
    "DataError": "kflowers.errors",
    "read_image": "kflowers.data.images",
    "UnreadableImage": "kflowers.data.images",
    "model_parts": "kflowers.models.parts",
    "train": "kflowers.training.loop",
    "discriminative_optimizer": "kflowers.training.strategies",
    "STRATEGIES": "kflowers.training.strategies",
    "compile_for": "kflowers.training.strategies",
    "predict_images": "kflowers.inference.predict",
    "iter_predictions": "kflowers.inference.predict",
    "decode_predictions": "kflowers.inference.predict",
    "RunOptions": "kflowers.options",
    "KflowersError": "kflowers.errors",
    "quiet_start": "kflowers.native_logs",
    "TrainingDiverged": "kflowers.errors",
}

# The layers, and the helpers beside them, reachable as attributes (`kflowers.training.train(...)`); the
# modules the Python tour names have short names too (`kflowers.callbacks`, a module of its own that is
# `kflowers.training.callbacks`, so `from kflowers.callbacks import UnfreezeBackbone` works as well).
_SUBMODULES = {
    **{name: f"kflowers.{name}" for name in ("data", "models", "training", "inference", "runs", "cli")},
    **{
        name: f"kflowers.{name}" for name in ("errors", "files", "options", "recipes", "plots", "tables", "native_logs")
    },
    "callbacks": "kflowers.training.callbacks",
    "strategies": "kflowers.training.strategies",
    "distributed": "kflowers.training.distributed",
    "predict": "kflowers.inference.predict",
    "explain": "kflowers.inference.explain",
    "export": "kflowers.inference.export",
}

__all__ = sorted(_EXPORTS) + sorted(_SUBMODULES)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(_SUBMODULES[name])
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kflowers' has no attribute {name!r}")
