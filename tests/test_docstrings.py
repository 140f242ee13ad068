"""Every fenced example in kflowers's docstrings runs.

Each example runs in the namespace of its module (and kflowers's public
names), in a folder that holds
what the examples name (a drawn `flowers` dataset, `rose.jpg`, a finished
run in `runs/latest`) and with the names they assume: a 64 px `model` and
its `train_ds`/`test_ds`, `folder`, `pixels`, `loss`, `optimizer`, `rank`,
`world_size`. Nothing is downloaded: `"imagenet"` weights are a generated
checkpoint and `download_flowers()` returns the drawn dataset (the real
download code is tested in test_data.py and test_model.py).
"""

import importlib
import inspect
import pkgutil
import re
import shutil
import textwrap

import keras
import numpy as np
import pytest

import kflowers
from kflowers.data.demo import draw_dataset

pytestmark = [
    pytest.mark.one_backend,
    pytest.mark.skipif(keras.backend.backend() != "torch", reason="the examples are written for the torch backend"),
]

FENCE = re.compile(r"```python\n(.*?)```", re.S)
CLASSES = ["daisy", "dandelion", "rose", "sunflower", "tulip"]


def modules():
    """Every kflowers module but `__main__` (importing it runs the command line), each once: a short name
    (`kflowers.export`) is the module it stands for."""
    names = [info.name for info in pkgutil.walk_packages(kflowers.__path__, "kflowers.")]
    found = [importlib.import_module(name) for name in names if name != "kflowers.__main__"]
    return list({id(module): module for module in found}.values())


def fenced_examples():
    """`(id, module, code)` of every ```python block in a kflowers docstring (modules, classes, functions,
    methods)."""
    found = []
    for module in modules():
        objects = [module]
        for _, value in vars(module).items():
            if getattr(value, "__module__", None) == module.__name__:
                objects.append(value)
                if inspect.isclass(value):
                    objects += [m for m in vars(value).values() if inspect.isfunction(m)]
        for obj in objects:
            for n, match in enumerate(FENCE.finditer(obj.__doc__ or "")):
                name = getattr(obj, "__qualname__", module.__name__)
                found.append((f"{module.__name__}:{name}:{n}", module, textwrap.dedent(match.group(1))))
    return found


EXAMPLES = fenced_examples()


def test_the_package_has_fenced_examples_and_no_doctest_prompts():
    assert len(EXAMPLES) >= 30
    for module in modules():
        assert ">>> " not in inspect.getsource(module), f"{module.__name__}: a >>> example (write it fenced)"


@pytest.fixture(scope="module")
def workplace(tmp_path_factory, resnet18_pth):
    """A folder with `flowers/`, `rose.jpg` and a finished run in `runs/latest`."""
    root = tmp_path_factory.mktemp("examples")
    draw_dataset(root / "flowers", CLASSES, per_class=12, size=48, seed=0)
    shutil.copy(root / "flowers" / "rose" / "rose_002.jpg", root / "rose.jpg")
    from kflowers.runs.run import train_run

    options = kflowers.RunOptions(
        data=str(root / "flowers"),
        out=str(root / "runs" / "latest"),
        strategy="scratch",
        weights="none",
        epochs=1,
        image_size=32,
        batch_size=16,
        quiet=True,
    )
    train_run(options)
    return root


@pytest.fixture
def names(workplace, resnet18_pth, monkeypatch):
    """The names the examples assume, in `workplace`."""
    from kflowers.data import download
    from kflowers.models import weights

    monkeypatch.chdir(workplace)
    monkeypatch.setattr(weights, "fetch_imagenet_checkpoint", lambda *args, **kwargs: resnet18_pth)
    monkeypatch.setattr(download, "download_flowers", lambda *args, **kwargs: str(workplace / "flowers"))
    keras.utils.set_random_seed(0)
    folder = kflowers.scan_folder("flowers")
    train, test = kflowers.split_dataset(folder, seed=0)
    model = kflowers.build_model(weights=None, image_size=64)
    model.compile(keras.optimizers.SGD(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return {
        "kflowers": kflowers,
        "keras": keras,
        "np": np,
        "folder": folder,
        "model": model,
        "train_ds": kflowers.FlowerDataset.from_folder(train, batch_size=16, image_size=64, shuffle=True),
        "test_ds": kflowers.FlowerDataset.from_folder(test, batch_size=16, image_size=64),
        "pixels": kflowers.read_image("rose.jpg"),
        "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        "optimizer": keras.optimizers.SGD(1e-2),
        "rank": 0,
        "world_size": 1,
    }


@pytest.mark.parametrize("name, module, code", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_runs(name, module, code, names):
    if "export_model(" in code:
        pytest.importorskip("onnx", reason="the ONNX export is an optional extra (pip install -e .[export])")
    public = {name: getattr(kflowers, name) for name in kflowers.__all__}  # `from kflowers import *`
    namespace = {**public, **vars(module), **names}  # the module's names as patched by `names` (download, weights)
    exec(compile(code, name, "exec"), namespace)
