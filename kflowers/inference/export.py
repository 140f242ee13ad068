"""Exporting a trained classifier for serving, checked against the `.keras` file.

    saved_model  a TensorFlow SavedModel (`serve` endpoint), via Keras's
                 `model.export` on the TensorFlow backend
    onnx         an ONNX graph with a dynamic batch (input `images`), via
                 Keras's `model.export` on the torch backend, checked with
                 onnxruntime
    litert       a LiteRT (TensorFlow Lite) flatbuffer, via Keras's
                 `model.export` on the TensorFlow backend

The `.keras` file is the same on every backend, so each format is made on the
backend that makes it well: when the current process runs another backend,
`export_model` runs the export in a child process with `KERAS_BACKEND` set
(every format is Keras's own `model.export`: SavedModel and LiteRT on the
tensorflow backend, where they are native, and ONNX on torch, which works in
Keras 3.15 once the model has been called; its ONNX output is named by the
tracer, not `logits`).

The class names travel with each export: in the ONNX file's metadata
(`class_names`), in a SavedModel's `assets/class_names.json`, and beside a
LiteRT file (`NAME.class_names.json`).

Every export is checked before it is kept: the exported file, run by its own
runtime, must give the same top-1 class and probabilities within `atol` of
the `.keras` model on a few images (seeded random photos-to-be, plus any you
pass). Otherwise nothing is written and `ExportMismatch` says by how much.
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np

from kflowers.errors import KflowersError

FORMATS = {"saved_model": "tensorflow", "onnx": "torch", "litert": "tensorflow"}
EXTENSIONS = {"saved_model": "", "onnx": ".onnx", "litert": ".tflite"}
RUNTIMES = {"saved_model": ("tensorflow",), "onnx": ("onnx", "onnxruntime"), "litert": ("tensorflow",)}
# What each exporter makes of a model quantized with Keras's `model.quantize(...)`: torch's ONNX exporter
# fails on its int8 casts ("Couldn't export operator aten::to"), TensorFlow Lite's converter on its int8
# kernels; a SavedModel keeps them.
QUANTIZED_REFUSED = {
    "onnx": "torch's ONNX exporter cannot export Keras's int8 kernels (aten::to)",
    "litert": "the TensorFlow Lite converter cannot convert Keras's int8 kernels",
}


class ExportMismatch(KflowersError):
    """The exported model does not predict what the `.keras` model predicts."""


def export_model(model_path, format, out, images=(), atol=1e-4, force=False):
    """Export `model_path` (a kflowers `.keras` file) to `out` in `format`, and check it.

    Args:
        model_path: the `.keras` file.
        format: `"saved_model"`, `"onnx"` or `"litert"`.
        out: the file (onnx, litert) or folder (saved_model) to write.
        images: image files to check on, besides 4 seeded random images.
        atol: the largest difference in probability allowed, for every class
            of every image; any output that is not finite fails the check.
        force: replace an existing `out`. Only the export's own files are
            replaced: the file itself, or in a SavedModel folder the entries a
            SavedModel has (`saved_model.pb`, `variables/`, `assets/`,
            `fingerprint.pb`); nothing else in that folder is touched.

    Returns:
        A dict: `format`, `path`, `backend` (the one that exported),
        `images` (checked), `top1_agree` (true), `max_probability_difference`.

    Raises:
        KflowersError: an unknown format, a runtime that isn't installed, or
            an existing `out` without `force`.
        ExportMismatch: the export disagrees with the `.keras` model.

    Example:
    ```python
    report = export_model("runs/latest/model.keras", "onnx", "flowers.onnx")
    report["max_probability_difference"]  # 3.1e-08 (the export against the .keras model, on check images)
    ```
    """
    import keras

    if format not in FORMATS:
        raise KflowersError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    check_export_target(format, out, force)
    check_export_runtime(format)
    if keras.backend.backend() != FORMATS[format]:
        return _export_in_child(model_path, format, out, images, atol, force)
    return _export_here(model_path, format, out, images, atol, force)


def check_export_target(format, out, force):
    """Refuse an `out` that exists (unless `force`) or is of the wrong kind for `format`."""
    out = os.fspath(out)
    sidecar = class_names_path(format, out) if format == "litert" else None
    if sidecar and os.path.lexists(sidecar) and not force:  # written beside the file: the user's name too
        raise KflowersError(
            f"{sidecar} already exists (a {format} export keeps its class names there); move it, choose "
            "another --out, or pass --force to replace it"
        )
    if not os.path.lexists(out):
        return
    folder_format = EXTENSIONS[format] == ""
    if folder_format and not os.path.isdir(out):
        raise KflowersError(f"--out {out} is a file; a {format} export is a folder: choose another --out")
    if not folder_format and (os.path.isdir(out) or os.path.islink(out)):
        raise KflowersError(f"--out {out} is a folder or a link; a {format} export is a file: choose another --out")
    if not force:
        raise KflowersError(
            f"--out {out} already exists; choose another --out, or pass --force to replace "
            f"{'the export files in it' if folder_format else 'it'}"
        )


def check_export_runtime(format):
    """Refuse a `format` whose exporter or runtime isn't installed (found without importing it)."""
    missing = [m for m in RUNTIMES[format] if not _installed(m)]
    if missing:
        raise KflowersError(
            f"exporting to {format} needs {', '.join(missing)}: "
            "pip install -e '.[export]' in kflowers's folder (or pip install 'kflowers[export]')"
        )


