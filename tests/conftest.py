import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several test processes share the cores: each gets its share of compute threads (and so do the
    # subprocesses it starts), or their spinning thread pools slow every process down many times over.
    share = str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ.setdefault(variable, share)
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kflowers.data.demo import draw_dataset  # noqa: E402

CLASSES = ["daisy", "dandelion", "rose", "sunflower", "tulip"]


@pytest.fixture(scope="session")
def flowers_dir(tmp_path_factory):
    """A small drawn dataset: 5 classes x 12 images of 48x48 (JPEG and PNG)."""
    root = tmp_path_factory.mktemp("flowers")
    draw_dataset(root, CLASSES, per_class=12, size=48, seed=0)
    return str(root)


@pytest.fixture(scope="session")
def resnet18_pth(tmp_path_factory):
    from checkpoints import resnet18_state_dict, save_pth

    pytest.importorskip("torch", reason="writing a .pth checkpoint needs torch")
    path = tmp_path_factory.mktemp("weights") / "resnet18-random.pth"
    return str(save_pth(resnet18_state_dict(seed=1), path))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def small_model_file(tmp_path_factory):
    """A 32 px kflowers classifier (random weights, seed 0) saved with the five class names."""
    import keras

    import kflowers

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    kflowers.save_model(kflowers.build_model(num_classes=5, weights=None, image_size=32), path, CLASSES)
    return path
