"""Every example runs end to end on drawn images and prints a test accuracy."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, epochs",
    [
        ("scratch.py", 1),
        ("frozen.py", 1),
        ("fine_tune.py", 1),
        ("two_stage.py", 2),
        ("two_stage.py", 1),  # never unfreezes: says so, as `kflowers train` does
        ("discriminative.py", 1),
    ],
)
def test_example_runs(script, epochs, flowers_dir, resnet18_pth):
    weights = "none" if script == "scratch.py" else resnet18_pth
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
    assert re.search(r"final test accuracy: [01]\.\d{4}", result.stdout), result.stdout[-2000:]
    # The lesson's table of epochs, from fit's History (val_* is the test split: test_* here).
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| epoch | accuracy | loss | test_accuracy | test_loss")
    assert len(table) == 1 + epochs  # the header, then one row per epoch (both stages' for two_stage.py)
    if script == "two_stage.py" and epochs == 2:
        assert "Epoch 2: backbone unfrozen, learning rate 0.0001" in result.stdout
    if script == "two_stage.py" and epochs == 1:
        assert "warning: --epochs 1 never reaches the unfreeze (epoch 2): this is frozen.py" in result.stdout
