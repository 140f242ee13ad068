"""The Python in the README and in docs/ runs as written, on drawn images and a generated checkpoint."""

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]

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
    ('"holiday-photos"', "FLOWERS"),
]


# Blocks that need several processes, and the test that runs their code in them.
ELSEWHERE = {"jax.distributed.initialize": "test_jax_across_two_processes_trains_as_one_with_the_same_global_batch"}


def python_blocks():
    blocks = []
    for page in PAGES:
        with open(page, encoding="utf-8") as f:
            blocks += re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    return blocks


def test_the_readme_has_a_python_tour():
    assert len(python_blocks()) >= 2
    for old, _ in SUBSTITUTIONS:
        assert any(old in code for code in python_blocks()), f"neither the README nor docs/ says {old!r} any more"


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index, flowers_dir, resnet18_pth, tmp_path, monkeypatch):
    import kflowers

    code = python_blocks()[index]
    for marker, test in ELSEWHERE.items():
        if marker in code:
            pytest.skip(f"needs several processes: tests/test_distributed.py::{test} runs this code")
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
    exec(compile(code, f"python block {index + 1} of README.md and docs/", "exec"), namespace)
    if "result" in namespace:
        assert namespace["result"].finished and len(namespace["result"].rows) == 2
    if "answers" in namespace:
        assert namespace["answers"][0][0][0] in ["daisy", "dandelion", "rose", "sunflower", "tulip"]
        assert namespace["report"]["top1_agree"] and os.path.exists(tmp_path / "flowers.onnx")
