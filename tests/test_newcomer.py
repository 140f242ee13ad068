"""What a newcomer meets first: the backend kflowers promised (or a word about it), and a Python run
that never silently reuses the last one's backup."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import kflowers
from kflowers.data.dataset import FlowerDataset
from kflowers.errors import BackupMismatch

pytestmark = pytest.mark.one_backend  # the CLI's and the run directory's bookkeeping: the torch pass covers it

SIZE = 32


def python(code):
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_keras_imported_first_without_a_backend_is_said_once():
    pytest.importorskip("tensorflow", reason="Keras's own default backend, tensorflow, is not installed")
    result = python("import keras, kflowers; print(keras.backend.backend())")
    assert result.stdout.strip() == "tensorflow"
    warnings = [line for line in result.stderr.splitlines() if "UserWarning" in line]
    assert len(warnings) == 1 and "import kflowers before keras" in warnings[0]


@pytest.mark.slow
def test_kflowers_imported_first_runs_on_torch_without_a_word():
    result = python("import kflowers, keras; print(keras.backend.backend())")
    assert result.stdout.strip() == "torch" and "UserWarning" not in result.stderr


@pytest.fixture(scope="module")
def data(flowers_dir):
    train_split, test_split = kflowers.split_dataset(kflowers.scan_folder(flowers_dir), seed=0)
    return (
        FlowerDataset.from_folder(train_split, batch_size=16, image_size=SIZE, shuffle=True),
        FlowerDataset.from_folder(test_split, batch_size=32, image_size=SIZE),
    )


def train(data, backup_dir, **kwargs):
    keras.utils.set_random_seed(0)
    model = kflowers.build_model(weights=None, image_size=SIZE)
    return model, kflowers.train(model, "scratch", *data, epochs=1, verbose=0, backup_dir=str(backup_dir), **kwargs)


@pytest.mark.slow  # backend-independent bookkeeping: the torch pass covers it
def test_a_finished_python_run_removes_its_backup_and_the_next_one_trains(data, tmp_path):
    first, _ = train(data, tmp_path / "backup")
    assert not os.path.exists(tmp_path / "backup")
    second, result = train(data, tmp_path / "backup")
    assert len(result.rows) == 1  # trained again, not "resumed" with nothing to do
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_finished_backup_is_never_resumed_silently(data, tmp_path):
    train(data, tmp_path / "backup", keep_backup=True)
    assert os.path.exists(tmp_path / "backup" / "state.npz")
    with pytest.raises(BackupMismatch, match="is of a run that finished: nothing is left to train"):
        train(data, tmp_path / "backup")


def test_a_backup_from_another_backend_is_refused(data, tmp_path):
    from kflowers.training import backup

    train(data, tmp_path / "backup", keep_backup=True)
    state = backup.load(str(tmp_path / "backup"))
    state.fingerprint["backend"] = "jax" if keras.backend.backend() != "jax" else "torch"
    state.epoch, state.rows = 0, []  # not finished, and its history agrees (a backup of epoch 0 has no rows)
    backup.save(str(tmp_path / "backup"), state)
    with pytest.raises(BackupMismatch, match=r"is of another run \(backend differ"):
        train(data, tmp_path / "backup")


@pytest.fixture(scope="module")
def trained_run(flowers_dir, tmp_path_factory):
    from kflowers.cli.main import main

    out = tmp_path_factory.mktemp("evaluate") / "run"
    args = ["train", "--data", flowers_dir, "--out", str(out), "--strategy", "scratch", "--epochs", "1"]
    assert main([*args, "--image-size", str(SIZE), "--batch-size", "16", "--quiet"]) == 0
    return out


def evaluate(capsys, *args):
    from kflowers.cli.main import main

    capsys.readouterr()
    code = main(["evaluate", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_evaluate_scores_the_runs_test_split_by_default(trained_run, flowers_dir, capsys):
    """On the run's own data, what the model did not train on is its test split."""
    import json

    split = json.loads((trained_run / "split.json").read_text())
    code, out, _ = evaluate(capsys, "--model", trained_run / "model.keras", "--data", flowers_dir)
    assert code == 0 and f"on {len(split['test'])} images (every image in {flowers_dir} the model did not" in out
    assert "note:" not in out  # none of them trained on
    assert "confusion matrix (rows: true class, columns: predicted)" in out and "| true | daisy |" in out
    # Another spelling of the same folder finds the same images.
    relative = os.path.relpath(flowers_dir)
    code, out, _ = evaluate(capsys, "--model", trained_run / "model.keras", "--data", relative)
    assert f"on {len(split['test'])} images" in out


