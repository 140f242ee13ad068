"""The `kflowers` command line, run as a user runs it: in a subprocess."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clitools import ENV
from clitools import RUN_FILES
from clitools import TRAIN_FLAGS
from clitools import kflowers
from clitools import kill_when
from clitools import metrics_without_time


def assert_png_not_blank(path):
    image = np.asarray(Image.open(path).convert("L"), dtype=float)
    assert image.shape[0] > 100 and image.std() > 5, f"{path} looks blank"


@pytest.fixture(scope="module")
def run(flowers_dir, resnet18_pth, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "frozen"
    result = kflowers(
        "train",
        "--data",
        flowers_dir,
        "--strategy",
        "frozen",
        "--epochs",
        "2",
        "--weights",
        resnet18_pth,
        "--out",
        out,
        *TRAIN_FLAGS,
    )
    assert "| daisy | 0 | 12 |" in result.stdout  # the counts table comes first
    assert "frozen: test accuracy" in result.stdout
    return str(out)


def test_help_is_fast_because_nothing_heavy_is_imported():
    code = (
        "import sys; from kflowers.cli.parser import build_parser\n"
        "try:\n    build_parser().parse_args(['train', '--help'])\nexcept SystemExit: pass\n"
        "heavy = [m for m in ('keras', 'torch', 'keras_hub', 'tensorflow') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert "one of scratch, frozen, finetune, two-stage," in result.stdout
    assert "HEAVY []" in result.stdout


def test_every_flag_has_help_and_its_default():
    import argparse

    from kflowers.cli.parser import build_parser

    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    for parser in parsers(build_parser()):
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{parser.prog} {action.option_strings or action.dest} has no help"
            shown = action.default not in (None, False, argparse.SUPPRESS) and action.nargs != 0
            if shown and action.option_strings:
                assert "default" in action.help or f"(default: {action.default})" in " ".join(text.split()), (
                    parser.prog,
                    action.dest,
                )
    train_help = " ".join(
        subprocess.run(
            [sys.executable, "-m", "kflowers", "train", "--help"], capture_output=True, text=True, env=ENV
        ).stdout.split()
    )
    for default in ("(default: two-stage)", "(default: the recipe's: 224", "(default: runs/latest)", "(default: 64)"):
        assert default in train_help


def test_version_and_strategy_aliases():
    from kflowers.cli.parser import build_parser

    version = subprocess.run([sys.executable, "-m", "kflowers", "--version"], capture_output=True, text=True, env=ENV)
    assert version.returncode == 0 and version.stdout.strip() == f"kflowers {kflowers_version()}"
    parser = build_parser()
    assert parser.parse_args(["train", "--strategy", "fine-tune"]).strategy == "finetune"
    assert parser.parse_args(["compare", "--strategies", "two_stage", "frozen"]).strategies == ["two-stage", "frozen"]


def kflowers_version():
    from importlib import metadata

    return metadata.version("kflowers")


def test_train_writes_the_full_run_directory(run):
    for name in RUN_FILES:
        assert os.path.getsize(os.path.join(run, name)) > 0, name
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    assert set(metrics) >= {"test_accuracy", "best_test_accuracy", "test_loss", "per_class", "epochs", "wall_seconds"}
    assert metrics["epochs"] == 2 and set(metrics["per_class"]) == {"daisy", "dandelion", "rose", "sunflower", "tulip"}
    history = open(os.path.join(run, "history.csv")).read().splitlines()
    assert history[0].startswith("epoch,loss,accuracy,test_loss,test_accuracy,seconds")
    assert len(history) == 3
    split = json.load(open(os.path.join(run, "split.json")))
    assert len(split["train"]) == 48 and len(split["test"]) == 12 and not set(split["train"]) & set(split["test"])
    config = json.load(open(os.path.join(run, "config.json")))
    assert (
        config["backend"] == os.environ["KERAS_BACKEND"]
        and config["strategy"] == "frozen"
        and "keras" in config["versions"]
    )
    assert_png_not_blank(os.path.join(run, "curves.png"))
    assert_png_not_blank(os.path.join(run, "confusion.png"))
    assert_png_not_blank(os.path.join(run, "top_losses.png"))
    assert not [f for f in os.listdir(run) if f.endswith(".tmp")]


@pytest.mark.one_backend
def test_saved_model_reloads_after_import_kflowers(run):
    code = (
        "import kflowers, keras, numpy as np\n"
        f"m = keras.models.load_model({os.path.join(run, 'model.keras')!r})\n"
        "print('OUT', m.predict(np.zeros((1, 32, 32, 3), 'uint8'), verbose=0).shape)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert "OUT (1, 5)" in result.stdout, result.stderr[-2000:]


@pytest.mark.one_backend
def test_same_seed_same_metrics(run, flowers_dir, resnet18_pth, tmp_path):
    again = tmp_path / "again"
    kflowers(
        "train",
        "--data",
        flowers_dir,
        "--strategy",
        "frozen",
        "--epochs",
        "2",
        "--weights",
        resnet18_pth,
        "--out",
        again,
        "--quiet",
        *TRAIN_FLAGS,
    )
    assert metrics_without_time(run) == metrics_without_time(again)


@pytest.mark.one_backend
def test_explain_writes_one_grad_cam_picture_per_image(run, flowers_dir, tmp_path):
    images = [
        os.path.join(flowers_dir, "rose", name) for name in sorted(os.listdir(os.path.join(flowers_dir, "rose")))[:2]
    ]
    result = kflowers("explain", "--model", os.path.join(run, "model.keras"), *images, "--out", tmp_path / "cams")
    assert "2 Grad-CAM picture(s)" in result.stdout
    for image in images:
        stem = os.path.splitext(os.path.basename(image))[0]
        assert_png_not_blank(tmp_path / "cams" / f"{stem}.gradcam.png")


@pytest.mark.one_backend  # the command's own code; a model loading and predicting on each backend: test_backends.py
def test_predict_agrees_with_model_predict(run, flowers_dir):
    images = [os.path.join(flowers_dir, "rose", "rose_000.JPG"), os.path.join(flowers_dir, "tulip")]
    result = kflowers("predict", "--model", os.path.join(run, "model.keras"), *images, "--json", "--top", "5")
    answers = [json.loads(line) for line in result.stdout.splitlines()]  # JSON Lines: one object per photo
    assert len(answers) == 13
    import keras

    import kflowers as kf
    from kflowers.data.dataset import FlowerDataset

    model = kf.load_model(os.path.join(run, "model.keras"))
    paths = [a["image"] for a in answers]
    logits = model.predict(FlowerDataset(paths, [0] * len(paths), image_size=32), verbose=0)
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    for answer, p in zip(answers, probabilities):
        got = {t["class"]: t["probability"] for t in answer["top"]}
        assert got == pytest.approx({name: float(v) for name, v in zip(model.class_names, p)}, abs=1e-5)
        assert answer["top"][0]["class"] == model.class_names[int(np.argmax(p))]
    table = kflowers("predict", "--model", os.path.join(run, "model.keras"), images[0]).stdout
    assert table.startswith("| image | #1 | #2 | #3 |")


@pytest.mark.one_backend
def test_evaluate_json_and_class_names_by_name(run, flowers_dir, tmp_path):
    result = kflowers(
        "evaluate",
        *("--model", os.path.join(run, "model.keras"), "--data", flowers_dir, "--json", "--out", tmp_path),
        *("--split", "all"),
    )
    report = json.loads(result.stdout)
    assert set(report) >= {"accuracy", "per_class", "confusion"}
    assert np.sum(report["confusion"]) == 60 and report["split"] == "all"
    assert_png_not_blank(tmp_path / "confusion.png")
    # A folder holding only some classes is mapped by name, not by position.
    subset = tmp_path / "subset"
    os.makedirs(subset / "tulip")
    for name in sorted(os.listdir(os.path.join(flowers_dir, "tulip")))[:4]:
        os.link(os.path.join(flowers_dir, "tulip", name), subset / "tulip" / name)
    partial = json.loads(
        kflowers(
            "evaluate",
            *("--model", os.path.join(run, "model.keras"), "--data", subset, "--json", "--out", tmp_path),
            *("--split", "all"),
        ).stdout
    )
    assert partial["per_class"]["tulip"]["support"] == 4 and partial["per_class"]["daisy"]["support"] == 0


@pytest.mark.one_backend
def test_evaluate_on_other_classes_is_a_one_line_error(run, tmp_path):
    from kflowers.data.demo import draw_dataset

    draw_dataset(tmp_path / "other", ["cat", "dog"], per_class=2, size=32)
    result = kflowers(
        "evaluate", "--model", os.path.join(run, "model.keras"), "--data", tmp_path / "other", check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "kflowers evaluate: error: the model was trained on daisy, dandelion, rose, sunflower, tulip; "
        "the data has other classes: cat, dog"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data", "/no/such/folder"], "kflowers train: error: dataset folder not found: /no/such/folder"),
        (
            ["predict", "--model", "/no/model.keras", "x.jpg"],
            "kflowers predict: error: model file not found: /no/model.keras",
        ),
        (["train", "--data", ".", "--epochs", "0"], "argument --epochs: must be a positive integer, got 0"),
        (["train", "--data", ".", "--strategy", "magic"], "argument --strategy: unknown strategy 'magic'"),
    ],
)
@pytest.mark.one_backend
def test_user_errors_are_one_line(args, message):
    result = kflowers(*args, check=False)
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


@pytest.mark.one_backend
def test_train_with_missing_weights_file_is_one_line(flowers_dir, tmp_path):
    result = kflowers(
        "train", "--data", flowers_dir, "--weights", tmp_path / "nope.pth", "--out", tmp_path, check=False
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: unknown weights" in result.stderr


@pytest.mark.one_backend
def test_show_prints_counts_and_writes_the_grid(flowers_dir, tmp_path):
    result = kflowers("show", "--data", flowers_dir, "--out", tmp_path / "grid.png")
    assert "| total |  | 60 |" in result.stdout
    assert_png_not_blank(tmp_path / "grid.png")


@pytest.mark.parametrize("command", [["download"], ["train", "--strategy", "frozen"]])
@pytest.mark.one_backend
def test_offline_download_says_how_to_use_local_data(tmp_path, command):
    # The real URL can't be reached from the test machine, or any offline machine.
    env = {**ENV, "KERAS_HOME": str(tmp_path), "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    result = subprocess.run(
        [sys.executable, "-m", "kflowers", *command], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    hint = "give it to train or compare as --data DIR" if command == ["download"] else "pass --data DIR"
    assert hint in result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_compare_writes_table_and_curves(flowers_dir, resnet18_pth, tmp_path):
    out = tmp_path / "compare"
    result = kflowers(
        "compare",
        "--data",
        flowers_dir,
        "--strategies",
        "scratch",
        "frozen",
        "discriminative",
        "--epochs",
        "1",
        "--weights",
        resnet18_pth,
        "--out",
        out,
        "--quiet",
        *TRAIN_FLAGS,
    )
    table = (out / "compare.md").read_text().splitlines()
    assert table[0] == (
        "| strategy | recipe | best_test_accuracy | final_test_accuracy | epochs | wall_seconds | interrupted |"
    )
    assert [line.split("|")[1].strip() for line in table[2:5]] == ["scratch", "frozen", "discriminative"]
    assert table[5] == "" and table[6] == "How each strategy trains:"
    assert "| discriminative | 1 | all trains | head 0.001, backbone 0.0001 |" in table
    assert_png_not_blank(out / "curves.png")
    compared = json.loads((out / "compare.json").read_text())
    rows = compared["rows"]
    assert rows[0]["strategy"] == "scratch" and compared["interrupted"] is None
    assert all(
        len(repr(row["best_test_accuracy"])) <= 6 and row["wall_seconds"] == round(row["wall_seconds"], 1)
        for row in rows
    )
    assert json.loads((out / "scratch" / "config.json").read_text())["weights"] is None
    split_a = json.loads((out / "frozen" / "split.json").read_text())
    split_b = json.loads((out / "discriminative" / "split.json").read_text())
    assert split_a == split_b
    assert "| frozen |" in result.stdout


@pytest.mark.one_backend
def test_lr_find_plots_and_suggests(flowers_dir, resnet18_pth, tmp_path):
    result = kflowers(
        "lr-find",
        "--data",
        flowers_dir,
        "--weights",
        resnet18_pth,
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--steps",
        "12",
        "--out",
        tmp_path / "lr.png",
    )
    assert "suggested learning rate: " in result.stdout
    assert "\x1b[" not in result.stdout and "\r" not in result.stdout  # piped: no terminal codes
    assert_png_not_blank(tmp_path / "lr.png")


@pytest.mark.one_backend
def test_lr_find_says_when_it_stopped_early_and_refuses_a_sweep_that_goes_down(flowers_dir, tmp_path, capsys):
    from kflowers.cli.main import main

    args = ["lr-find", "--data", flowers_dir, "--weights", "none", "--image-size", "32", "--batch-size", "8"]
    capsys.readouterr()
    code = main([*args, "--steps", "30", "--min-lr", "1e-3", "--max-lr", "1e9", "--out", str(tmp_path / "lr.png")])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    stopped = [line for line in lines if line.startswith("stopped early after ")]
    assert len(stopped) == 1 and "of 30 steps: the loss diverged at learning rate" in stopped[0]
    assert lines[lines.index(stopped[0]) + 1].startswith("suggested learning rate: ")
    code = main([*args, "--min-lr", "10", "--max-lr", "1e-7", "--quiet"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and error[-1].endswith("--min-lr 10 must be below --max-lr 1e-07 (the sweep goes up)")


def test_suggestion_is_the_steepest_descent():
    from kflowers.training.lr_find import suggest_learning_rate

    rates = np.geomspace(1e-6, 1, 61)
    x = np.log10(rates)
    losses = 2 - np.tanh(2 * (x + 3)) + np.where(x > -1, 30 * (x + 1) ** 2, 0)  # steepest at 1e-3
    assert suggest_learning_rate(rates, losses, smoothing=0.0) == pytest.approx(1e-3, rel=0.3)


@pytest.mark.slow
def test_demo_then_predict(tmp_path):
    out = tmp_path / "demo"
    result = kflowers("demo", "--out", out, "--quiet")
    for name in RUN_FILES:
        assert (out / name).exists(), name
    command = result.stdout.strip().splitlines()[-1]
    assert command.startswith("next: kflowers predict --model")
    image = command.split()[-1]
    assert os.path.isfile(image) and image.startswith(str(out / "demo-data"))
    answer = json.loads(kflowers("predict", "--model", out / "model.keras", image, "--json").stdout)
    assert answer["top"][0]["probability"] > 0
    # The run's files point to data that exists: evaluate reads the run's own test split from it.
    config = json.loads((out / "config.json").read_text())
    split = json.loads((out / "split.json").read_text())
    assert os.path.isdir(config["data"]) and all(os.path.isfile(p) for p in split["train"] + split["test"])
    evaluated = json.loads(
        kflowers("evaluate", "--model", out / "model.keras", "--data", config["data"], "--json").stdout
    )
    assert evaluated["images"] == len(split["test"])
    # (A second demo into the same folder redraws its data: tests/test_ownership.py.)


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_metrics(flowers_dir, tmp_path):
    flags = ["train", "--data", flowers_dir, "--strategy", "scratch", "--epochs", "3", *TRAIN_FLAGS]
    kflowers(*flags, "--out", tmp_path / "straight", "--quiet")
    interrupted = tmp_path / "interrupted"
    kill_when(["kflowers", *flags, "--out", interrupted], "Epoch 2/3")
    assert not (interrupted / "metrics.json").exists()
    result = kflowers(*flags, "--out", interrupted, "--resume")
    assert "Epoch 2/3" in result.stdout and "Epoch 1/3" not in result.stdout
    assert metrics_without_time(interrupted) == metrics_without_time(tmp_path / "straight")
    assert len(open(interrupted / "history.csv").read().splitlines()) == 4


@pytest.mark.slow
def test_sigint_stops_cleanly_and_saves(flowers_dir, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kflowers",
            "train",
            "--data",
            flowers_dir,
            "--strategy",
            "scratch",
            "--epochs",
            "50",
            "--out",
            str(out),
            *TRAIN_FLAGS,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    for line in process.stdout:
        if line.startswith("Epoch 2/50"):
            process.send_signal(signal.SIGINT)
            break
    rest, errors = process.communicate(timeout=120)
    assert process.returncode == 0, errors[-2000:]
    assert "Interrupted: stopping after this batch" in rest
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["interrupted"] and 1 <= metrics["epochs"] < 50
    import kflowers as kf

    assert kf.load_model(out / "model.keras").class_names[0] == "daisy"


def run_files(run):
    """Every file under `run`, by relative path, with its bytes (but the lock a killed run leaves)."""
    return {
        os.path.relpath(os.path.join(folder, name), run): open(os.path.join(folder, name), "rb").read()
        for folder, _, names in os.walk(run)
        for name in names
        if name != ".kflowers.lock"
    }


@pytest.mark.one_backend
def test_a_finished_run_keeps_no_backup_and_resuming_it_changes_nothing(run, flowers_dir, resnet18_pth):
    assert not os.path.exists(os.path.join(run, "backup"))  # only an interrupted run needs one
    before = run_files(run)
    result = kflowers(
        "train",
        "--data",
        flowers_dir,
        "--strategy",
        "frozen",
        "--epochs",
        "2",
        "--weights",
        resnet18_pth,
        "--out",
        run,
        *TRAIN_FLAGS,
        "--resume",
    )
    assert "nothing to resume" in result.stdout
    assert run_files(run) == before


@pytest.mark.one_backend
def test_evaluate_writes_nothing_into_the_run_unless_told(run, flowers_dir):
    before = run_files(run)
    result = kflowers("evaluate", "--model", os.path.join(run, "model.keras"), "--data", flowers_dir)
    assert "accuracy:" in result.stdout and "confusion matrix:" not in result.stdout
    assert run_files(run) == before


def test_metrics_describe_the_saved_model(run):
    import kflowers as kf

    metrics = json.load(open(os.path.join(run, "metrics.json")))
    split = json.load(open(os.path.join(run, "split.json")))
    model = kf.load_model(os.path.join(run, "model.keras"))
    labels = [split["classes"].index(os.path.basename(os.path.dirname(p))) for p in split["test"]]
    dataset = kf.FlowerDataset(split["test"], labels, batch_size=64, image_size=32)
    loss, accuracy = model.evaluate(dataset, verbose=0)
    assert metrics["test_loss"] == pytest.approx(loss, rel=1e-4)
    assert metrics["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)


@pytest.mark.one_backend
def test_resume_with_other_arguments_is_one_line_and_touches_nothing(flowers_dir, resnet18_pth, tmp_path):
    out = tmp_path / "run"
    flags = [
        "train",
        "--data",
        flowers_dir,
        "--strategy",
        "finetune",
        "--epochs",
        "2",
        "--weights",
        resnet18_pth,
        "--out",
        out,
        *TRAIN_FLAGS,
        "--quiet",
    ]
    kill_when(["kflowers", *flags[:-1]], "Epoch 2/2")
    before = run_files(out)
    result = kflowers(*flags[:-1], "--resume", "--lr", "0.5", check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and "differs from the one in" in lines[-1] and " in lr;" in lines[-1]
    assert run_files(out) == before


@pytest.mark.one_backend
def test_report_html_is_one_self_contained_page(run):
    with open(os.path.join(run, "report.html"), encoding="utf-8") as f:
        page = f.read()
    with open(os.path.join(run, "metrics.json")) as f:
        metrics = json.load(f)
    assert f"Test accuracy of the saved model: <b>{metrics['test_accuracy']:.4f}</b>" in page
    for name in ("daisy", "dandelion", "rose", "sunflower", "tulip"):  # the per-class table
        assert f"<td>{name}</td>" in page
    assert page.count('src="data:image/png;base64,') == 3  # curves, confusion matrix, top losses: embedded
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing is fetched from anywhere
    assert page.count("<tr>") >= 1 + 2 + 5  # the history's two epochs, the per-class rows, ...


BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@pytest.mark.one_backend
def test_report_html_renders_in_a_headless_browser(run, tmp_path):
    browser = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if browser is None:
        pytest.skip("no headless browser installed (Debian: apt-get install chromium)")
    page = tmp_path / "report.html"
    with open(os.path.join(run, "report.html"), encoding="utf-8") as f:
        # Once the page has loaded, count the pictures the browser decoded.
        page.write_text(
            f.read().replace(
                "</body>",
                "<script>addEventListener('load', () => document.body.setAttribute('data-decoded', "
                "[...document.images].filter(i => i.complete && i.naturalWidth > 0).length));</script></body>",
            )
        )
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
    flags += ["--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    result = subprocess.run(
        [browser, *flags, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 'data-decoded="3"' in result.stdout, result.stderr[-2000:]
    assert "Test accuracy of the saved model" in result.stdout
