"""kflowers deletes or replaces only what it wrote: a user's files in `--out` survive every command,
the lock can't be aimed at another file through a link, and an export never removes a folder."""

import os

import numpy as np
import pytest

import kflowers

from kflowers.training import backup
from kflowers.cli.main import main as kflowers_main
from kflowers.errors import KflowersError
from kflowers.files import TEMPORARY_PREFIX
from kflowers.runs.directory import MARKER
from kflowers.runs.directory import RunLock
from kflowers.runs.directory import remove_temporaries
from clitools import TRAIN_FLAGS

pytestmark = pytest.mark.one_backend  # which files kflowers writes and removes: the torch pass covers it

FAST = ["--strategy", "scratch", "--epochs", "1", "--quiet", *TRAIN_FLAGS]

# A user's project folder: what `--out .` or `--out my-project` would point at.
USER_FILES = {
    "notes.txt": "my notes",
    "config.json": '{"mine": true}',
    ".env.tmpl": "SECRET=",
    "sub/.draft.tmp.md": "draft",
    "sub/model.keras": "not a model",
    "backup/mine.txt": "my backup",
}


def make_user_folder(folder):
    for name, text in USER_FILES.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def user_files_left(folder):
    return {name: (folder / name).read_text() for name in USER_FILES if (folder / name).exists()}


def run(args, capsys):
    capsys.readouterr()
    code = kflowers_main([str(a) for a in args])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("command", ["train", "compare", "demo"])
def test_a_folder_with_user_files_is_refused_and_untouched(command, flowers_dir, tmp_path, capsys):
    out = make_user_folder(tmp_path / "project")
    args = {
        "train": ["train", "--data", flowers_dir, "--out", out, *FAST],
        "compare": ["compare", "--data", flowers_dir, "--out", out, "--strategies", "scratch", *FAST[4:]],
        "demo": ["demo", "--out", out, "--quiet"],
    }[command]
    code, lines = run(args, capsys)
    assert code == 2 and len(lines) == 1
    assert f"--out {out} holds files kflowers did not write (.env.tmpl, backup, config.json and 2 more)" in lines[0]
    assert "--force" in lines[0]
    assert user_files_left(out) == USER_FILES
    assert sorted(os.listdir(out)) == sorted({name.split("/")[0] for name in USER_FILES})


@pytest.mark.slow
def test_force_replaces_only_kflowers_file_names(flowers_dir, tmp_path, capsys):
    out = make_user_folder(tmp_path / "project")
    (out / (TEMPORARY_PREFIX + "x.k1ll3d00.tmp")).write_text("left by a killed kflowers")
    code, lines = run(["train", "--data", flowers_dir, "--out", out, *FAST, "--force"], capsys)
    assert code == 0, lines
    left = user_files_left(out)
    assert '"strategy": "scratch"' in left.pop("config.json")  # config.json is a kflowers file name: replaced
    assert left == {name: text for name, text in USER_FILES.items() if name != "config.json"}
    assert os.path.exists(out / MARKER) and os.path.exists(out / "model.keras")
    assert not os.path.exists(out / (TEMPORARY_PREFIX + "x.k1ll3d00.tmp"))
    # Now the folder is a run directory: a second run needs no --force.
    code, lines = run(["train", "--data", flowers_dir, "--out", out, *FAST], capsys)
    assert code == 0, lines
    assert {k: v for k, v in user_files_left(out).items() if k != "config.json"} == left


def test_out_inside_the_data_is_refused(flowers_dir, capsys):
    out = os.path.join(flowers_dir, "rose", "run")
    code, lines = run(["train", "--data", flowers_dir, "--out", out, *FAST], capsys)
    assert code == 2 and f"--out {out} is inside the dataset folder" in lines[-1]
    assert not os.path.exists(out)


def test_a_link_planted_as_the_lock_is_refused(tmp_path):
    target = tmp_path / "bashrc"
    target.write_text("the user's shell setup")
    out = tmp_path / "run"
    out.mkdir()
    os.symlink(target, out / ".kflowers.lock")
    with pytest.raises(KflowersError, match="is not kflowers's lock file"):
        with RunLock(str(out)):
            pass
    assert target.read_text() == "the user's shell setup"


def test_temporaries_are_cleaned_only_at_the_top_and_only_with_kflowers_prefix(tmp_path):
    ours = [TEMPORARY_PREFIX + "model.keras.1.tmp.keras", TEMPORARY_PREFIX + "saved.2.tmp"]
    (tmp_path / ours[0]).write_text("x")
    (tmp_path / ours[1]).mkdir()
    theirs = [".env.tmpl", ".draft.tmp.md", "sub/" + TEMPORARY_PREFIX + "deep.tmp"]
    for name in theirs:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("mine")
    remove_temporaries(str(tmp_path))
    assert not any((tmp_path / name).exists() for name in ours)
    assert all((tmp_path / name).read_text() == "mine" for name in theirs)


