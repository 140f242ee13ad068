import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kflowers.demo import draw_dataset  # noqa: E402

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
