"""Every bad input is one line on stderr and a non-zero exit, and leaves the run directory as it was.

One table: each row is an input a user (or an adversarial tester) gave the command line, the exit status
and the one line it must produce, and what the run directory must hold afterwards.
"""

import json
import os
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from kflowers.cli.main import main as kflowers_main
from clitools import TRAIN_FLAGS
from clitools import kflowers

# The rows are backend-independent up to Keras's import: the torch run of CI covers them.
pytestmark = pytest.mark.slow

FAST = ["--strategy", "finetune", "--epochs", "1", "--weights", "none", "--quiet", *TRAIN_FLAGS[:4]]


@pytest.fixture(scope="module")
def place(tmp_path_factory, flowers_dir):
    """Things the rows point at: a model, damaged copies of it, another Keras model, small datasets."""
    import keras

    import kflowers as kf

    root = tmp_path_factory.mktemp("inputs")
    model = kf.build_model(num_classes=5, weights=None, image_size=32)
    kf.save_model(model, root / "model.keras", ["daisy", "dandelion", "rose", "sunflower", "tulip"])
    data = (root / "model.keras").read_bytes()
    (root / "truncated.keras").write_bytes(data[: len(data) // 2])
    (root / "noise.keras").write_bytes(np.random.default_rng(0).bytes(5000))
    for name, names in [("fewer", ["a", "b"]), ("string", "daisy"), ("repeated", ["a"] * 5)]:
        edit_class_names(root / "model.keras", root / f"{name}.keras", names)
    replace_entry(root / "model.keras", root / "bomb.keras", b" " * 2_000_000)  # deflates to a few kB
    replace_entry(root / "model.keras", root / "nested.keras", b"[" * 200_000)
    wide = kf.build_model(num_classes=5, weights=None, image_size=9000)  # no pixels allocated until predict
    kf.save_model(wide, root / "wide.keras", ["daisy", "dandelion", "rose", "sunflower", "tulip"])
    inputs = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    kf.save_model(keras.Model(inputs, keras.layers.Dense(5, name="head")(pooled)), root / "plain.keras", list("abcde"))
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    other.save(root / "other.keras")
    shutil.copy(root / "model.keras", root / "traversal.keras")
    with zipfile.ZipFile(root / "traversal.keras", "a") as archive:
        archive.writestr("../escaped.txt", "outside")
    (root / "file").write_text("not a folder")
    tiny = root / "tiny"  # 2 images in each of 5 classes: too few for a 20% test split
    for name in "abcde":
        (tiny / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 40), (50 * i, 40, 90)).save(tiny / name / f"{i}.png")
    single = root / "single"
    shutil.copytree(os.path.join(flowers_dir, "rose"), single / "rose")
    image = sorted(os.listdir(single / "rose"))[0]
    return {"root": str(root), "data": flowers_dir, "image": str(single / "rose" / image)}


CLASS_NAMES = "/kflowers_class_names.json"  # where a .keras file's class names are (in its assets)


def replace_entry(source, target, body):
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        for item in old.infolist():
            new.writestr(item.filename, body if item.filename.endswith(CLASS_NAMES) else old.read(item))


def edit_class_names(source, target, names):
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            body = old.read(item)
            if item.filename.endswith(CLASS_NAMES):
                body = json.dumps({"class_names": names})
            new.writestr(item, body)


# (id, arguments with {root}, {data}, {image} filled in, the one line's text)
ROWS = [
    (
        "out is a file",
        ["train", "--data", "{data}", "--out", "{root}/file", *FAST],
        "--out {root}/file is a file, not a folder",
    ),
    ("out name too long", ["train", "--data", "{data}", "--out", "{root}/" + "x" * 300, *FAST], "File name too long"),
    (
        "too few images for the split",
        ["train", "--data", "{root}/tiny", "--out", "{root}/run", *FAST],
        "10 images are too few",
    ),
    (
        "one class",
        ["train", "--data", "{root}/single", "--out", "{root}/run", *FAST],
        "a classifier needs at least 2 class folders",
    ),
    ("negative seed", ["train", "--data", "{data}", "--seed", "-1"], "argument --seed: must be an integer"),
    ("huge seed", ["train", "--data", "{data}", "--seed", "5000000000"], "argument --seed: must be an integer"),
    ("infinite lr", ["train", "--data", "{data}", "--lr", "inf"], "argument --lr: must be a finite positive"),
    ("zero lr", ["train", "--data", "{data}", "--lr", "0"], "argument --lr: must be a finite positive"),
    ("nan lr", ["train", "--data", "{data}", "--lr", "nan"], "argument --lr: must be a finite positive"),
    (
        "image size 1",
        ["train", "--data", "{data}", "--image-size", "1"],
        "argument --image-size: must be from 8 to 4096",
    ),
    # issue 31, row 13: 100000 px would allocate 30 GB an image
    (
        "image size 100000",
        ["train", "--data", "{data}", "--image-size", "100000"],
        "argument --image-size: must be from 8 to 4096 pixels, got 100000",
    ),
    # row 12: torch's BatchNorm can't normalise over one image
    ("batch size 1", ["train", "--data", "{data}", "--batch-size", "1"], "argument --batch-size: must be at least 2"),
    # row 15: a .keras with a member outside the archive
    (
        "a .keras with ../ members",
        ["predict", "--model", "{root}/traversal.keras", "{image}"],
        "holds an entry outside the archive ('../escaped.txt')",
    ),
    (
        "lr that diverges",
        ["train", "--data", "{data}", "--out", "{root}/diverged", *FAST, "--lr", "1e30"],
        "training diverged: the loss became nan at epoch 1",
    ),
    ("unknown command", ["trian"], "argument COMMAND: invalid choice: 'trian'"),
    (
        "--without on the lesson's recipe",
        ["train", "--data", "{data}", "--without", "ema"],
        "--without is for --recipe modern",
    ),
    (
        "--budget and --epochs",
        ["train", "--data", "{data}", "--budget", "5", "--epochs", "3"],
        "give --epochs or --budget, not both",
    ),
    (
        "a budget too short for one epoch",
        ["train", "--data", "{data}", "--out", "{root}/short", *FAST[:2], *FAST[4:], "--budget", "0.001"],
        "--budget 0.001 minutes is too short: one epoch with its scoring takes about",
    ),
    (
        "another Keras model",
        ["predict", "--model", "{root}/other.keras", "{image}"],
        "is a Keras model but not a kflowers classifier",
    ),
    ("truncated model", ["predict", "--model", "{root}/truncated.keras", "{image}"], "is corrupt"),
    ("noise as a model", ["evaluate", "--model", "{root}/noise.keras", "--data", "{data}"], "is corrupt"),
    (
        "fewer class names",
        ["predict", "--model", "{root}/fewer.keras", "{image}"],
        "its class names (2) don't match its 5 outputs",
    ),
    ("class names a string", ["predict", "--model", "{root}/string.keras", "{image}"], "class names"),
    (
        "repeated class names",
        ["predict", "--model", "{root}/repeated.keras", "{image}"],
        "expected a list of distinct strings",
    ),
    ("missing image", ["predict", "--model", "{root}/model.keras", "{root}/none.jpg"], "no such file or folder"),
    (
        "class names entry of 2 MB",
        ["predict", "--model", "{root}/bomb.keras", "{image}"],
        "its kflowers_class_names.json declares 2,000,000 bytes",
    ),
    (
        "explain a model that is not a ResNet",
        ["explain", "--model", "{root}/plain.keras", "{image}", "--out", "{root}/explained"],
        "is not a kflowers classifier: it has no keras-hub ResNet backbone",
    ),
    ("deeply nested class names", ["predict", "--model", "{root}/nested.keras", "{image}"], "are damaged"),
    (
        "a 9000 px model",
        ["predict", "--model", "{root}/wide.keras", "{image}"],
        "declares 9000 px input images (at most 8192 px)",
    ),
    ("download into a file", ["download", "--dir", "{root}/file/sub"], "Not a directory"),
    ("show a missing folder", ["show", "--data", "{root}/nothing"], "dataset folder not found"),
    (
        "resume with nothing to resume",
        ["train", "--data", "{data}", "--out", "{root}/file", "--resume", *FAST],
        "is a file, not a folder",
    ),
]


# Most rows call `kflowers.cli.main` in this process (an uncaught exception fails the test as a traceback
# would); these go through `python -m kflowers` as a user's shell does.
IN_SUBPROCESS = {"unknown command", "truncated model", "lr that diverges"}


def run_command(args, capsys, in_subprocess):
    """The exit status and stderr of `kflowers ARGS`."""
    if in_subprocess:
        result = kflowers(*args, check=False, timeout=300)
        return result.returncode, result.stderr
    capsys.readouterr()
    try:
        code = kflowers_main(args)
    except SystemExit as exit:  # argparse's errors
        code = exit.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name, args, text", ROWS, ids=[row[0] for row in ROWS])
def test_bad_input_is_one_line(place, capsys, name, args, text):
    args = [a.format(**place) for a in args]
    code, stderr = run_command(args, capsys, name in IN_SUBPROCESS)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    assert len(lines) == 1 or all(line.startswith("WARNING") for line in lines[:-1]), lines
    assert lines[-1].startswith(f"kflowers {args[0]}: error: ") or lines[-1].startswith("kflowers: error: ")
    assert text.format(**place) in lines[-1]
    if "--out" in args and args[0] == "train":
        out = args[args.index("--out") + 1]
        if os.path.isdir(out):  # a run that could not start or finish leaves no model and no metrics
            assert not {"model.keras", "metrics.json"} & set(os.listdir(out))
            # nothing hidden but the marker of a run that had started (kflowers.runs.directory)
            assert not [n for n in os.listdir(out) if n.startswith(".") and n != ".kflowers-run"], os.listdir(out)


def run_in_process(capsys, *args):
    capsys.readouterr()
    code = kflowers_main([str(a) for a in args])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_a_last_training_batch_of_one_image_joins_the_one_before(flowers_dir, tmp_path, capsys):
    # 48 training images in batches of 47: torch's BatchNorm refused the last batch of one image.
    out = tmp_path / "run"
    code, lines = run_in_process(capsys, "train", "--data", flowers_dir, "--out", out, *FAST[:6], "--batch-size", "47")
    assert code == 0, lines
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 1


@pytest.fixture
def finished_run(flowers_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code, lines = run_in_process(capsys, "train", "--data", flowers_dir, "--out", out, *FAST)
    assert code == 0, lines
    return out


def _write(path, data):
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)


def _junk_backup(out):
    _write(out / "backup" / "state.npz", b"x")


DAMAGE = {
    "backup not a zip": _junk_backup,
    "backup truncated": lambda out: _write(out / "backup" / "state.npz", b"PK\x03\x04 half a zip"),
    "backup meta not JSON": lambda out: (
        (out / "backup").mkdir(),
        np.savez(out / "backup" / "state.npz", meta=np.array("{not json")),
    ),
    "config.json a list": lambda out: (_junk_backup(out), _write(out / "config.json", b"[1, 2]")),
    "split.json null": lambda out: (_junk_backup(out), _write(out / "split.json", b"null")),
    "metrics.json truncated": lambda out: _write(out / "metrics.json", b'{"test_accuracy": 0.'),
    # issue 31, row 9: a backup whose epoch disagrees with its history rows
    "backup epoch 4, history of 1": lambda out: (
        (out / "backup").mkdir(),
        np.savez(
            out / "backup" / "state.npz",
            meta=np.array(json.dumps({"epoch": 4, "stage": "all", "rows": [{"epoch": 1}], "best_weights": None})),
        ),
    ),
}
DAMAGE_TEXT = {
    "backup meta not JSON": "backup/state.npz is damaged (JSONDecodeError",
    "backup not a zip": "backup/state.npz is damaged",
    "backup truncated": "backup/state.npz is damaged",
    "config.json a list": "holds no readable config.json and split.json to resume from",
    "split.json null": "holds no readable config.json and split.json to resume from",
    "metrics.json truncated": "metrics.json is damaged",
    "backup epoch 4, history of 1": "records 4 finished epoch(s) but the history of 1: it is damaged",
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_run_directory_is_one_line_on_resume(flowers_dir, finished_run, capsys, damage):
    DAMAGE[damage](finished_run)
    code, lines = run_in_process(capsys, "train", "--data", flowers_dir, "--out", finished_run, *FAST, "--resume")
    assert code == 2 and len(lines) == 1, lines
    assert DAMAGE_TEXT[damage] in lines[0]


def test_a_backend_keras_does_not_have_is_one_line(monkeypatch, capsys, flowers_dir):
    monkeypatch.setenv("KERAS_BACKEND", "nonsense")
    code, lines = run_in_process(capsys, "train", "--data", flowers_dir)
    assert code == 2 and lines == [
        "kflowers train: error: KERAS_BACKEND=nonsense is not a Keras backend; use one of torch, jax, "
        "tensorflow, numpy, openvino (or unset it for torch)"
    ]


def test_a_model_whose_test_outputs_are_not_finite_is_not_a_success(flowers_dir, tmp_path, capsys, monkeypatch):
    """Issue 31, row 8: the training loss can stay finite while the saved model answers NaN; such a run
    ends as an error and saves no model."""
    from kflowers.runs import run as run_module

    real = run_module.evaluate_model

    def nan_outputs(*args, **kwargs):
        results = real(*args, **kwargs)
        results["logits"] = np.full_like(results["logits"], np.nan)
        return results

    monkeypatch.setattr(run_module, "evaluate_model", nan_outputs)
    out = tmp_path / "run"
    code, lines = run_in_process(capsys, "train", "--data", flowers_dir, "--out", out, *FAST)
    assert code == 2 and len(lines) == 1, lines
    assert "outputs on the test images are not finite" in lines[0]
    assert not (out / "model.keras").exists() and not (out / "metrics.json").exists()


def test_a_full_temporary_folder_while_loading_says_the_disk_is_full(place, monkeypatch):
    """Issue 31, row 11."""
    import errno

    import keras

    import kflowers as kf
    from kflowers.errors import WeightsError

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/tmp/keras-extract")

    monkeypatch.setattr(keras.models, "load_model", full)
    with pytest.raises(WeightsError, match="No space left on device: /tmp/keras-extract \\(free some space"):
        kf.load_model(os.path.join(place["root"], "model.keras"))


def test_evaluate_says_how_many_of_the_runs_test_images_are_missing(flowers_dir, finished_run, tmp_path, capsys):
    """Issue 31, row 10: test images named in split.json but not in --data are counted, not silently dropped."""
    data = tmp_path / "data"
    shutil.copytree(flowers_dir, data)
    config = json.loads((finished_run / "config.json").read_text())
    split = json.loads((finished_run / "split.json").read_text())
    for path in split["test"][:3]:
        os.remove(data / os.path.relpath(path, config["data"]))
    capsys.readouterr()
    code = kflowers_main(["evaluate", "--model", str(finished_run / "model.keras"), "--data", str(data), "--json"])
    captured = capsys.readouterr()
    assert code == 0
    summary = json.loads(captured.out)
    assert summary["missing"] == 3 and summary["images"] == len(split["test"]) - 3


@pytest.mark.parametrize("size, who", [(2, "rank 1 of the torchrun job stopped"), (4, "one of ranks 1, 2, 3")])
def test_a_lost_torchrun_process_is_one_line_naming_it(monkeypatch, capsys, flowers_dir, size, who):
    """Issue 31, row 14: gloo's error when another rank is killed (a full RuntimeError traceback before) is one
    line on rank 0 that names the lost rank and says how to go on."""
    import torch.distributed as dist

    from kflowers.cli import commands

    def lost(args):
        raise RuntimeError(
            "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:61023"
        )

    monkeypatch.setitem(commands.COMMANDS, "train", lost)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", str(size))
    code, lines = run_in_process(capsys, "train", "--data", flowers_dir)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"kflowers train: error: {who}") and "--resume" in lines[0]
    monkeypatch.setattr(dist, "is_initialized", lambda: False)  # not under torchrun: a programming error
    with pytest.raises(RuntimeError):
        kflowers_main(["train", "--data", flowers_dir])
