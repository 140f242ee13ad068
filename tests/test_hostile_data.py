"""Messy photo folders: every readable image loads as RGB uint8, every
unreadable file is skipped and named with its reason, labels never shift."""

import io
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from PIL import Image

import kflowers
from kflowers.data.images import UnreadableImage
from kflowers.data.images import read_image

pytestmark = pytest.mark.one_backend  # scanning hostile folders and files: the torch pass covers it


def jpeg_bytes(image, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def gradient(size=(40, 30)):
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.uint8)
    return np.dstack([np.tile(x, (h, 1)), np.tile(x[::-1], (h, 1)), np.full((h, w), 90, np.uint8)])


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A folder with every kind of trouble; returns (root, {file: expected})."""
    root = tmp_path_factory.mktemp("hostile")
    good = {}
    bad = {}
    rose, tulip, empty = root / "rose", root / "tulip", root / "empty_class"
    for folder in (rose, tulip, empty):
        folder.mkdir()
    base = Image.fromarray(gradient())

    def keep(path, shape=(30, 40, 3)):
        good[str(path)] = shape

    base.save(rose / "plain.jpg")
    keep(rose / "plain.jpg")
    base.convert("L").save(rose / "grey.png")
    keep(rose / "grey.png")
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(rose / "alpha.png")
    keep(rose / "alpha.png")
    base.convert("P").save(rose / "palette.png")
    keep(rose / "palette.png")
    base.convert("CMYK").save(rose / "cmyk.jpg")
    keep(rose / "cmyk.jpg")
    Image.fromarray((gradient()[..., 0].astype(np.uint16) * 257)).save(rose / "sixteen.png")
    keep(rose / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° when shown
    base.save(rose / "rotated.jpg", exif=exif)
    keep(rose / "rotated.jpg", (40, 30, 3))
    Image.new("RGB", (1, 1), (200, 0, 0)).save(rose / "one.png")
    keep(rose / "one.png", (1, 1, 3))
    (rose / "nested" / "deeper").mkdir(parents=True)
    base.save(rose / "nested" / "deeper" / "inner.JPEG")
    keep(rose / "nested" / "deeper" / "inner.JPEG")
    base.save(tulip / "name with spaces ü 花.jpg")
    keep(tulip / "name with spaces ü 花.jpg")
    (root / ".store").mkdir()  # hidden: not a class, but inside the dataset
    base.save(root / ".store" / "kept.jpg")
    os.symlink(root / ".store" / "kept.jpg", tulip / "link.jpg")
    keep(tulip / "link.jpg")

    (rose / "zero.jpg").write_bytes(b"")
    bad[str(rose / "zero.jpg")] = "empty file"
    whole = jpeg_bytes(base)
    (rose / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    bad[str(rose / "truncated.jpg")] = "truncated"
    (rose / "page.jpg").write_text("<html><body>404</body></html>")
    bad[str(rose / "page.jpg")] = "not an image"
    (rose / "notes.txt").write_text("hello")
    bad[str(rose / "notes.txt")] = "not an image file"
    (rose / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    os.symlink(rose / "missing.jpg", tulip / "dangling.jpg")
    bad[str(tulip / "dangling.jpg")] = "missing file"
    big = Image.new("L", (9000, 8000))
    big.save(tulip / "bomb.png", optimize=False)
    bad[str(tulip / "bomb.png")] = "too large"
    return str(root), good, bad


def test_scan_skips_and_names_every_unreadable_file(hostile, caplog):
    root, good, bad = hostile
    with caplog.at_level(logging.WARNING, logger="kflowers"):
        folder = kflowers.scan_folder(root)
    assert folder.class_names == ["rose", "tulip"]  # the empty class is left out
    assert sorted(folder.paths) == sorted(good)
    skipped = dict(folder.skipped)
    assert set(skipped) == set(bad)
    for path, reason in bad.items():
        assert reason in skipped[path], (path, skipped[path])
        assert any(path in record.message and reason in record.message for record in caplog.records)
    assert any("'empty_class' has no usable image" in r.message for r in caplog.records)
    assert not any(".DS_Store" in p for p in skipped)


def test_every_readable_image_is_rgb_uint8_with_exif_applied(hostile):
    _, good, _ = hostile
    for path, shape in good.items():
        pixels = read_image(path)
        assert pixels.dtype == np.uint8 and pixels.shape == shape, path
    rotated = read_image([p for p in good if p.endswith("rotated.jpg")][0])
    plain = read_image([p for p in good if p.endswith("plain.jpg")][0])
    assert np.abs(rotated.astype(int) - np.rot90(plain, -1).astype(int)).mean() < 3
    alpha = read_image([p for p in good if p.endswith("alpha.png")][0])
    assert alpha.min() >= 127  # half-transparent over white


def test_labels_come_from_names(hostile):
    root, _, _ = hostile
    folder = kflowers.scan_folder(root)
    for path, label in zip(folder.paths, folder.labels):
        assert folder.class_names[label] in path.split(os.sep)[-4:]


def test_explicit_empty_class_is_an_error(hostile):
    root, _, _ = hostile
    with pytest.raises(kflowers.DataError, match="no usable image in class folder.*empty_class"):
        kflowers.scan_folder(root, classes=["rose", "empty_class"])


def test_no_usable_image_at_all_is_one_line(tmp_path):
    (tmp_path / "rose").mkdir()
    (tmp_path / "rose" / "a.jpg").write_bytes(b"")
    result = subprocess.run(
        [sys.executable, "-m", "kflowers", "train", "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"kflowers train: error: no usable image found in {tmp_path}"


@pytest.mark.slow
def test_train_on_hostile_folder_names_every_skipped_file(hostile, tmp_path):
    root, _, bad = hostile
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kflowers",
            "train",
            "--data",
            root,
            "--strategy",
            "scratch",
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--batch-size",
            "4",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for path in bad:
        assert f"skipped {path}" in result.stderr
    assert "| rose | 0 | 9 |" in result.stdout and "| tulip | 1 | 2 |" in result.stdout


def test_failed_save_keeps_the_previous_model(tmp_path, monkeypatch):
    import keras

    model = kflowers.build_model(num_classes=2, weights=None, image_size=32)
    path = tmp_path / "model.keras"
    kflowers.save_model(model, path, ["a", "b"])
    before = path.read_bytes()

    def broken_save(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"half a model")
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        kflowers.save_model(model, path, ["a", "b"])
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.keras"]


def test_failed_json_write_keeps_the_previous_file(tmp_path):
    from kflowers.files import write_json

    path = tmp_path / "metrics.json"
    write_json(path, {"ok": 1})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert path.read_text() == '{\n  "ok": 1\n}\n' and os.listdir(tmp_path) == ["metrics.json"]


SEEDS = {"jpeg": jpeg_bytes(Image.fromarray(gradient((16, 12)))), "png": None}
_png = io.BytesIO()
Image.fromarray(gradient((16, 12))).save(_png, format="PNG")
SEEDS["png"] = _png.getvalue()


def check_decode(tmp_path, data, name):
    path = tmp_path / name
    path.write_bytes(data)
    try:
        pixels = read_image(str(path), min_size=8)
    except UnreadableImage:
        return
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[-1] == 3


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048))
def test_random_bytes_only_raise_unreadable_image(tmp_path, data):
    check_decode(tmp_path, data, "random.jpg")


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(["jpeg", "png"]),
    cut=st.integers(0, 400),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
)
def test_mutated_headers_only_raise_unreadable_image(tmp_path, kind, cut, flips):
    data = bytearray(SEEDS[kind])
    for position, value in flips:
        data[position % len(data)] = value
    data = bytes(data[: len(data) - cut] if cut < len(data) else data)
    check_decode(tmp_path, data, "mutated." + ("jpg" if kind == "jpeg" else "png"))


# ------------------------------------------------ the dataset is what the folder says


def two_classes(root, per_class=3):
    for name in ("a", "b"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(gradient()).save(root / name / f"{i}.png")
    return root


def link_to_other_class(root):
    os.symlink(root / "b" / "0.png", root / "a" / "x.png")


def link_to_filesystem_root(root):
    os.symlink("/", root / "a" / "everything")


def link_to_file_outside(root):
    outside = root.parent / f"{root.name}-outside.png"
    Image.fromarray(gradient()).save(outside)
    os.symlink(outside, root / "a" / "outside.png")


def class_folder_linked_outside(root):
    outside = root.parent / f"{root.name}-elsewhere"
    outside.mkdir()
    for i in range(3):
        Image.fromarray(gradient()).save(outside / f"{i}.png")
    os.symlink(outside, root / "c")


def class_folder_linked_to_filesystem_root(root):
    os.symlink("/", root / "c")


def run_directory_inside_a_class(root):
    (root / "a" / "run").mkdir()
    (root / "a" / "run" / ".kflowers-run").write_text('{"kind": "run", "run_id": "0"}')
    Image.fromarray(gradient()).save(root / "a" / "run" / "curves.png")


def same_image_twice_in_a_class(root):
    os.symlink(root / "a" / "0.png", root / "a" / "again.png")


def hidden_files(root):
    Image.fromarray(gradient()).save(root / "a" / ".hidden.png")
    (root / "a" / ".notes").write_text("x")


def unreadable_subfolder(root):
    (root / "a" / "locked").mkdir()
    Image.fromarray(gradient()).save(root / "a" / "locked" / "9.png")
    os.chmod(root / "a" / "locked", 0)


def one_class(root):
    import shutil

    shutil.rmtree(root / "b")


def non_utf8_class(root):
    os.rename(root / "b", os.path.join(os.fsencode(root), b"b\xff"))


# name, change, expected counts {class: images} or an error, text expected in a warning ("" for none)
FOLDER_CASES = [
    ("link to another class", link_to_other_class, "same image .* in classes a and b", ""),
    ("link to /", link_to_filesystem_root, {"a": 3, "b": 3}, "a link to a folder outside the dataset"),
    ("link to a file outside", link_to_file_outside, {"a": 3, "b": 3}, "a link to a file outside the dataset"),
    ("class folder linked outside", class_folder_linked_outside, {"a": 3, "b": 3}, "a link to a folder outside"),
    ("class folder linked to /", class_folder_linked_to_filesystem_root, {"a": 3, "b": 3}, "a link to a folder out"),
    ("run directory in a class", run_directory_inside_a_class, {"a": 3, "b": 3}, "a kflowers run directory"),
    ("same image twice", same_image_twice_in_a_class, {"a": 3, "b": 3}, ""),
    ("hidden files", hidden_files, {"a": 3, "b": 3}, ""),
    ("unreadable folder", unreadable_subfolder, {"a": 3, "b": 3}, "folder not readable"),
    ("one class", one_class, {"a": 3}, ""),  # evaluating one class is fine; split_dataset refuses it
    ("class name not UTF-8", non_utf8_class, {"a": 3, "b\ufffd": 3}, ""),
]


@pytest.mark.parametrize("name, change, expected, warning", FOLDER_CASES, ids=[c[0] for c in FOLDER_CASES])
def test_the_dataset_is_what_the_folder_says(tmp_path, caplog, name, change, expected, warning):
    if change is unreadable_subfolder and os.geteuid() == 0:
        pytest.skip("root reads every folder: see test_unreadable_folder_is_named_in_a_warning")
    root = two_classes(tmp_path / "data")
    change(root)
    with caplog.at_level(logging.WARNING, logger="kflowers"):
        if isinstance(expected, str):
            with pytest.raises(kflowers.DataError, match=expected):
                kflowers.scan_folder(root)
            return
        folder = kflowers.scan_folder(root)
    assert folder.counts() == expected
    messages = [r.getMessage() for r in caplog.records]
    if warning:
        assert any(warning in m for m in messages), messages
    else:
        assert messages == []


def test_split_too_small_for_the_classes_is_one_clear_error(tmp_path):
    from kflowers.data.folders import split_dataset

    single = two_classes(tmp_path / "single")
    one_class(single)
    with pytest.raises(kflowers.DataError, match=r"one class with images \(a\); .* at least 2 class folders"):
        split_dataset(kflowers.scan_folder(single))

    root = tmp_path / "data"
    for name in "abcde":
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(gradient()).save(root / name / f"{i}.png")
    with pytest.raises(kflowers.DataError, match=r"10 images are too few .* each of the 5 classes.*at least 25"):
        split_dataset(kflowers.scan_folder(root))


def test_unreadable_folder_is_named_in_a_warning(tmp_path):
    """As an ordinary user (root reads every folder: drop to `nobody` in a child process)."""
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("covered by test_the_dataset_is_what_the_folder_says[unreadable folder]")
    root = two_classes(__import__("pathlib").Path(tempfile.mkdtemp(dir="/tmp")) / "data")
    unreadable_subfolder(root)
    for directory in (root.parent, root, root / "a", root / "b"):
        os.chmod(directory, 0o755)
    for path in [*(root / "a").glob("*.png"), *(root / "b").glob("*.png")]:
        os.chmod(path, 0o644)
    code = (
        # Pillow loads its format plugins on first use, from this Python's folder, which `nobody` may not read.
        "import os, kflowers.data.folders; from PIL import Image; Image.init(); os.setgid(65534); os.setuid(65534); "
        "f = kflowers.data.folders.scan_folder(%r); print(f.counts())" % str(root)
    )
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    finally:
        import shutil

        os.chmod(root / "a" / "locked", 0o755)
        shutil.rmtree(root.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "{'a': 3, 'b': 3}" in result.stdout
    assert "locked: folder not readable (Permission denied)" in result.stderr


def test_class_names_with_terminal_escapes_never_reach_the_terminal(tmp_path):
    from kflowers.tables import markdown_table

    root = two_classes(tmp_path / "data")
    os.rename(root / "b", root / "\x1b[31mred")
    folder = kflowers.scan_folder(root)
    assert folder.class_names == ["\\x1b[31mred", "a"]
    table = markdown_table([{"class": "\x1b]0;title\x07x"}])
    assert "\x1b" not in table and "\x07" not in table and "\\x1b]0;title\\x07x" in table


def test_an_image_changed_after_the_scan_is_named(tmp_path):
    root = two_classes(tmp_path / "data")
    folder = kflowers.scan_folder(root)
    data = kflowers.FlowerDataset.from_folder(folder, image_size=16)
    with open(folder.paths[0], "r+b") as f:
        f.truncate(20)
    with pytest.raises(kflowers.DataError, match=r"0\.png can no longer be read .*changed after the dataset was"):
        data.load(0)


def test_pillow_notes_are_not_the_users_warnings(tmp_path):
    import warnings

    image = Image.new("P", (8, 8))
    image.putpalette([0, 0, 0, 255, 0, 0] * 128)
    image.info["transparency"] = b"\x00\xff"  # transparency as bytes: Pillow notes it with a UserWarning
    image.save(tmp_path / "p.png", transparency=b"\x00\xff")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kflowers.read_image(tmp_path / "p.png")


def test_explain_keeps_both_pictures_of_two_images_with_one_name(tmp_path, small_model_file):
    from kflowers.inference.explain import explain_images

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(gradient()).save(tmp_path / folder / "x.png")
    model = kflowers.load_model(small_model_file)
    written = explain_images(model, [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"], str(tmp_path / "out"))
    assert [os.path.basename(p) for p in written] == ["x.gradcam.png", "x.2.gradcam.png"]


# ------------------------------------------- files kflowers reads: never a FIFO or a device (issue 31, row 6)


def _within(seconds, function):
    """`function()`'s result, or a failure if it has not returned after `seconds` (a blocked read). The
    thread is a daemon: a test that fails here leaves it blocked, never the test run."""
    import threading

    box = {}
    thread = threading.Thread(target=lambda: box.update(result=function()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    return box["result"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, flowers_dir):
    from kflowers.cli.main import main

    out = tmp_path_factory.mktemp("reads") / "run"
    flags = ["--image-size", "32", "--batch-size", "16", "--seed", "3", "--quiet"]
    assert (
        main(["train", "--data", flowers_dir, "--out", str(out), "--strategy", "scratch", "--epochs", "1", *flags]) == 0
    )
    return out


def _copy_run(finished_run, tmp_path):
    import shutil

    shutil.copytree(finished_run, tmp_path / "run")
    return tmp_path / "run"


def _fifo_marker(run, tmp_path, data):
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / ".kflowers-run")
    return ["train", "--data", data, "--out", out, "--epochs", "1"], ".kflowers-run"


def _fifo_config(run, tmp_path, data):
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "config.json")
    return ["train", "--data", data, "--out", out, "--epochs", "1"], "config.json"


def _fifo_split(run, tmp_path, data):
    (run / "split.json").unlink()
    os.mkfifo(run / "split.json")
    return ["evaluate", "--model", run / "model.keras", "--data", data], "split.json is a FIFO"


def _split_is_dev_zero(run, tmp_path, data):
    (run / "split.json").unlink()
    os.symlink("/dev/zero", run / "split.json")
    return ["evaluate", "--model", run / "model.keras", "--data", data], "split.json is a device"


def _fifo_metrics(run, tmp_path, data):
    (run / "metrics.json").unlink()
    os.mkfifo(run / "metrics.json")
    flags = ["--strategy", "scratch", "--epochs", "1", "--image-size", "32", "--batch-size", "16", "--seed", "3"]
    return ["train", "--data", data, "--out", run, "--resume", *flags], "metrics.json is a FIFO"


def _fifo_weights(run, tmp_path, data):
    os.mkfifo(tmp_path / "x.pth")
    return ["train", "--data", data, "--out", tmp_path / "out", "--weights", tmp_path / "x.pth"], "x.pth is a FIFO"


HANG_ROWS = {
    "FIFO as OUT/.kflowers-run": _fifo_marker,
    "FIFO as OUT/config.json": _fifo_config,
    "FIFO as RUN/split.json": _fifo_split,
    "RUN/split.json linked to /dev/zero": _split_is_dev_zero,
    "FIFO as a finished run's metrics.json": _fifo_metrics,
    "FIFO as --weights": _fifo_weights,
}


@pytest.mark.parametrize("row", list(HANG_ROWS))
def test_a_fifo_or_device_is_one_line_never_a_hang(row, finished_run, flowers_dir, tmp_path, capsys):
    from kflowers.cli.main import main

    run = _copy_run(finished_run, tmp_path)
    args, says = HANG_ROWS[row](run, tmp_path, flowers_dir)
    capsys.readouterr()
    code = _within(60, lambda: main([str(a) for a in args] + quiet(args)))
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert says in lines[0]


def quiet(args):
    return ["--quiet"] if args[0] == "train" else []


def test_fifos_and_devices_named_in_split_json_are_passed_over(finished_run, flowers_dir, tmp_path, capsys):
    """The training images `evaluate` hashes (to count test images the model trained on) are read only when
    they are regular files: a FIFO would block, a thousand links to /dev/zero would each be read for 64 MB."""
    import json
    import shutil

    from kflowers.cli.main import main

    run = _copy_run(finished_run, tmp_path)
    data = tmp_path / "data"
    shutil.copytree(flowers_dir, data)
    split = json.loads((run / "split.json").read_text())
    config = json.loads((run / "config.json").read_text())
    first = split["train"][0]
    os.remove(data / os.path.relpath(first, config["data"]))
    os.mkfifo(data / os.path.relpath(first, config["data"]))
    for i in range(1000):
        os.symlink("/dev/zero", data / f"zero{i}.jpg")
        split["train"].append(str(data / f"zero{i}.jpg"))
    split["train"] = [str(data / os.path.relpath(p, config["data"])) for p in split["train"]]
    split["test"] = [str(data / os.path.relpath(p, config["data"])) for p in split["test"]]
    config["data"] = str(data)
    (run / "split.json").write_text(json.dumps(split))
    (run / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    code = _within(60, lambda: main(["evaluate", "--model", str(run / "model.keras"), "--data", flowers_dir, "--json"]))
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["images"] > 0
