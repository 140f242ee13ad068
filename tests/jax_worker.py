"""One process of a jax data-parallel run across processes, for tests/test_distributed.py.

    python tests/jax_worker.py OUT DATA BATCH PORT PROCESS_ID PROCESSES

Joins the other processes (`jax.distributed.initialize`, gloo collectives on
the CPU), spreads every global batch over all of their devices
(`keras.distribution.DataParallel`), trains the head for one epoch on this process's shard
(`FlowerDataset.shard`: the process's own part of every global batch, so
Keras's own sharding is off) and saves the weights (`rankN.npz`). With 1
process it is the single-process reference.
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402

out, data, batch, port, process_id, processes = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
if processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    jax.distributed.initialize(f"localhost:{port}", num_processes=processes, process_id=process_id)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kflowers  # noqa: E402

devices = keras.distribution.list_devices()  # every device of every process
assert len(devices) == processes
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))
folder = kflowers.scan_folder(data)
dataset = kflowers.FlowerDataset.from_folder(folder, batch_size=batch, image_size=32, shuffle=True, seed=1)
dataset = dataset.shard(process_id, processes)
keras.utils.set_random_seed(0)
model = kflowers.build_model(weights=None, image_size=32)
# Frozen, as test_two_machines_train_as_one's torch runs: a random backbone trained from scratch at this
# rate is chaotic (two float orders of the same sums drift apart by 10x a step), the head alone is not.
kflowers.model_parts(model).backbone.trainable = False
model.compile(keras.optimizers.SGD(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(dataset, epochs=1, shuffle=False, verbose=0)
np.savez(
    os.path.join(out, f"rank{process_id}.npz"),
    **{f"{i}:{v.path}": keras.ops.convert_to_numpy(v) for i, v in enumerate(model.variables)},
)
