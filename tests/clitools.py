"""Running the `kflowers` command line as a user runs it: in a subprocess."""

import json
import os
import signal
import subprocess
import sys

import kflowers

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
TRAIN_FLAGS = ["--image-size", "32", "--batch-size", "16", "--seed", "3"]
RUN_FILES = list(kflowers.runs.RUN_FILES)  # what a finished run directory holds


def kflowers(*args, check=True, timeout=600):
    result = subprocess.run(
        [sys.executable, "-m", "kflowers", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def descendants(pid):
    """The process ids below `pid` (children, their children...), read from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # gone meanwhile
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_when(command, line_start, env=ENV, sig=signal.SIGKILL):
    """Run `python -m COMMAND...` and signal it once a line of its output starts with `line_start`
    ("Epoch 2/N": epoch 1 is backed up once epoch 2 has begun); it must then end within two minutes.

    SIGKILL goes to it and every process below it, as when a machine loses power (torchrun starts its
    workers in sessions of their own); SIGINT goes to its process group, as Ctrl-C in a terminal does
    (torchrun passes it on to its workers, and kills them 30 s later if they have not ended)."""
    process = subprocess.Popen(
        [sys.executable, "-m", *map(str, command)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, as a command started from a terminal
    )
    for line in iter(process.stdout.readline, ""):  # each line as it comes (iterating waits for a full buffer)
        if line.startswith(line_start):
            if sig == signal.SIGKILL:
                for pid in [process.pid, *descendants(process.pid)]:
                    os.kill(pid, signal.SIGKILL)
            else:
                os.killpg(process.pid, sig)
            break
    process.stdout.read()  # whatever it says while it stops
    process.wait(timeout=120)
    if sig == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL


def metrics_without_time(run):
    """A run's metrics.json without its timings (which differ between identical runs)."""
    with open(os.path.join(run, "metrics.json")) as f:
        metrics = json.load(f)
    metrics.pop("wall_seconds")
    metrics.pop("seconds")
    return metrics