def test_removing_a_backup_removes_only_its_state(tmp_path):
    folder = tmp_path / "backup"
    (folder / "rank1").mkdir(parents=True)
    for path in (folder / backup.FILE_NAME, folder / "rank1" / backup.FILE_NAME):
        path.write_bytes(b"state")
    (folder / "mine.txt").write_text("mine")
    backup.remove(str(folder))
    assert sorted(os.listdir(folder)) == ["mine.txt"]
    (folder / "mine.txt").unlink()
    (folder / backup.FILE_NAME).write_bytes(b"state")
    backup.remove(str(folder))
    assert not folder.exists()


@pytest.mark.parametrize("format", ["onnx", "saved_model"])
def test_export_over_an_existing_target_is_refused(small_model_file, tmp_path, capsys, format):
    run_dir = make_user_folder(tmp_path / "run")
    target = run_dir if format == "saved_model" else run_dir / "notes.txt"
    code, lines = run(["export", "--model", small_model_file, "--format", format, "--out", target], capsys)
    assert code == 2 and len(lines) == 1
    assert f"--out {target} already exists" in lines[0] and "--force" in lines[0]
    assert user_files_left(run_dir) == USER_FILES
    code, lines = run(["export", "--model", small_model_file, "--format", "onnx", "--out", run_dir], capsys)
    assert code == 2 and "is a folder or a link; a onnx export is a file" in lines[0]
    assert user_files_left(run_dir) == USER_FILES


def _fake_export(monkeypatch, outputs):
    """The onnx export made and run in this process by stand-ins: the runtime returns `outputs`."""
    import keras

    from kflowers.inference import export

    monkeypatch.setitem(export.FORMATS, "onnx", keras.backend.backend())
    monkeypatch.setitem(export.RUNTIMES, "onnx", ())
    monkeypatch.setitem(export.EXPORTERS, "onnx", lambda model, path, size: open(path, "wb").close())
    monkeypatch.setitem(export.RUNNERS, "onnx", outputs)
    monkeypatch.delitem(export.CLASS_NAME_WRITERS, "onnx")


def test_export_force_replaces_only_the_export_files_in_a_folder(small_model_file, tmp_path, monkeypatch):
    import keras

    from kflowers.inference import export

    def write_saved_model(model, path, size):
        os.makedirs(os.path.join(path, "variables"))
        open(os.path.join(path, "saved_model.pb"), "w").close()

    def predictions(path, pixels):
        return keras.ops.convert_to_numpy(kflowers.load_model(small_model_file).predict(pixels, verbose=0))

    monkeypatch.setitem(export.FORMATS, "saved_model", keras.backend.backend())
    monkeypatch.setitem(export.RUNTIMES, "saved_model", ())
    monkeypatch.setitem(export.EXPORTERS, "saved_model", write_saved_model)
    monkeypatch.setitem(export.RUNNERS, "saved_model", predictions)
    folder = make_user_folder(tmp_path / "run")
    (folder / "saved_model.pb").write_text("an old export")
    export.export_model(small_model_file, "saved_model", folder, force=True)
    assert user_files_left(folder) == USER_FILES
    assert (folder / "saved_model.pb").read_text() == "" and (folder / "variables").is_dir()
    assert (folder / "assets" / "class_names.json").exists()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


@pytest.mark.parametrize("where", ["model", "runtime"])
def test_the_export_check_fails_on_nan(small_model_file, tmp_path, monkeypatch, where):
    import keras

    from kflowers.inference import export
    from kflowers.inference.export import ExportMismatch

    model = kflowers.load_model(small_model_file)
    if where == "model":  # a model whose outputs are NaN: its top-1 would read as class 0
        bias = kflowers.model_parts(model).head.bias
        bias.assign(np.full(bias.shape, np.nan, "float32"))
        path = tmp_path / "nan.keras"
        kflowers.save_model(model, path, model.class_names)
        runtime = lambda path, pixels: np.zeros((len(pixels), 5), "float32")  # noqa: E731
    else:  # a runtime that returns NaN for a model whose top-1 is class 0
        path = small_model_file

        def runtime(file, pixels):
            logits = keras.ops.convert_to_numpy(model.predict(pixels, verbose=0))
            logits[:, 1:] = np.nan
            return logits

    _fake_export(monkeypatch, runtime)
    with pytest.raises(ExportMismatch, match="not finite"):
        export.export_model(path, "onnx", tmp_path / "out.onnx")
    assert not os.path.exists(tmp_path / "out.onnx")