@pytest.mark.parametrize("side", ["train", "all"])
def test_evaluating_training_images_says_how_many(trained_run, flowers_dir, capsys, side):
    import json

    split = json.loads((trained_run / "split.json").read_text())
    code, out, _ = evaluate(capsys, "--model", trained_run / "model.keras", "--data", flowers_dir, "--split", side)
    images = len(split["train"]) + (len(split["test"]) if side == "all" else 0)
    assert code == 0 and f"on {images} images" in out
    assert f"note: {len(split['train'])} of these {images} images are images the model trained on" in out
    code, out, _ = evaluate(
        capsys, "--model", trained_run / "model.keras", "--data", flowers_dir, "--split", side, "--json"
    )
    summary = json.loads(out)
    assert summary["split"] == side and summary["images"] == images and summary["trained_on"] == len(split["train"])


def test_by_default_evaluate_scores_every_image_the_model_did_not_train_on(trained_run, flowers_dir, tmp_path, capsys):
    """Issue 34, item 13: on the run's own data that is its test side (the training images left out, and
    said); a folder of new photos is scored whole, by default, with no --split."""
    import json

    from kflowers.data.demo import draw_dataset

    split = json.loads((trained_run / "split.json").read_text())
    code, out, _ = evaluate(capsys, "--model", trained_run / "model.keras", "--data", flowers_dir, "--json")
    summary = json.loads(out)
    assert code == 0 and summary["split"] == "unseen"
    assert summary["images"] == len(split["test"]) and summary["left_out_as_training"] == len(split["train"])
    code, out, _ = evaluate(capsys, "--model", trained_run / "model.keras", "--data", flowers_dir)
    assert f"left out: {len(split['train'])} images the model trained on" in out
    new = draw_dataset(tmp_path / "new", ["daisy", "rose", "tulip"], per_class=3, size=48, seed=7)
    for path in sorted(tmp_path.glob("new/*/*")):  # photos of one's own, named as a camera names them
        path.rename(path.with_name("IMG_" + path.name))
    code, out, err = evaluate(capsys, "--model", trained_run / "model.keras", "--data", new, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["images"] == 9 and summary["left_out_as_training"] == 0 and summary["trained_on"] == 0


def test_a_copy_of_a_training_image_is_found_by_its_bytes(trained_run, flowers_dir, tmp_path, capsys):
    import json
    import shutil

    split = json.loads((trained_run / "split.json").read_text())
    copy = tmp_path / "copies"
    for name in ("daisy", "rose"):
        (copy / name).mkdir(parents=True)
    shutil.copy(next(p for p in split["train"] if "/daisy/" in p), copy / "daisy" / "renamed.png")
    shutil.copy(next(p for p in split["test"] if "/rose/" in p), copy / "rose" / "unseen.png")
    code, out, _ = evaluate(capsys, "--model", trained_run / "model.keras", "--data", copy, "--split", "all")
    assert code == 0 and "note: 1 of these 2 images are images the model trained on" in out


def test_evaluate_at_another_image_size_is_one_line(trained_run, flowers_dir, capsys):
    code, _, err = evaluate(capsys, "--model", trained_run / "model.keras", "--data", flowers_dir, "--image-size", "64")
    assert code == 2 and "--image-size 64: the model takes 32 px images" in err.strip().splitlines()[-1]


def test_config_json_says_what_ran(trained_run):
    import json

    config = json.loads((trained_run / "config.json").read_text())
    assert config["learning_rates"] == {"head": 0.01}  # the lesson's scratch rate, though --lr was not given
    assert config["workers"] == 1 and config["precision"] == "float32" and config["image_size"] == SIZE
    assert config["recipe"] == "lesson" and config["recipe_settings"]["ema_momentum"] is None
    assert config["epochs"] == 1 and config["weights"] is None


def test_modern_config_names_its_rates():
    from kflowers.options import RunOptions
    from kflowers.recipes import get_recipe
    from kflowers.runs.record import learning_rates
    from kflowers.training.strategies import get_strategy

    options = RunOptions(data="d", strategy="two-stage", recipe="modern")
    strategy = get_strategy("two-stage").with_epochs(options.epochs)
    rates = learning_rates(options, strategy, get_recipe("modern", "two-stage"))
    assert rates["head_peak"] == pytest.approx(0.01)
    assert "backbone_peak" not in rates  # the first stage trains the head alone
    assert rates["head_peak_after_unfreeze"] == pytest.approx(0.001)
    assert rates["backbone_peak_after_unfreeze"] == pytest.approx(0.0001)
    assert rates["schedule"] == "warmup then cosine to 0"
    lesson = learning_rates(RunOptions(data="d", strategy="two-stage"), strategy, get_recipe("lesson", "two-stage"))
    assert lesson == {"head": 0.01, "head_after_unfreeze": 1e-4}
    assert options.image_size == 224 and options.epochs == 10
    scratch = RunOptions(data="d", strategy="scratch", recipe="modern")
    assert scratch.image_size == 96 and scratch.epochs == 60
    assert RunOptions(data="d", strategy="scratch").image_size == 224  # the lesson's


def test_plots_leave_pyplot_alone(tmp_path):
    code = (
        "import sys, matplotlib\n"
        "matplotlib.use('svg')\n"
        "from kflowers.plots import plot_confusion\n"
        "plot_confusion([[3, 1], [0, 4]], ['a', 'b'], sys.argv[1])\n"
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c.png")], capture_output=True, text=True)
    assert result.stdout.split() == ["svg", "False"], result.stderr[-2000:]
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # backend-independent: the torch pass covers it
def test_a_run_started_off_the_main_thread_trains(flowers_dir, tmp_path):
    import threading

    from kflowers.options import RunOptions
    from kflowers.runs.run import train_run

    options = RunOptions(data=flowers_dir, strategy="scratch", out=str(tmp_path / "run"), epochs=1)
    options.image_size, options.batch_size, options.quiet = SIZE, 16, True
    results = []
    worker = threading.Thread(target=lambda: results.append(train_run(options)))
    worker.start()
    worker.join()
    assert results and results[0]["epochs"] == 1  # no "signal only works in main thread" ValueError


def test_an_input_gradient_after_a_call_under_inference_mode(tmp_path):
    if keras.backend.backend() != "torch":
        pytest.skip("torch's inference mode and the torch fast path")
    import torch

    keras.utils.set_random_seed(0)
    model = kflowers.build_model(weights=None, image_size=SIZE)
    kflowers.model_parts(model).backbone.trainable = False  # frozen: the fast path folds each batch norm
    pixels = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    with torch.inference_mode():
        expected = keras.ops.convert_to_numpy(model(pixels, training=False))
    images = torch.tensor(pixels, requires_grad=True)
    logits = model(images, training=False)
    logits.sum().backward()  # failed: "Inference tensors cannot be saved for backward"
    assert images.grad is not None and torch.isfinite(images.grad).all()
    np.testing.assert_allclose(logits.detach().cpu().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_a_backup_declaring_more_than_it_may_is_refused_before_unpacking(data, tmp_path, monkeypatch):
    from kflowers.training import backup

    train(data, tmp_path / "backup", keep_backup=True)
    monkeypatch.setattr(backup, "MAX_BACKUP_BYTES", 1 << 20)  # stands in for a file declaring gigabytes
    with pytest.raises(BackupMismatch, match=r"state.npz declares [\d,]+ bytes unpacked \(at most 1,048,576\)"):
        backup.load(str(tmp_path / "backup"))


PROBE = "import sys; from kflowers.cli import main; code = main(sys.argv[1:]); print(code, 'keras' in sys.modules)"


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data", "no-such-folder"], "dataset folder not found: no-such-folder"),
        (["compare", "--data", "no-such-folder"], "dataset folder not found: no-such-folder"),
        (["evaluate", "--model", "no.keras", "--data", "."], "model file not found: no.keras"),
        (["predict", "--model", "no.keras", "x.jpg"], "model file not found: no.keras"),
        (["export", "--model", "EXISTING", "--format", "onnx", "--out", "EXISTING"], "already exists"),
    ],
    ids=["train", "compare", "evaluate", "predict", "export-existing-out"],
)
def test_a_mistyped_path_is_said_before_keras_is_imported(tmp_path, args, message):
    existing = tmp_path / "model.keras"
    existing.write_bytes(b"")
    args = [str(existing) if a == "EXISTING" else a for a in args]
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=tmp_path)
    assert result.stdout.split() == ["2", "False"]  # exit code 2, Keras never imported
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # backend-independent: the torch pass covers it
def test_tensorflows_start_up_lines_stay_off_stderr_unless_asked():
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow is not installed: it has no start-up lines to hide")
    code = "import kflowers; kflowers.quiet_start(); import keras_hub; print('imported')"
    quiet = python(code)
    loud = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "KFLOWERS_VERBOSE": "1"}
    )
    assert quiet.stdout.strip() == loud.stdout.strip() == "imported"
    assert "absl::InitializeLog" in loud.stderr  # the lines exist, and are shown when asked for
    assert "absl" not in quiet.stderr and "cuda" not in quiet.stderr.lower() and "oneDNN" not in quiet.stderr
    # A library leaves the process's stderr alone unless asked: `import kflowers` alone silences nothing.
    plain = subprocess.run(
        [sys.executable, "-c", "import kflowers, keras_hub"], capture_output=True, text=True, env=os.environ.copy()
    )
    assert "absl::InitializeLog" in plain.stderr
