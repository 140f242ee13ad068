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


def kill_when(command, line_start, env=ENV):
    """Run `python -m COMMAND...` and SIGKILL it, with every process it started (as a machine that loses
    power), once a line of its output starts with `line_start` ("Epoch 2/N": epoch 1 is backed up once
    epoch 2 has begun)."""
    process = subprocess.Popen(
        [sys.executable, "-m", *map(str, command)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: torchrun's workers die with it
    )
    for line in process.stdout:
        if line.startswith(line_start):
            os.killpg(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


def metrics_without_time(run):
    """A run's metrics.json without its timings (which differ between identical runs)."""
    with open(os.path.join(run, "metrics.json")) as f:
        metrics = json.load(f)
    metrics.pop("wall_seconds")
    metrics.pop("seconds")
    return metrics
