"""The README's Python tour runs as written, on drawn images and a generated checkpoint."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")

# What a test can't use (the network, 224 px, the lesson's epochs), and what it uses instead.
SUBSTITUTIONS = [
    ("kflowers.download_flowers()", "FLOWERS"),
    ('weights="imagenet"', "weights=WEIGHTS"),
    ("image_size=224", "image_size=32"),
    ("epochs=10", "epochs=2"),
    ("UnfreezeBackbone(epoch=5,", "UnfreezeBackbone(epoch=1,"),
    ('"two-stage", train_ds, test_ds,', '"two-stage", train_ds, test_ds, epochs=2, verbose=0,'),
]


def python_blocks():
    with open(README, encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_the_readme_has_a_python_tour():
    assert len(python_blocks()) >= 1


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index, flowers_dir, resnet18_pth, tmp_path, monkeypatch):
    code = python_blocks()[index]
    for old, new in SUBSTITUTIONS:
        assert old in code, f"the README no longer says {old!r}: update SUBSTITUTIONS"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    namespace = {"FLOWERS": flowers_dir, "WEIGHTS": resnet18_pth}
    exec(compile(code, f"README.md python block {index + 1}", "exec"), namespace)
    if "result" in namespace:
        assert namespace["result"].finished and len(namespace["result"].rows) == 2
