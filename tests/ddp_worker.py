"""One process of a data-parallel run, for tests/test_distributed.py.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_worker.py OUT DATA STRATEGY BATCH

Trains one epoch with `kflowers.training.train` on this process's shard and
saves its variables (`rankN.npz`), the samples it read and the number of
all-reduce operations torch's profiler saw during training (`rankN.json`).
Without torchrun it is the single-process reference.
"""

import json
import os
import sys

import numpy as np
import torch

import kflowers
from kflowers.training import distributed
from kflowers.data.dataset import FlowerDataset
from kflowers.training.loop import train

out, data, strategy, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rank, size = distributed.init_torch_distributed()

import keras  # noqa: E402


class Recording(FlowerDataset):
    seen = None

    def load(self, i, epoch=0):
        if self.seen is not None:
            self.seen.append(int(i))
        return super().load(i, epoch)


class StartRecording(keras.callbacks.Callback):
    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset

    def on_train_begin(self, logs=None):
        self.dataset.seen = []


folder = kflowers.scan_folder(data)
keras.utils.set_random_seed(0)
model = kflowers.build_model(weights=None, image_size=32)
dataset = Recording(folder.paths, folder.labels, batch_size=batch, image_size=32, shuffle=True, seed=1)
callbacks = [StartRecording(dataset)]
if size > 1:
    dataset = dataset.shard(rank, size)
    callbacks[0].dataset = dataset
    callbacks.append(distributed.SyncReplicas())
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
    train(model, strategy, dataset, epochs=1, verbose=0, callbacks=callbacks, feature_cache=False, learning_rate=1e-3)
all_reduces = sum(event.count for event in profile.key_averages() if event.key.startswith("gloo:all_reduce"))
np.savez(
    os.path.join(out, f"rank{rank}.npz"),
    **{f"{i}:{v.path}": keras.ops.convert_to_numpy(v) for i, v in enumerate(model.variables)},
)
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"seen": dataset.seen, "paths": folder.paths, "steps": len(dataset), "all_reduces": all_reduces}, f)
