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
    ('"runs/latest/model.keras"', "MODEL"),
    ('"my_rose.jpg"', "IMAGE"),
]


def python_blocks():
    with open(README, encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_the_readme_has_a_python_tour():
    assert len(python_blocks()) >= 2
    for old, _ in SUBSTITUTIONS:
        assert any(old in code for code in python_blocks()), f"the README no longer says {old!r}"


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index, flowers_dir, resnet18_pth, tmp_path, monkeypatch):
    import kflowers

    code = python_blocks()[index]
    for old, new in SUBSTITUTIONS:
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    model = str(tmp_path / "model.keras")
    kflowers.save_model(
        kflowers.build_model(num_classes=5, weights=None, image_size=32),
        model,
        ["daisy", "dandelion", "rose", "sunflower", "tulip"],
    )
    image = kflowers.scan_folder(flowers_dir).paths[0]
    namespace = {"FLOWERS": flowers_dir, "WEIGHTS": resnet18_pth, "MODEL": model, "IMAGE": image}
    exec(compile(code, f"README.md python block {index + 1}", "exec"), namespace)
    if "result" in namespace:
        assert namespace["result"].finished and len(namespace["result"].rows) == 2
    if "answers" in namespace:
        assert namespace["answers"][0][0][0] in ["daisy", "dandelion", "rose", "sunflower", "tulip"]
        assert namespace["report"]["top1_agree"] and os.path.exists(tmp_path / "flowers.onnx")
