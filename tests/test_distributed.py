"""Data-parallel training: shards, torch.distributed processes (gloo on the
CPU), and jax's DataParallel over 2 host devices."""

import json
import os
import re
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

import keras

import kflowers
from clitools import kill_when
from clitools import metrics_without_time
from kflowers.data.dataset import FlowerDataset

HERE = os.path.dirname(os.path.abspath(__file__))
_np = keras.ops.convert_to_numpy
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
TORCH_ENV = {**ENV, "KERAS_BACKEND": "torch"}  # torch.distributed runs need the torch backend


def test_shards_deal_out_each_global_batch(flowers_dir):
    folder = kflowers.scan_folder(flowers_dir)  # 60 images
    whole = FlowerDataset.from_folder(folder, batch_size=14, image_size=8, shuffle=True, seed=3)
    shards = [
        FlowerDataset.from_folder(folder, batch_size=7, image_size=8, shuffle=True, seed=3).shard(r, 2)
        for r in range(2)
    ]
    for epoch in (0, 1):
        order = whole.order(epoch)
        assert len(shards[0]) == len(shards[1]) == len(whole) == 5
        seen = []
        for batch in range(len(whole)):
            global_batch = order[batch * 14 : (batch + 1) * 14]
            parts = [s.order(epoch)[batch * 14 : (batch + 1) * 14][s.shard_index :: 2] for s in shards]
            assert sorted(np.concatenate(parts).tolist()) == sorted(global_batch.tolist())
            seen += np.concatenate(parts).tolist()
        assert sorted(seen) == list(range(60))


def test_a_tiny_last_batch_joins_the_one_before(flowers_dir):
    folder = kflowers.scan_folder(flowers_dir)
    shards = [
        FlowerDataset.from_folder(folder, batch_size=14, image_size=8).shard(r, 3) for r in range(3)
    ]  # global batch 42: 60 = 42 + 18
    sizes = [[len(s[i][1]) for i in range(len(s))] for s in shards]
    assert sum(map(sum, sizes)) == 60 and all(len(row) == 2 for row in sizes)
    folder_small = folder.subset(range(43))  # 42 + 1: the 1 can't be dealt to 3 processes
    shards = [FlowerDataset.from_folder(folder_small, batch_size=14, image_size=8).shard(r, 3) for r in range(3)]
    assert [len(s) for s in shards] == [1, 1, 1]
    assert sum(len(s[0][1]) for s in shards) == 43


