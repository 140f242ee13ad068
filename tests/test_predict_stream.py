"""Streaming predict: `iter_predictions` and `kflowers predict` answer photo by photo, hold a bounded number of
batches whatever the folder's size, skip what can't be read, and leave whole lines when interrupted."""

import csv
import io
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import kflowers
from kflowers.cli.main import main as kflowers_main
from kflowers.inference import predict
from clitools import ENV


@pytest.fixture(scope="module")
def model(small_model_file):
    return kflowers.load_model(small_model_file)


@pytest.fixture(scope="module")
def photos(flowers_dir):
    return kflowers.scan_folder(flowers_dir).paths


def test_streamed_answers_are_predict_images_answers(model, photos):
    streamed = list(predict.iter_predictions(model, photos, top_k=5, batch_size=7, workers=2))
    assert [answer.image for answer in streamed] == photos
    assert all(answer.error is None for answer in streamed)
    expected = kflowers.predict_images(model, photos, top_k=5)
    for answer, reference in zip(streamed, expected):
        assert [n for n, _ in answer.top] == [n for n, _ in reference]
        np.testing.assert_allclose([p for _, p in answer.top], [p for _, p in reference], atol=1e-6)


def test_unreadable_files_are_answered_with_their_reason_and_the_rest_go_on(model, photos, tmp_path):
    (tmp_path / "page.jpg").write_text("<html>not a photo</html>")
    (tmp_path / "empty.png").write_bytes(b"")
    items = [photos[0], str(tmp_path / "page.jpg"), photos[1], str(tmp_path / "empty.png")]
    answers = list(predict.iter_predictions(model, items, top_k=1, batch_size=2))
    assert [a.error is None for a in answers] == [True, False, True, False]
    assert "not an image" in answers[1].error and "empty file" in answers[3].error
    assert answers[2].top == kflowers.predict_images(model, photos[1], top_k=1)[0]


def test_memory_is_flat_however_many_photos(model, photos, monkeypatch):
    """What is held is counted, not timed: batches decoded but not yet answered stay under a bound that does
    not grow with the number of photos (the whole-folder read held all of them before the first answer)."""
    decoded = []
    real = predict.prepare_image
    monkeypatch.setattr(predict, "prepare_image", lambda image, size: decoded.append(image) or real(image, size))
    for count in (40, 400):
        decoded.clear()
        held = []
        for index, _ in enumerate(predict.iter_predictions(model, (photos * 10)[:count], batch_size=4, workers=2)):
            held.append(len(decoded) - index)
        assert len(decoded) == count
        assert max(held) <= 4 * (2 + 2), (count, max(held))  # at most workers + 2 batches decoded ahead


def test_bfloat16_answers_are_close_to_float32(model, photos):
    import keras

    if keras.backend.backend() != "torch":
        pytest.skip("bfloat16 inference is torch's autocast (choose_precision refuses it on other backends)")
    float32 = list(predict.iter_predictions(model, photos[:8], top_k=5, precision="float32"))
    bfloat16 = list(predict.iter_predictions(model, photos[:8], top_k=5, precision="bfloat16"))
    for a, b in zip(float32, bfloat16):
        np.testing.assert_allclose(
            [dict(a.top)[n] for n in model.class_names], [dict(b.top)[n] for n in model.class_names], atol=0.05
        )


def test_auto_precision_says_why(monkeypatch):
    import keras

    monkeypatch.setattr("kflowers.options.native_bfloat16", lambda: True)
    expected = "bfloat16" if keras.backend.backend() == "torch" else "float32"
    assert predict.choose_precision("auto")[0] == expected
    monkeypatch.setattr("kflowers.options.native_bfloat16", lambda: False)
    precision, why = predict.choose_precision("auto")
    assert precision == "float32" and why
    assert predict.choose_precision("float32") == ("float32", "as asked")


def run_cli(args, capsys):
    capsys.readouterr()
    code = kflowers_main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.one_backend
def test_json_lines_and_csv_match_predict_images(
    model, small_model_file, flowers_dir, photos, tmp_path, capsys, caplog
):
    (tmp_path / "bad.jpg").write_text("not a photo")
    code, out, err = run_cli(
        ["predict", "--model", small_model_file, flowers_dir, tmp_path / "bad.jpg", "--json", "--top", "2"], capsys
    )
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["image"] for row in rows] == photos  # the unreadable file is named on stderr, not answered
    assert f"skipped {tmp_path / 'bad.jpg'}: not an image" in caplog.text
    expected = kflowers.predict_images(model, photos, top_k=2)
    for row, reference in zip(rows, expected):
        assert [t["class"] for t in row["top"]] == [n for n, _ in reference]
        np.testing.assert_allclose([t["probability"] for t in row["top"]], [p for _, p in reference], atol=1e-5)
    code, out, _ = run_cli(["predict", "--model", small_model_file, flowers_dir, "--csv", "--top", "2"], capsys)
    table = list(csv.DictReader(io.StringIO(out)))
    assert list(table[0]) == ["image", "class_1", "probability_1", "class_2", "probability_2"]
    assert [(r["image"], r["class_1"]) for r in table] == [(row["image"], row["top"][0]["class"]) for row in rows]


@pytest.mark.one_backend
def test_nothing_readable_is_one_line(small_model_file, tmp_path, capsys):
    (tmp_path / "a.jpg").write_text("no")
    code, out, err = run_cli(["predict", "--model", small_model_file, tmp_path, "--quiet"], capsys)
    assert code == 2 and err.splitlines()[-1].startswith("kflowers predict: error: no readable image in")


@pytest.mark.slow
@pytest.mark.one_backend
def test_ctrl_c_leaves_whole_lines_and_exit_130(small_model_file, tmp_path):
    from kflowers.data.demo import draw_dataset

    # Enough photos that the signal always arrives while they stream (with 600, a loaded machine once finished
    # them all first: exit 0).
    folder = draw_dataset(tmp_path / "many", ["daisy", "rose"], per_class=1000, size=40)
    process = subprocess.Popen(
        [sys.executable, "-m", "kflowers", "predict", "--model", str(small_model_file), folder, "--json"]
        + ["--batch-size", "1", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    first = process.stdout.readline()  # the first answer is out: now interrupt
    process.send_signal(signal.SIGINT)
    rest, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    lines = [first] + rest.splitlines(keepends=True)
    assert all(line.endswith("\n") for line in lines)
    assert 1 <= len(lines) < 2000
    assert all(json.loads(line)["top"] for line in lines)
    assert os.path.isdir(folder)