@pytest.mark.slow
def test_ctrl_c_in_compare_keeps_what_ran_and_stops(flowers_dir, tmp_path, capsys, monkeypatch):
    """Ctrl-C during the second strategy: the first's results are kept, the third never starts, and a
    partial compare.md says so (it went on to the next strategy, then failed with KeyError: 'loss')."""
    import json

    from kflowers.runs import run as runs

    real = runs.StopOnInterrupt
    calls = []

    class CtrlCInSecond(real):
        def __enter__(self):
            calls.append(1)
            entered = super().__enter__()
            if len(calls) == 2:
                self.event.set()  # as the first Ctrl-C does: stop after this batch
            return entered

    monkeypatch.setattr(runs, "StopOnInterrupt", CtrlCInSecond)
    out = tmp_path / "compare"
    args = ["compare", "--data", flowers_dir, "--out", out, "--strategies", "scratch", "finetune", "frozen"]
    code, _ = run([*args, "--epochs", "1", "--weights", "none", "--quiet", *TRAIN_FLAGS], capsys)
    assert code == 130 and len(calls) == 2
    table = (out / "compare.md").read_text()
    assert "| scratch | lesson |" in table and "Interrupted (Ctrl-C) during finetune; not run: frozen" in table
    compared = json.loads((out / "compare.json").read_text())
    assert [row["strategy"] for row in compared["rows"]] == ["scratch", "finetune"]
    assert compared["rows"][1]["interrupted"] and not os.path.exists(out / "frozen")
    assert os.path.getsize(out / "curves.png") > 0


def test_an_export_cleans_what_a_killed_export_to_the_same_target_left(small_model_file, tmp_path, monkeypatch):
    import keras

    _fake_export(
        monkeypatch,
        lambda path, pixels: keras.ops.convert_to_numpy(
            kflowers.load_model(small_model_file).predict(pixels, verbose=0)
        ),
    )
    left = tmp_path / (TEMPORARY_PREFIX + "out.onnx.k1ll3d.tmp.onnx")
    left.write_bytes(b"half an export")
    other = tmp_path / (TEMPORARY_PREFIX + "other.onnx.x.tmp.onnx")  # another target's: not ours to judge
    other.write_bytes(b"x")
    from kflowers.inference import export

    export.export_model(small_model_file, "onnx", tmp_path / "out.onnx")
    assert not left.exists() and other.exists() and (tmp_path / "out.onnx").exists()


def test_a_temporary_named_link_to_a_folder_is_unlinked_never_followed(tmp_path):
    kept = tmp_path / "sub"
    kept.mkdir()
    (kept / "model.keras").write_text("mine")
    os.symlink(kept, tmp_path / (TEMPORARY_PREFIX + "x.k1ll3d00.tmp"))
    remove_temporaries(str(tmp_path))
    assert not os.path.lexists(tmp_path / (TEMPORARY_PREFIX + "x.k1ll3d00.tmp"))
    assert (kept / "model.keras").read_text() == "mine"


# ---------------------------------------------------------------- what each command may replace: one row an attack


def _plant_user_demo_data(out):
    (out / "demo-data" / "daisy").mkdir(parents=True)
    (out / "demo-data" / "daisy" / "daisy_000.JPG").write_text("my photo")
    (out / "demo-data" / "notes.txt").write_text("mine")
    return {"demo-data/daisy/daisy_000.JPG": "my photo", "demo-data/notes.txt": "mine"}


def _plant_demo_data_link(out):
    target = out.parent / "elsewhere"
    (target / "daisy").mkdir(parents=True)
    (target / "daisy" / "daisy_000.JPG").write_text("my photo")
    os.symlink(target, out / "demo-data")
    return {"../elsewhere/daisy/daisy_000.JPG": "my photo"}


def _plant_marker_and_demo_data(out):
    (out / MARKER).write_text('{"kind": "run", "run_id": "planted"}')
    return _plant_user_demo_data(out)


def _plant_explain_inputs(out):
    import shutil

    from PIL import Image

    Image.new("RGB", (40, 40), (200, 30, 30)).save(out / "b.jpg")
    shutil.copy(out / "b.jpg", out / "b.gradcam.png")  # the user's second photo, named like an output
    return {"b.jpg": (out / "b.jpg").read_bytes(), "b.gradcam.png": (out / "b.gradcam.png").read_bytes()}


def _plant_confusion(out):
    (out / "confusion.png").write_bytes(b"my own confusion matrix")
    return {"confusion.png": b"my own confusion matrix"}


def _plant_litert_sidecar(out):
    (out / "F.class_names.json").write_text('["mine"]')
    return {"F.class_names.json": '["mine"]'}


