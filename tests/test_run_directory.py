"""A run directory belongs to one run: a second run refuses at once, a full disk or a kill while the
first backup is written loses nothing, and `--resume` then finishes the run as if nothing happened."""

import os
import signal
import subprocess
import sys

import pytest

from clitools import ENV
from clitools import TRAIN_FLAGS
from clitools import kflowers
from clitools import metrics_without_time as metrics

pytestmark = pytest.mark.slow  # whole training runs in subprocesses

FLAGS = ["--strategy", "finetune", "--epochs", "2", "--weights", "none", *TRAIN_FLAGS]


def train_args(data, out, *more):
    return ["train", "--data", data, "--out", str(out), *FLAGS, *more]


def temporaries(folder):
    return [os.path.join(d, n) for d, _, files in os.walk(folder) for n in files if ".tmp" in n]


@pytest.fixture(scope="module")
def straight(flowers_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    kflowers(*train_args(flowers_dir, out, "--quiet"))
    return metrics(out)


def test_a_second_run_into_the_same_out_refuses_at_once(flowers_dir, tmp_path, straight):
    out = tmp_path / "run"
    # The first run pauses after its first backup until the test lets it go on (a line on its stdin).
    code = (
        "import sys\n"
        "import kflowers.training.backup as backup\n"
        "saved = backup.save\n"
        "def pausing(folder, state):\n"
        "    saved(folder, state)\n"
        "    if state.epoch == 1:\n"
        "        print('PAUSED', flush=True); sys.stdin.readline()\n"
        "backup.save = pausing\n"
        "from kflowers.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    first = subprocess.Popen(
        [sys.executable, "-c", code, *train_args(flowers_dir, out, "--quiet")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=ENV,
    )
    for line in first.stdout:
        if line.startswith("PAUSED"):
            break
    second = kflowers(*train_args(flowers_dir, out, "--quiet"), check=False)
    first.stdin.write("go on\n")
    first.stdin.close()
    for _ in first.stdout:
        pass
    assert first.wait(timeout=300) == 0
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert f"is in use by another kflowers run (pid {first.pid} on" in second.stderr.splitlines()[-1]
    assert metrics(out) == straight  # the first run's results, untouched by the second
    assert not os.path.exists(out / ".kflowers.lock") and not os.path.exists(out / "backup")


def test_a_lock_left_by_a_dead_process_is_taken_over(flowers_dir, tmp_path, straight):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".kflowers.lock").write_text("pid 999999 on elsewhere")
    (out / ".kflowers-tmp-model.keras.abc.tmp.keras").write_bytes(b"left by a killed run")
    kflowers(*train_args(flowers_dir, out, "--quiet"))
    assert metrics(out) == straight and temporaries(out) == []


def test_killed_while_writing_the_first_backup_then_resume(flowers_dir, tmp_path, straight):
    out = tmp_path / "run"
    # Die half-way through the first write of backup/state.npz.
    code = (
        "import os, signal, sys, numpy as np\n"
        "def dying(f, **arrays):\n"
        "    f.write(b'half a backup'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "np.savez = dying\n"
        "from kflowers.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    died = subprocess.run(
        [sys.executable, "-c", code, *train_args(flowers_dir, out, "--quiet")],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert died.returncode == -signal.SIGKILL
    assert not os.path.exists(out / "backup" / "state.npz") and temporaries(out)  # the half-written one
    kflowers(*train_args(flowers_dir, out, "--quiet", "--resume"))
    assert metrics(out) == straight and temporaries(out) == []


def test_resume_with_other_data_changes_nothing(flowers_dir, tmp_path):
    import shutil

    out = tmp_path / "run"
    code = (
        "import os, signal, sys\n"
        "import kflowers.training.backup as backup\n"
        "def dying(folder, state):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "saved = backup.save\n"
        "def once(folder, state):\n"
        "    saved(folder, state); backup.save = dying\n"
        "backup.save = once\n"
        "from kflowers.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )  # dies after epoch 1 is backed up
    subprocess.run(
        [sys.executable, "-c", code, *train_args(flowers_dir, out, "--quiet")],
        env=ENV,
        timeout=300,
        capture_output=True,
    )
    assert os.path.exists(out / "backup" / "state.npz")
    other = tmp_path / "other"
    shutil.copytree(flowers_dir, other)
    os.remove(os.path.join(other, "rose", sorted(os.listdir(other / "rose"))[0]))
    before = {name: (out / name).read_bytes() for name in ("config.json", "split.json")}
    result = kflowers(*train_args(str(other), out, "--quiet", "--resume"), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "in data, split" in result.stderr.splitlines()[-1]
    assert {name: (out / name).read_bytes() for name in before} == before


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 5 MB tmpfs here ({mounted.stderr.strip() or 'mount failed'})")
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


def test_a_full_disk_is_one_line_and_resume_finishes(flowers_dir, small_disk, straight):
    out = small_disk / "run"
    result = kflowers(*train_args(flowers_dir, out, "--quiet"), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "No space left on device" in result.stderr.splitlines()[-1]
    assert temporaries(out) == [] and not os.path.exists(out / "model.keras")
    subprocess.run(["mount", "-o", "remount,size=400m", str(small_disk)], check=True)
    kflowers(*train_args(flowers_dir, out, "--quiet", "--resume"))
    assert metrics(out) == straight and temporaries(out) == []


def test_a_class_folder_named_in_bytes_that_are_not_utf8_trains_and_plots(flowers_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(flowers_dir, data)
    os.rename(data / "rose", os.path.join(os.fsencode(data), b"ros\xe9"))  # Latin-1, as old cameras wrote it
    out = tmp_path / "run"
    kflowers(*train_args(str(data), out, "--quiet", "--epochs", "1"))
    values = metrics(out)
    assert "ros\ufffd" in values["per_class"]
    for name in ("confusion.png", "top_losses.png", "curves.png", "model.keras"):
        assert os.path.getsize(out / name) > 0