def _installed(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _export_in_child(model_path, format, out, images, atol, force):
    env = {**os.environ, "KERAS_BACKEND": FORMATS[format], "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [
        sys.executable,
        "-m",
        "kflowers.inference.export",
        json.dumps(
            {
                "model_path": os.fspath(model_path),
                "format": format,
                "out": os.fspath(out),
                "images": [os.fspath(i) for i in images],
                "atol": atol,
                "force": force,
            }
        ),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = result.stdout.strip().splitlines()
    if result.returncode == 0 and lines:
        return json.loads(lines[-1])
    if result.returncode == 2 and lines:  # a user error in the child: its type and its one line, as JSON
        error = json.loads(lines[-1])
        raise (ExportMismatch if error["type"] == "ExportMismatch" else KflowersError)(error["message"])
    raise RuntimeError(f"exporting on the {FORMATS[format]} backend failed: {result.stderr[-3000:]}")


def _export_here(model_path, format, out, images, atol, force):
    from kflowers.files import atomic_path
    from kflowers.files import write_json
    from kflowers.models.saving import load_model
    from kflowers.inference.predict import prepare_images
    from kflowers.inference.predict import softmax

    model = load_model(model_path)
    _check_quantization(model, model_path, format)
    size = model.input_shape[1] or 224
    pixels = np.random.default_rng(0).integers(0, 256, (4, size, size, 3)).astype("uint8")
    if images:
        pixels = np.concatenate([pixels, prepare_images(list(images), size)])
    expected = softmax(model.predict(pixels, verbose=0))
    out = os.fspath(out)
    _remove_stale_temporaries(out)
    writing = _into_folder(out) if os.path.isdir(out) else atomic_path(out, suffix=EXTENSIONS[format])
    with writing as tmp:
        EXPORTERS[format](model, tmp, size)
        got = softmax(RUNNERS[format](tmp, pixels))
        if not (np.isfinite(got).all() and np.isfinite(expected).all()):
            raise ExportMismatch(
                f"the {format} export of {model_path} gives probabilities that are not finite "
                f"(export: {int((~np.isfinite(got)).sum())}, model: {int((~np.isfinite(expected)).sum())} values)"
            )
        difference = float(np.abs(got - expected).max())
        agree = bool((got.argmax(axis=1) == expected.argmax(axis=1)).all())
        if not agree or not difference <= atol:
            raise ExportMismatch(
                f"the {format} export disagrees with {model_path}: probabilities differ by up "
                f"to {difference:.2e} (allowed {atol:.0e}), top-1 {'agrees' if agree else 'differs'}"
            )
        if format in CLASS_NAME_WRITERS:  # inside the file itself
            CLASS_NAME_WRITERS[format](tmp, model.class_names)
    if format == "litert":  # beside it
        write_json(class_names_path(format, out), model.class_names)
    return {
        "format": format,
        "path": out,
        "backend": FORMATS[format],
        "images": len(pixels),
        "top1_agree": agree,
        "max_probability_difference": difference,
        "class_names": model.class_names,
    }


def quantization_mode(model):
    """The mode (`"int8"`, ...) of the first layer `model.quantize(...)` quantized, or `None`."""
    for layer in model.layers:
        mode = getattr(layer.dtype_policy, "quantization_mode", None) or (
            quantization_mode(layer) if hasattr(layer, "layers") else None
        )
        if mode:
            return mode
    return None


def _check_quantization(model, model_path, format):
    mode = quantization_mode(model) if format in QUANTIZED_REFUSED else None
    if mode:
        raise KflowersError(
            f"{model_path} is quantized ({mode}) and {QUANTIZED_REFUSED[format]}: export the float model and "
            "quantize the exported file with its own tools (onnxruntime's quantize_dynamic, the TFLite converter's "
            "optimizations), or export this one as saved_model"
        )


def _remove_stale_temporaries(out):
    """Remove what a killed export to `out` left beside it: only kflowers's temporaries named for `out`."""
    from kflowers.files import TEMPORARY_PREFIX

    parent = os.path.dirname(os.path.abspath(out))
    start = f"{TEMPORARY_PREFIX}{os.path.basename(os.path.abspath(out))}."
    for name in os.listdir(parent) if os.path.isdir(parent) else ():
        if name.startswith(start):
            path = os.path.join(parent, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


@contextlib.contextmanager
def _into_folder(folder):
    """Yield a temporary folder path beside `folder`; on success move its entries into `folder`,
    replacing same-named entries only (the export's own), and leave every other entry alone."""
    from kflowers.files import TEMPORARY_PREFIX

    parent = os.path.dirname(os.path.abspath(folder))
    tmp = os.path.join(parent, f"{TEMPORARY_PREFIX}{os.path.basename(os.path.abspath(folder))}.{os.getpid()}.tmp")
    try:
        yield tmp
        for name in os.listdir(tmp):
            there = os.path.join(folder, name)
            if os.path.isdir(there) and not os.path.islink(there):
                shutil.rmtree(there)
            elif os.path.lexists(there):
                os.remove(there)
            os.replace(os.path.join(tmp, name), there)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------ per format


def _export_saved_model(model, path, size):
    model.export(path, format="tf_saved_model", verbose=False)


def _run_saved_model(path, pixels):
    import tensorflow as tf

    loaded = tf.saved_model.load(path)  # kept alive while `serve` runs: it owns the variables
    return loaded.serve(tf.constant(pixels, tf.float32)).numpy()


def _export_litert(model, path, size):
    model.export(path, format="litert", verbose=False)


def _run_litert(path, pixels):
    import warnings

    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's notice that ai_edge_litert succeeds it
        interpreter = tf.lite.Interpreter(model_path=path)
    entry = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(entry["index"], list(pixels.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(entry["index"], pixels.astype(entry["dtype"]))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _export_onnx(model, path, size):
    import warnings

    import numpy as np

    # Keras's own exporter (torch.onnx underneath, a dynamic batch). A model loaded from a file must have
    # been called once first: Keras 3.15 refuses one that never was ("The model provided has never called").
    model.predict(np.zeros((1, size, size, 3), "float32"), verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Keras's shape bookkeeping
        model.export(path, format="onnx", verbose=False)


def _run_onnx(path, pixels):
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: pixels.astype("float32")})[0]


def _onnx_class_names(path, class_names):
    """Into the ONNX file's own metadata (`metadata_props["class_names"]`, a JSON list)."""
    import onnx

    graph = onnx.load(path)
    onnx.helper.set_model_props(graph, {"class_names": json.dumps(class_names)})
    onnx.save(graph, path)


def _saved_model_class_names(path, class_names):
    """Into the SavedModel folder's `assets/class_names.json`."""
    os.makedirs(os.path.join(path, "assets"), exist_ok=True)
    with open(os.path.join(path, "assets", "class_names.json"), "w") as f:
        json.dump(class_names, f)


def class_names_path(format, out):
    """Where an export of `format` at `out` keeps its class names (for ONNX: in the file's metadata)."""
    return {
        "onnx": out,
        "saved_model": os.path.join(out, "assets", "class_names.json"),
        "litert": os.path.splitext(out)[0] + ".class_names.json",
    }[format]


EXPORTERS = {"saved_model": _export_saved_model, "onnx": _export_onnx, "litert": _export_litert}
CLASS_NAME_WRITERS = {"saved_model": _saved_model_class_names, "onnx": _onnx_class_names}
RUNNERS = {"saved_model": _run_saved_model, "onnx": _run_onnx, "litert": _run_litert}


def _main(argv):
    """`python -m kflowers.export JSON`: the child process of `export_model`; prints its result as JSON."""
    import kflowers  # noqa: F401 - sets the default backend before Keras loads
    from kflowers.errors import user_message
    from kflowers.native_logs import install

    install()  # a command-line child: TensorFlow's start-up lines off its stderr

    arguments = json.loads(argv[0])
    try:
        result = export_model(**arguments)
    except Exception as error:  # noqa: BLE001 - user errors become one line for the parent
        text = user_message(error)
        if text is None:
            raise
        print(json.dumps({"type": type(error).__name__, "message": text}))
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
