"""Data-parallel training on the engines you already have.

torch backend: one process per device, launched with `torchrun`, joined with
`torch.distributed` (gloo on the CPU, nccl on GPUs). Each process reads its
own shard of every global batch (`FlowerDataset.shard`), and the
`SyncReplicas` callback hands gradient averaging to torch's own
`DistributedDataParallel` engine: gradients are packed into buckets (25 MB,
1 MB for the first) and each bucket is all-reduced while backpropagation is
still computing the rest. BatchNorm statistics are averaged before every
evaluation and after every epoch, so all processes hold the same weights.
`model.fit` is unchanged: it is the same loop on every process.

    torchrun --nproc-per-node 2 -m kflowers train --data flowers --strategy finetune

On more than one machine, start the same command on each with `--nnodes N`
and a rendezvous point (docs/backends-and-scale.md).

jax backend: `keras.distribution.DataParallel` over all local devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=2` makes 2 CPU devices).
"""

import os

import keras


def world():
    """`(rank, world_size)` of this process: `(0, 1)` unless launched by torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main_process():
    return world()[0] == 0


def local_rank():
    """This process's rank on its own machine (torchrun's `LOCAL_RANK`): 0 on a single process."""
    return int(os.environ.get("LOCAL_RANK", 0))


def init_torch_distributed():
    """Join the process group torchrun set up; return `(rank, world_size)`."""
    import torch
    import torch.distributed as dist

    rank, size = world()
    if size > 1 and not dist.is_initialized():
        if keras.backend.backend() != "torch":
            raise RuntimeError(
                f"torchrun needs KERAS_BACKEND=torch (got {keras.backend.backend()}); "
                "for jax, run one process and let keras.distribution.DataParallel use the devices"
            )
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
    return rank, size


def barrier():
    """Wait for every process of a torchrun group (nothing to wait for on a single process)."""
    if world()[1] > 1:
        import torch.distributed as dist

        init_torch_distributed()
        dist.barrier()


def agree(*flags):
    """`flags`, each made true on every process when it is true on any (one small all-reduce under
    torchrun; the flags as given in a single process).

    For decisions every process must take at the same batch (stop on Ctrl-C,
    stop on a diverged loss): a process that stopped alone would leave the
    others waiting in their next gradient all-reduce.
    """
    if world()[1] == 1 or keras.backend.backend() != "torch":
        return flags
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return flags
    values = torch.tensor([float(bool(flag)) for flag in flags])
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return tuple(bool(value) for value in values)


def smallest(value):
    """The smallest of every process's integer `value` (one small all-reduce under torchrun; `value` in a
    single process): for plans every process must make alike, such as a budget's epochs."""
    if world()[1] == 1 or keras.backend.backend() != "torch":
        return value
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    values = torch.tensor([int(value)], dtype=torch.int64)
    dist.all_reduce(values, op=dist.ReduceOp.MIN)
    return int(values[0])


def main_process_first(function):
    """`function()` on each machine's first process first; the others call it once those are done.

    For work that fills a machine's cache, such as downloading the dataset:
    under torchrun the process with `LOCAL_RANK` 0 of every machine downloads
    and extracts, and the machine's other processes then find the cache
    complete. A single process just calls `function()`.

    Args:
        function: a callable of no arguments, safe to call again once its
            work is done (it should then find what the first call left).
    """
    if world()[1] == 1:
        return function()
    if local_rank() == 0:
        result = function()
        barrier()
        return result
    barrier()
    return function()


def enable_jax_data_parallel():
    """Spread every batch over all JAX devices; return how many there are."""
    devices = keras.distribution.list_devices()
    if len(devices) > 1:
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return len(devices)


class SyncReplicas(keras.callbacks.Callback):
    """Keep torchrun processes in step during `model.fit`, with torch's DDP engine.

    - at the start of `fit`, every variable is broadcast from rank 0 (in one
      message per dtype, not one per variable);
    - the trainable variables are handed to a `DistributedDataParallel`
      module, armed before each training batch: during `backward`, it
      all-reduces the gradients bucket by bucket, overlapped with the rest of
      backpropagation, and leaves their average in each variable's `.grad`,
      where Keras's optimizer reads it. When the set of trainable variables
      changes (a stage's unfreeze, `UnfreezeBackbone`), the engine is rebuilt
      for the new set before the next batch;
    - before each evaluation and after each epoch, non-trainable variables
      (BatchNorm's moving mean and variance) are averaged, so every process
      scores the same model; the epoch's training loss and accuracy in `logs`
      become the average over processes.

    Needs the torch backend and an initialised process group
    (`init_torch_distributed()`); each process must see the same number of
    batches (`FlowerDataset.shard` makes sure of it). In a single process
    (no process group, or a group of one) it does nothing, so one script
    serves both.

    Example:
    ```python
    rank, size = kflowers.distributed.init_torch_distributed()
    dataset = kflowers.FlowerDataset.from_folder(folder, batch_size=16, image_size=64).shard(rank, size)
    model.fit(dataset, epochs=2, callbacks=[kflowers.distributed.SyncReplicas()])
    ```
    """

    def __init__(self):
        super().__init__()
        self._engine = None
        self._trainable = ()
        self._active = False

    def on_train_begin(self, logs=None):
        import torch.distributed as dist

        self._active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self._engine, self._trainable = None, ()
        if self._active:
            _coalesced([v.value.data for v in self.model.variables], lambda flat: dist.broadcast(flat, src=0))

    def on_train_batch_begin(self, batch, logs=None):
        if not self._active:
            return
        trainable = tuple(v.value for v in self.model.trainable_variables)
        if len(trainable) != len(self._trainable) or any(a is not b for a, b in zip(trainable, self._trainable)):
            self._engine = _gradient_engine(trainable) if trainable else None
            self._trainable = trainable
        if self._engine is not None:
            self._engine()  # arms the reducer for this batch's backward

    def on_test_begin(self, logs=None):
        if self._active:
            self._average_statistics()

    def on_epoch_end(self, epoch, logs=None):
        if self._active:
            self._average_statistics()
            _average_logs(logs or {}, ("loss", "accuracy"))

    def on_train_end(self, logs=None):
        self._engine, self._trainable = None, ()

    def _average_statistics(self):
        import torch.distributed as dist

        size = dist.get_world_size()
        values = [v.value.data for v in self.model.non_trainable_variables if v.value.is_floating_point()]

        def average(flat):
            dist.all_reduce(flat)
            flat /= size

        _coalesced(values, average)


def _gradient_engine(parameters):
    """A `DistributedDataParallel` over `parameters` (the model's trainable torch parameters).

    DDP registers its hooks on the parameters themselves, so the Keras model's
    own forward and `backward` feed it; calling the returned module (its
    forward does nothing) is what DDP needs before each backward.
    """
    import torch

    class TrainableParameters(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.trainable = torch.nn.ParameterList(parameters)

        def forward(self):
            return None

    return torch.nn.parallel.DistributedDataParallel(TrainableParameters())  # it has no buffers to sync


def _coalesced(tensors, collective):
    """Run `collective` once per dtype on the tensors flattened together, then copy the result back."""
    import torch

    by_dtype = {}
    for tensor in tensors:
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        collective(flat)
        offset = 0
        for tensor in group:
            tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()


def _average_logs(logs, keys):
    import torch
    import torch.distributed as dist

    names = [k for k in keys if k in logs]
    if not names:
        return
    values = torch.tensor([float(logs[k]) for k in names], dtype=torch.float64)
    dist.all_reduce(values)
    values /= dist.get_world_size()
    logs.update({name: float(value) for name, value in zip(names, values)})