def _plant_compare_subfolder(out):
    (out / "scratch").mkdir()
    (out / "scratch" / "config.json").write_text('{"mine": true}')
    (out / "notes.txt").write_text("mine")
    return {"scratch/config.json": '{"mine": true}', "notes.txt": "mine"}


def _plant_temporary_looking_folder(out):
    (out / ".kflowers-tmp-notes").mkdir()
    (out / ".kflowers-tmp-notes" / "todo.txt").write_text("mine")
    return {".kflowers-tmp-notes/todo.txt": "mine"}


DATA_LOSS_ROWS = {
    # issue 31, row 1: --force never reaches into the demo's data folder when the demo did not draw it
    "demo --force into a user's demo-data": (_plant_user_demo_data, ["demo", "--out", "{out}", "--force"], "demo"),
    # row 2: a link named demo-data is refused, not written through
    "demo with demo-data a link": (_plant_demo_data_link, ["demo", "--out", "{out}", "--force"], "is a link"),
    # row 1, without --force: a planted run marker grants nothing over demo-data
    "demo into a marked folder": (_plant_marker_and_demo_data, ["demo", "--out", "{out}"], "did not draw"),
    # row 3: an output that is also an input
    "explain onto its own input": (
        _plant_explain_inputs,
        ["explain", "--model", "{model}", "{out}/b.jpg", "{out}/b.gradcam.png", "--out", "{out}"],
        "one of the photos",
    ),
    # row 4
    "evaluate --out over a user's confusion.png": (
        _plant_confusion,
        ["evaluate", "--model", "{model}", "--data", "{data}", "--out", "{out}"],
        "not a picture kflowers drew",
    ),
    "export litert beside a user's class_names.json": (
        _plant_litert_sidecar,
        ["export", "--model", "{model}", "--format", "litert", "--out", "{out}/F.tflite"],
        "F.class_names.json already exists",
    ),
    "compare --force into a user's strategy folder": (
        _plant_compare_subfolder,
        ["compare", "--data", "{data}", "--out", "{out}", "--strategies", "scratch", "--epochs", "1", "--force"],
        "scratch holds files kflowers did not write",
    ),
    # row 5: a name that only starts like a temporary is the user's
    "train into a folder with .kflowers-tmp-notes": (
        _plant_temporary_looking_folder,
        ["train", "--data", "{data}", "--out", "{out}", "--epochs", "1"],
        ".kflowers-tmp-notes",
    ),
}


def _tree(folder):
    found = {}
    for path in folder.parent.rglob("*"):
        if path.is_file() and not path.is_symlink():
            found[os.path.relpath(path, folder)] = path.read_bytes()
    return found


@pytest.mark.parametrize("row", list(DATA_LOSS_ROWS))
def test_a_users_bytes_survive(row, flowers_dir, small_model_file, tmp_path, capsys):
    plant, args, says = DATA_LOSS_ROWS[row]
    out = tmp_path / "user"
    out.mkdir()
    planted = plant(out)
    before = _tree(out)
    values = {"out": out, "model": small_model_file, "data": flowers_dir}
    code, lines = run([a.format(**values) for a in args], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert says in lines[0]
    for name, content in planted.items():
        data = (out / name).read_bytes()
        assert data == (content.encode() if isinstance(content, str) else content), name
    assert _tree(out) == before  # nothing written, nothing removed


@pytest.mark.slow
def test_force_keeps_a_folder_that_only_looks_like_a_temporary(flowers_dir, tmp_path, capsys):
    out = tmp_path / "user"
    out.mkdir()
    _plant_temporary_looking_folder(out)
    code, lines = run(["train", "--data", flowers_dir, "--out", out, *FAST, "--force"], capsys)
    assert code == 0, lines
    assert (out / ".kflowers-tmp-notes" / "todo.txt").read_text() == "mine"
    assert (out / "model.keras").exists()


def test_a_picture_kflowers_drew_is_replaced_and_a_users_is_not(tmp_path):
    from kflowers.plots import check_picture_replaceable
    from kflowers.plots import drawn_by_kflowers
    from kflowers.plots import new_figure
    from kflowers.plots import save_figure

    figure, _ = new_figure(1, 1)
    ours = save_figure(figure, tmp_path / "ours.png")
    assert drawn_by_kflowers(ours)
    check_picture_replaceable(ours)  # no error
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "theirs.png")
    with pytest.raises(KflowersError, match="not a picture kflowers drew"):
        check_picture_replaceable(tmp_path / "theirs.png")


@pytest.mark.slow
def test_demo_redraws_its_own_data_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run(["demo", "--out", out, "--quiet"], capsys)[0] == 0
    (out / "demo-data" / "mine.txt").write_text("kept")
    assert run(["demo", "--out", out, "--quiet"], capsys)[0] == 0
    assert (out / "demo-data" / "mine.txt").read_text() == "kept"
