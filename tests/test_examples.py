"""Every example runs end to end on drawn images and learns them: its test accuracy is well above chance.

The examples that start from a pretrained backbone get one pretrained here, on other drawn images of the
same five classes (another seed), as ImageNet's backbone was pretrained on other photos than the
flowers': what they show is transfer, not memory of the test images."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


CHANCE = 1 / 5


@pytest.fixture(scope="session")
def pretrained_backbone(tmp_path_factory):
    """A ResNet18 backbone trained on 60 other drawn images (seed 7) at 32 px, as `.weights.h5`."""
    import keras

    import kflowers
    from kflowers.data.demo import draw_dataset

    root = tmp_path_factory.mktemp("pretraining")
    draw_dataset(root / "images", ["daisy", "dandelion", "rose", "sunflower", "tulip"], per_class=12, seed=7)
    keras.utils.set_random_seed(0)
    images = kflowers.FlowerDataset.from_folder(
        kflowers.scan_folder(root / "images"), batch_size=16, image_size=32, shuffle=True
    )
    model = kflowers.build_model(weights=None, image_size=32)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.SGD(1e-2, momentum=0.9), loss)
    model.fit(images, epochs=20, shuffle=False, verbose=0)  # long enough for BatchNorm's moving statistics
    path = str(root / "backbone.weights.h5")
    kflowers.model_parts(model).backbone.save_weights(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, epochs",
    [
        ("scratch.py", 3),
        ("frozen.py", 1),
        ("fine_tune.py", 1),
        ("two_stage.py", 2),
        ("two_stage.py", 1),  # never unfreezes: says so, as `kflowers train` does
        ("discriminative.py", 1),
    ],
)
def test_example_runs(script, epochs, flowers_dir, pretrained_backbone):
    weights = "none" if script == "scratch.py" else pretrained_backbone
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "examples", script),
            "--data",
            flowers_dir,
            "--epochs",
            str(epochs),
            "--image-size",
            "32",
            "--batch-size",
            "16",
            "--weights",
            weights,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    accuracy = re.search(r"final test accuracy: ([01]\.\d{4})", result.stdout)
    assert accuracy, result.stdout[-2000:]
    assert float(accuracy.group(1)) >= 2.5 * CHANCE, result.stdout[-2000:]  # 12 test images: 6 or more right
    # The lesson's table of epochs, from fit's History (val_* is the test split: test_* here).
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| epoch | accuracy | loss | test_accuracy | test_loss")
    assert len(table) == 1 + epochs  # the header, then one row per epoch (both stages' for two_stage.py)
    if script == "two_stage.py" and epochs == 2:
        assert "Epoch 2: backbone unfrozen, learning rate 0.0001" in result.stdout
    if script == "two_stage.py" and epochs == 1:
        assert "warning: --epochs 1 never reaches the unfreeze (epoch 2): this is frozen.py" in result.stdout
