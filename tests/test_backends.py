"""Across backends: a model saved under one loads under the others and
predicts the same; safetensors and Keras weights load without torch."""

import os
import subprocess
import sys

import numpy as np
import pytest

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
BACKENDS = ["torch", "jax", "tensorflow"]

# Each process saves its own backend's model (once) and predicts with every model saved so far.
SAVE_AND_LOAD = """
import os, sys, numpy as np, kflowers, keras
folder, mine = sys.argv[1], keras.backend.backend()
if not os.path.exists(folder + "/" + mine + ".keras"):
    keras.utils.set_random_seed(7)
    model = kflowers.build_model(num_classes=3, weights=None, image_size=32)
    kflowers.save_model(model, folder + "/" + mine + ".keras", ["a", "b", "c"])
images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("uint8")
out = {}
for source in sys.argv[2:]:
    if os.path.exists(folder + "/" + source + ".keras"):
        model = kflowers.load_model(folder + "/" + source + ".keras")
        assert model.class_names == ["a", "b", "c"]
        out[source] = model.predict(images, verbose=0)
np.savez(folder + "/predicted-by-" + mine + "-" + str(len(out)) + ".npz", **out)
"""


def available(backend):
    module = {"torch": "torch", "jax": "jax", "tensorflow": "tensorflow"}[backend]
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def run(code, backend, *args):
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        env={**ENV, "KERAS_BACKEND": backend},
        timeout=300,
    )
    assert result.returncode == 0, f"{backend}: {result.stderr[-3000:]}"


@pytest.mark.slow
def test_a_model_saved_under_one_backend_predicts_the_same_under_each_other(tmp_path):
    backends = [b for b in BACKENDS if available(b)]
    if len(backends) < 2:
        pytest.skip(f"needs two backends installed, found {backends}")
    # In order, then all but the last again: every backend loads every file, in 5 processes rather than 6.
    for backend in [*backends, *backends[:-1]]:
        run(SAVE_AND_LOAD, backend, tmp_path, *backends)
    predicted = {}  # (loaded by, saved by) -> predictions
    for path in tmp_path.glob("predicted-by-*.npz"):
        by = path.stem.split("-")[2]
        for source, values in np.load(path).items():
            predicted[by, source] = values
    assert len(predicted) == len(backends) ** 2
    for source in backends:
        for backend in backends:
            np.testing.assert_allclose(
                predicted[backend, source],
                predicted[source, source],
                atol=1e-4,
                err_msg=f"saved by {source}, loaded by {backend}",
            )


WITHOUT_TORCH = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):  # as if torch were not installed
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch'")

sys.meta_path.insert(0, NoTorch())
import numpy as np, kflowers
from kflowers.errors import WeightsError
model = kflowers.build_model(weights=sys.argv[1], image_size=32)
print("SAFETENSORS OK")
model = kflowers.build_model(weights=sys.argv[2], image_size=32)
print("H5 OK")
try:
    kflowers.build_model(weights=sys.argv[3], image_size=32)
except WeightsError as error:
    print("PTH:", error)
"""


@pytest.mark.slow
def test_safetensors_and_h5_load_without_torch_and_pth_says_it_needs_it(tmp_path):
    from safetensors.numpy import save_file

    from checkpoints import resnet18_state_dict

    backend = next((b for b in ("jax", "tensorflow") if available(b)), None)
    if backend is None:
        pytest.skip("needs a backend other than torch")
    state = resnet18_state_dict(seed=4)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    import kflowers

    kflowers.build_model(weights=None, image_size=32).get_layer("backbone").save_weights(str(tmp_path / "b.weights.h5"))
    (tmp_path / "w.pth").write_bytes(b"whatever")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            WITHOUT_TORCH,
            str(tmp_path / "w.safetensors"),
            str(tmp_path / "b.weights.h5"),
            str(tmp_path / "w.pth"),
        ],
        capture_output=True,
        text=True,
        env={**ENV, "KERAS_BACKEND": backend},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SAFETENSORS OK" in result.stdout and "H5 OK" in result.stdout
    assert "PTH: reading" in result.stdout and "needs PyTorch (pip install torch)" in result.stdout
