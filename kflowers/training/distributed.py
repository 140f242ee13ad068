"""Data-parallel training on the engines you already have.

torch backend: one process per device, launched with `torchrun`, joined with
`torch.distributed` (gloo on the CPU, nccl on GPUs). Each process reads its
own shard of every global batch (`FlowerDataset.shard`), gradients are
averaged across processes as soon as backpropagation produces them, and
BatchNorm statistics are averaged after every epoch, so all processes hold the
same weights. `model.fit` is unchanged: it is the same loop on every process.

    torchrun --nproc-per-node 2 -m kflowers train --data flowers --strategy finetune

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
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return rank, size


def main_process_first(function):
    """`function()` on rank 0 first; the other processes call it once rank 0 is done.

    For work that fills a shared cache, such as downloading the dataset: under
    torchrun only rank 0 downloads and extracts, and the others then find the
    cache complete. A single process just calls `function()`.
    """
    rank, size = world()
    if size == 1:
        return function()
    import torch.distributed as dist

    init_torch_distributed()
    if rank == 0:
        result = function()
        dist.barrier()
        return result
    dist.barrier()
    return function()


def enable_jax_data_parallel():
    """Spread every batch over all JAX devices; return how many there are."""
    devices = keras.distribution.list_devices()
    if len(devices) > 1:
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return len(devices)


class SyncReplicas(keras.callbacks.Callback):
    """Keep torch.distributed processes in step during `model.fit`.

    - at the start, every variable is broadcast from rank 0;
    - after `backward`, each gradient is averaged over processes (a hook on
      each trainable parameter, added again when an epoch makes more
      variables trainable, e.g. `UnfreezeBackbone`: put this callback last);
    - after each epoch, non-trainable variables (BatchNorm's moving mean and
      variance) are averaged.
    """

    def __init__(self):
        super().__init__()
        self._hooked = set()

    def on_train_begin(self, logs=None):
        import torch.distributed as dist

        for variable in self.model.variables:
            dist.broadcast(variable.value.data, src=0)
        self._hook_trainable()

    def on_epoch_begin(self, epoch, logs=None):
        self._hook_trainable()

    def on_epoch_end(self, epoch, logs=None):
        import torch.distributed as dist

        size = dist.get_world_size()
        for variable in self.model.non_trainable_variables:
            value = variable.value.data
            if value.is_floating_point():
                dist.all_reduce(value)
                value /= size

    def _hook_trainable(self):
        import torch.distributed as dist

        size = dist.get_world_size()

        def average(parameter):
            dist.all_reduce(parameter.grad)
            parameter.grad /= size

        for variable in self.model.trainable_variables:
            parameter = variable.value
            if id(parameter) not in self._hooked:
                parameter.register_post_accumulate_grad_hook(average)
                self._hooked.add(id(parameter))
