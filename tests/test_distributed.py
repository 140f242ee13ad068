"""Data-parallel training: shards, torch.distributed processes (gloo on the
CPU), and jax's DataParallel over 2 host devices."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import kflowers
from kflowers.data.dataset import FlowerDataset

HERE = os.path.dirname(os.path.abspath(__file__))
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
    seen = [json.load(open(tmp_path / f"rank{r}.json"))["seen"] for r in (0, 1)]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(60))


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(flowers_dir, tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "ddp").mkdir()
    (tmp_path / "one").mkdir()
    torchrun(tmp_path / "ddp", flowers_dir, "frozen", batch=6)
    single(tmp_path / "one", flowers_dir, "frozen", batch=12)
    parallel, reference = load(tmp_path / "ddp" / "rank0.npz"), load(tmp_path / "one" / "rank0.npz")
    head = [key for key in reference if "head" in key]
    assert head
    for key in reference:
        np.testing.assert_allclose(parallel[key], reference[key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.slow
def test_torchrun_cli_writes_the_run_once_under_the_modern_recipe(flowers_dir, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "kflowers",
        "train",
        "--data",
        flowers_dir,
        "--strategy",
        "two-stage",
        "--recipe",
        "modern",
        "--epochs",
        "2",
        "--weights",
        "none",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--precision",
        "float32",
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=TORCH_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("two-stage: test accuracy") == 1
    config = json.load(open(out / "config.json"))
    assert config["processes"] == 2
    assert not (out / "backup").exists()  # a finished run keeps no backup
    # The modern recipe under torchrun: both stages (the unfreeze with a fresh optimizer, EMA, schedule).
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["epochs"] == 2
    model = kflowers.load_model(out / "model.keras")
    assert kflowers.model_parts(model).backbone.trainable


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
    assert (tmp_path / ".complete").read_text() == "0"