def torchrun(out, data, strategy, batch, processes=2):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        os.path.join(HERE, "ddp_worker.py"),
        str(out),
        data,
        strategy,
        str(batch),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=TORCH_ENV)
    assert result.returncode == 0, result.stderr[-3000:]


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def on_two_nodes(script, *args, processes_per_node=1):
    """Run `script` as two torchrun "machines" on this one (`--nnodes 2`, a c10d rendezvous on localhost)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        f"--nproc-per-node={processes_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=localhost:{port}",
        "--rdzv-id=kflowers-test",
        os.path.join(HERE, script),
        *map(str, args),
    ]
    nodes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=TORCH_ENV)
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (_, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr[-3000:]
    return "".join(stdout for stdout, _ in outputs)


def single(out, data, strategy, batch):
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "ddp_worker.py"), str(out), data, strategy, str(batch)],
        capture_output=True,
        text=True,
        timeout=600,
        env=TORCH_ENV,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def load(path):
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.slow
def test_two_processes_stay_identical_and_read_every_sample_once(flowers_dir, tmp_path):
    pytest.importorskip("torch")
    torchrun(tmp_path, flowers_dir, "finetune", batch=8)
    rank0, rank1 = load(tmp_path / "rank0.npz"), load(tmp_path / "rank1.npz")
    assert rank0.keys() == rank1.keys()
    for key in rank0:  # weights and BatchNorm statistics alike
        np.testing.assert_array_equal(rank0[key], rank1[key], err_msg=key)
    records = [json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1)]
    seen = [record["seen"] for record in records]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(60))
    # torch's DDP engine reduces ResNet18's 62 gradients in a few buckets a step (11.2 M parameters: a
    # first bucket of 1 MB, then 25 MB ones), not one collective per parameter; the epoch's 2 other
    # all-reduces are SyncReplicas's own: the BatchNorm statistics and the logs at the epoch's end
    # (one message each; the worker has no test data, so no evaluation averages them before).
    for record in records:
        per_step = (record["all_reduces"] - 2) / record["steps"]
        assert 2 <= per_step <= 4, record["all_reduces"]


@pytest.mark.slow
def test_two_machines_train_as_one_with_the_same_global_batch(flowers_dir, tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "nodes").mkdir()
    (tmp_path / "one").mkdir()
    on_two_nodes("ddp_worker.py", tmp_path / "nodes", flowers_dir, "frozen", 6)
    single(tmp_path / "one", flowers_dir, "frozen", batch=12)
    ranks = [load(tmp_path / "nodes" / f"rank{r}.npz") for r in (0, 1)]
    reference = load(tmp_path / "one" / "rank0.npz")
    for key in reference:
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=key)
        np.testing.assert_allclose(ranks[0][key], reference[key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.slow
def test_under_torchrun_a_killed_run_resumes_to_the_straight_runs_result(flowers_dir, tmp_path):
    """The CLI under torchrun with the modern recipe (both stages: the unfreeze rebuilds DDP's engine, EMA,
    schedule). SIGKILL of torchrun and all its workers after epoch 1 (a lost machine), then `--resume` under
    torchrun: rank 0 wrote the backup, every rank restores from it, and the run ends as the uninterrupted
    one. (Ctrl-C of two workers, which must agree on the batch they stop after, then `--resume`:
    `test_ctrl_c_under_launch_is_exit_130_without_a_traceback_and_resume_finishes`.)"""
    pytest.importorskip("torch")
    launch = ["torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "kflowers"]
    # 5 short epochs: the signal must land before the run ends.
    flags = ["train", "--data", flowers_dir, "--strategy", "two-stage", "--recipe", "modern", "--epochs", "5"]
    flags += ["--weights", "none", "--image-size", "32", "--batch-size", "8", "--precision", "float32"]

    def torchrun_cli(*extra):
        command = [sys.executable, "-m", *launch, *flags, *map(str, extra)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=TORCH_ENV)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    output = torchrun_cli("--out", tmp_path / "straight")
    assert output.count("two-stage: test accuracy") == 1  # rank 0 alone reports and writes
    assert json.load(open(tmp_path / "straight" / "config.json"))["processes"] == 2
    assert not (tmp_path / "straight" / "backup").exists()  # a finished run keeps no backup
    interrupted = tmp_path / "interrupted"
    kill_when([*launch, *flags, "--out", interrupted], "Epoch 2/", env=TORCH_ENV, sig=signal.SIGKILL)
    assert (interrupted / "backup" / "state.npz").exists()
    assert not list((interrupted / "backup").glob("rank*"))  # rank 0 alone writes it
    assert not (interrupted / "metrics.json").exists()
    output = torchrun_cli("--out", interrupted, "--resume")
    assert re.search(r"Resuming after epoch [1-4] of 5", output), output
    assert metrics_without_time(interrupted) == metrics_without_time(tmp_path / "straight")
    resumed = kflowers.load_model(interrupted / "model.keras")
    straight = kflowers.load_model(tmp_path / "straight" / "model.keras")
    assert kflowers.model_parts(straight).backbone.trainable  # both stages ran
    for a, b in zip(resumed.weights, straight.weights):
        np.testing.assert_array_equal(_np(a), _np(b), err_msg=a.path)


@pytest.mark.slow
def test_jax_data_parallel_over_two_host_devices(flowers_dir, tmp_path):
    pytest.importorskip("jax", reason="jax is an optional extra (pip install -e .[jax])")
    env = {**ENV, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    runs = {}
    for name, extra in (("two", env), ("one", {**ENV, "KERAS_BACKEND": "jax"})):
        out = tmp_path / name
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "kflowers",
                "train",
                "--data",
                flowers_dir,
                "--strategy",
                "frozen",
                "--no-feature-cache",
                "--epochs",
                "1",
                "--weights",
                "none",
                "--image-size",
                "32",
                "--batch-size",
                "8",
                "--out",
                str(out),
                "--quiet",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env=extra,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = json.load(open(out / "metrics.json"))
        assert json.load(open(out / "config.json"))["devices"] == (2 if name == "two" else 1)
    assert runs["two"]["test_loss"] == pytest.approx(runs["one"]["test_loss"], rel=1e-4)


@pytest.mark.slow
def test_jax_across_two_processes_trains_as_one_with_the_same_global_batch(flowers_dir, tmp_path):
    """`jax.distributed` with gloo collectives on the CPU: two processes, one device each, one model."""
    pytest.importorskip("jax", reason="jax is an optional extra (pip install -e .[jax])")
    worker = os.path.join(HERE, "jax_worker.py")
    env = {**ENV, "KERAS_BACKEND": "jax"}
    port = free_port()
    two = [
        subprocess.Popen(
            [sys.executable, worker, str(tmp_path), flowers_dir, "6", str(port), str(i), "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in (0, 1)
    ]
    for process in two:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
    (tmp_path / "one").mkdir()
    one = subprocess.run(
        [sys.executable, worker, str(tmp_path / "one"), flowers_dir, "12", "0", "0", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    ranks = [load(tmp_path / f"rank{r}.npz") for r in (0, 1)]
    reference = load(tmp_path / "one" / "rank0.npz")
    for key in reference:
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=key)
        np.testing.assert_allclose(ranks[0][key], reference[key], rtol=1e-4, atol=1e-5, err_msg=key)


@pytest.mark.slow
def test_under_torchrun_rank_0_fills_a_shared_cache_before_the_others(tmp_path):
    pytest.importorskip("torch")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=3",
        os.path.join(HERE, "ddp_main_first.py"),
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=TORCH_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = sorted(line for line in result.stdout.splitlines() if line.startswith("rank "))
    assert lines == ["rank 0 filled the cache", "rank 1 found the cache", "rank 2 found the cache"]
    assert (tmp_path / "node0" / ".complete").read_text() == "0"


@pytest.mark.slow
def test_on_two_machines_each_fills_its_own_cache_once(tmp_path):
    """Each machine has its own disk (here: its own folder, by torchrun's GROUP_RANK): its first process
    downloads, its others wait and find the data."""
    pytest.importorskip("torch")
    output = on_two_nodes("ddp_main_first.py", tmp_path, processes_per_node=2)
    lines = sorted(line for line in output.splitlines() if line.startswith("rank "))
    assert len(lines) == 4
    filled = [line for line in lines if line.endswith("filled the cache")]
    assert len(filled) == 2  # one per machine: local rank 0 of each
    for node in ("node0", "node1"):
        assert (tmp_path / node / ".complete").exists()


@pytest.mark.one_backend  # torchrun's rendezvous, before any backend is chosen
def test_launch_waits_a_bounded_time_for_the_other_machines_then_says_so_in_one_line(flowers_dir, tmp_path):
    """Issue 31, row 7: `torchrun --nnodes 2` with no second machine waited silently for torchrun's 10-15
    minutes, before any kflowers code ran. `kflowers launch` says what it waits for and, after
    `--join-timeout`, ends with one line and exit 2, having written nothing."""
    from clitools import kflowers as run_cli

    endpoint = f"127.0.0.1:{free_port()}"
    result = run_cli(
        *("launch", "--nnodes", "2", "--node-rank", "0", "--rdzv-endpoint", endpoint, "--join-timeout", "3"),
        *("train", "--data", flowers_dir, "--out", tmp_path / "run", "--epochs", "1"),
        check=False,
        timeout=120,  # a hang fails here, well before torchrun's own 10-15 minutes
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 2, result.stderr[-3000:]
    assert lines[0] == f"kflowers launch: machine 0 of 2: waiting up to 3 s for the others to join at {endpoint}"
    assert lines[1].startswith(f"kflowers launch: error: the 2 machines did not all join at {endpoint} within 3 s")
    assert not (tmp_path / "run").exists()


@pytest.mark.one_backend
def test_launch_runs_the_command_under_torchrun_and_passes_on_its_exit_status(flowers_dir, tmp_path):
    from clitools import kflowers as run_cli

    endpoint = f"127.0.0.1:{free_port()}"
    flags = ("launch", "--rdzv-endpoint", endpoint, "--join-timeout", "60")
    result = run_cli(*flags, "show", "--data", flowers_dir, "--out", tmp_path / "grid.png", timeout=300)
    assert (tmp_path / "grid.png").is_file() and "| total |" in result.stdout
    missing = run_cli(*flags, "train", "--data", tmp_path / "nowhere", check=False, timeout=300)
    assert missing.returncode == 2 and "dataset folder not found" in missing.stderr
    nothing = run_cli("launch", "--nnodes", "2", "--node-rank", "2", "train", check=False)
    assert nothing.returncode == 2 and "--node-rank 2: must be from 0 to 1" in nothing.stderr


@pytest.mark.slow
@pytest.mark.one_backend
def test_ctrl_c_under_launch_is_exit_130_without_a_traceback_and_resume_finishes(flowers_dir, tmp_path):
    """Ctrl-C while `kflowers launch` trains two workers: torchrun's agent raised its SignalException as a
    traceback (exit 1); now the workers agree on the batch they stop after (none waits forever for the
    other), the interrupted run is saved, the launcher exits 130 in one line, and `--resume` finishes it."""
    endpoint = f"127.0.0.1:{free_port()}"
    run = ["launch", "--rdzv-endpoint", endpoint, "--nproc-per-node", "2", "train", "--data", flowers_dir]
    run += ["--out", tmp_path / "run"]
    run += ["--strategy", "scratch", "--weights", "none", "--epochs", "3", "--image-size", "32", "--batch-size", "8"]
    process = subprocess.Popen(
        [sys.executable, "-m", "kflowers", *map(str, run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=TORCH_ENV,
        start_new_session=True,  # Ctrl-C in a terminal signals the whole process group
    )
    for line in iter(process.stdout.readline, ""):
        if line.startswith("Epoch 2/"):
            os.killpg(process.pid, signal.SIGINT)
            break
    process.stdout.read()
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 130, stderr[-3000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "kflowers: interrupted"
    from clitools import kflowers as run_cli

    resumed = run_cli(*run, "--resume", timeout=300)
    assert "scratch: test accuracy" in resumed.stdout
    assert json.load(open(tmp_path / "run" / "metrics.json"))["epochs"] == 3
