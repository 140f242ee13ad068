"""`FlowerDataset`: a split fed to `model.fit` as a `keras.utils.PyDataset`, read ahead by threads."""

import copy
import math
import os
import threading

import numpy as np

from kflowers.data.augment import image_transform
from kflowers.data.images import UnreadableImage
from kflowers.data.images import read_image
from kflowers.data.read_ahead import ReadAhead
from kflowers.errors import DataError
from kflowers.errors import display_name
from kflowers.errors import first_line


def _pydataset_base():
    import keras

    return keras.utils.PyDataset


def cuda_on_torch_backend():
    """Whether Keras runs on torch with a CUDA device to feed."""
    import keras

    if keras.backend.backend() != "torch":
        return False
    import torch

    return torch.cuda.is_available()


# Keras's PyDataset contract (`__len__`, `__getitem__`, `on_epoch_end`) and the views of it that
# data-parallel training and test-time augmentation need (`shard`, `in_order`, `mirrored`, `unsharded`)
# share one state; what stands alone lives beside it (`image_transform`, `ReadAhead`, `epoch_order`,
# `global_batches`).
class FlowerDataset(_pydataset_base()):
    """Batches of `(uint8 images, int labels)` for `model.fit`.

    Images are read with `kflowers.data.images.read_image`, resized with
    albumentations, and stay `uint8` in 0-255: the model normalises them.
    Shuffling and augmentation depend only on `seed`, the epoch and the
    sample, so two runs with the same seed see the same batches, whatever the
    number of workers. The dataset counts `fit`'s epochs itself; a `fit` that
    starts later (`initial_epoch`, or `keras.callbacks.BackupAndRestore`
    resuming) reshuffles as a new run unless it is given
    `kflowers.callbacks.SetDatasetEpoch(dataset)`, which makes the resumed
    epochs the very ones an uninterrupted run would have seen (`kflowers
    train` does this itself).

    Args:
        paths: list of str. The image files.
        labels: list of int. One label per file.
        batch_size: int. Images per batch. Defaults to `64`.
        image_size: int. The side of the square images fed to the model.
            Defaults to `224`.
        shuffle: bool. Reshuffle the samples every epoch (pass
            `shuffle=False` to `fit`: the dataset shuffles itself,
            reproducibly). A shuffled dataset's last batch never holds a
            single image (BatchNorm can't normalise over one): such a
            remainder joins the batch before it. Defaults to `False`.
        augment: bool or str. Training-time augmentation: `False`; `True`
            or `"basic"`, random resized crops and horizontal flips;
            `"trivial"`, basic plus one TrivialAugment-style colour or
            geometry operation per image at a random strength
            (`trivial_augment`). Defaults to `False`.
        random_erasing: float. The probability of erasing one random
            rectangle of each image (with `augment`). Defaults to `0.0`.
        image_sizes: list of int or `None`. Progressive resizing: the side of
            the images in each epoch (`image_size` past the list's end;
            `kflowers.recipes.epoch_image_sizes`). The model must take any
            size (`build_model(image_size=None)`). Defaults to `None`:
            `image_size` in every epoch.
        seed: int. The seed of the shuffling and augmentation. Defaults to
            `0`.
        workers: int. Threads that read and augment the next batches while
            the model trains on this one (decoding and resizing release the
            GIL). They are the dataset's own: Keras's enqueuer keeps batches
            it read ahead for the next epoch (those of its look at the first
            batch before training included), which would mix epochs. The
            dataset's `threads` is this number; Keras's `workers` stays 1.
            Defaults to `1`.
        use_multiprocessing: bool. Must be `False` (see `workers`).
            Defaults to `False`.
        max_queue_size: int. How many batches to read ahead, at most.
            Defaults to `10`.
        pin_memory: bool or `None`. Hand out the images in page-locked
            memory, so that their copy to a GPU is a direct transfer.
            Defaults to `None`: when Keras runs on torch and a CUDA device
            is visible.

    Example:
    ```python
    train, test = split_dataset(scan_folder("flowers"))
    train_ds = FlowerDataset.from_folder(train, batch_size=16, image_size=64, shuffle=True)
    model.fit(train_ds, epochs=2, shuffle=False)
    ```
    """

    def __init__(
        self,
        paths,
        labels,
        batch_size=64,
        image_size=224,
        shuffle=False,
        augment=False,
        seed=0,
        workers=1,
        use_multiprocessing=False,
        max_queue_size=10,
        pin_memory=None,
        random_erasing=0.0,
        image_sizes=None,
    ):
        # Keras reads one batch at a time; the dataset's own threads read ahead (see `workers`).
        super().__init__(workers=1, use_multiprocessing=False, max_queue_size=max_queue_size)
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        if use_multiprocessing:
            raise ValueError("FlowerDataset reads with threads (workers=N); use_multiprocessing must be False")
        import keras

        if pin_memory and keras.backend.backend() != "torch":
            raise ValueError(f"pin_memory is for the torch backend (Keras runs on {keras.backend.backend()})")
        self.pin_memory = cuda_on_torch_backend() if pin_memory is None else bool(pin_memory)
        self.threads = max(1, int(workers))
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype="int32")
        self.batch_size = int(batch_size)
        self.image_size = int(image_size)
        self.image_sizes = None if image_sizes is None else [int(size) for size in image_sizes]
        self.shuffle = shuffle
        if augment not in (False, True, "basic", "trivial"):
            raise ValueError(f"augment must be False, True, 'basic' or 'trivial', got {augment!r}")
        self.augment = "basic" if augment is True else augment
        self.random_erasing = float(random_erasing)
        self.mirror = False
        self.shift = (0, 0)  # test-time views: pixels right and down (`shifted`)
        self.seed = int(seed)
        self.epoch = 0
        self.shard_index, self.num_shards = 0, 1
        self._epoch_set_by_callback = False
        self._fresh_state()

    def _fresh_state(self):
        # Per object, never shared by copies (`shard`, `in_order`): albumentations pipelines hold random
        # state (one per thread), and batches read ahead belong to this dataset's order.
        self._local = threading.local()
        self._reader = ReadAhead(self.threads, self.max_queue_size or 1)

    @classmethod
    def from_folder(cls, folder, **kwargs):
        """A dataset over an `ImageFolder` (all of it)."""
        return cls(folder.paths, folder.labels, **kwargs)

    def shard(self, index, count):
        """This process's part of every batch, for data-parallel training.

        Every global batch of `batch_size * count` samples (the same
        samples, in the same order, as an unsharded dataset with that batch
        size) is dealt out to `count` processes, `batch_size` each: per
        epoch, no sample is read twice and none is missing. A last global
        batch too small to give each process a sample joins the one before.

        Example:
        ```python
        rank_ds = train_ds.shard(rank, world_size)
        ```
        """
        if not 0 <= index < count:
            raise ValueError(f"shard index {index} out of range for {count} shards")
        if len(self.paths) < count:
            raise ValueError(f"{len(self.paths)} samples can't be shared by {count} processes")
        part = copy.copy(self)
        part.shard_index, part.num_shards = int(index), int(count)
        return part

    def __len__(self):
        return global_batches(len(self.paths), self.batch_size, self.num_shards, self.shuffle)[0]

    def set_epoch(self, epoch):
        """Use the shuffle order and augmentations of `epoch`."""
        self.epoch = int(epoch)

    def follow_fit_epochs(self):
        """Let `kflowers.callbacks.SetDatasetEpoch` alone set the epoch.

        By default the dataset counts epochs itself, in `on_epoch_end`
        (including the one Keras ends after looking at the first batch
        before training). Pinned to `fit`'s own epoch index instead, a fit
        that starts at a later epoch (`initial_epoch`, a resumed
        `BackupAndRestore`) serves exactly the batches an uninterrupted run
        would have served.
        """
        self._epoch_set_by_callback = True

    def on_epoch_end(self):
        self._reader.clear()
        if not self._epoch_set_by_callback:
            self.epoch += 1

    def in_order(self):
        """This dataset without shuffling: batches follow `paths`."""
        plain = copy.copy(self)
        plain.shuffle = False
        return plain

    def mirrored(self):
        """This dataset in order, every image flipped left to right (test-time augmentation)."""
        flipped = self.in_order()
        flipped.mirror = True
        return flipped

    def shifted(self, dx, dy):
        """This dataset in order, every image moved `dx` pixels right and `dy` down, its borders mirrored
        into the gap (test-time augmentation: `kflowers.runs.evaluate.test_views`)."""
        moved = self.in_order()
        moved.shift = (int(dx), int(dy))
        return moved

    def order(self, epoch=None):
        """The sample indices of `epoch`, in the order they are served."""
        epoch = self.epoch if epoch is None else epoch
        return epoch_order(len(self.paths), self.seed, epoch, self.shuffle)

    def batch_indices(self, index, epoch=None):
        """The sample indices (into `paths`) of batch `index` of `epoch`, this shard's part."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range (0..{len(self) - 1})")
        count, size = global_batches(len(self.paths), self.batch_size, self.num_shards, self.shuffle)
        end = (index + 1) * size if index < count - 1 else len(self.paths)
        return self.order(epoch)[index * size : end][self.shard_index :: self.num_shards]

    def unsharded(self):
        """This dataset with every sample in every batch (undoes `shard`)."""
        whole = copy.copy(self)
        whole.shard_index, whole.num_shards = 0, 1
        return whole

    def __getitem__(self, index):
        if self.threads == 1:
            return self.batch(index, self.epoch)
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range (0..{len(self) - 1})")
        return self._reader.get(self.batch, self.epoch, index, len(self))

    def batch(self, index, epoch=None):
        """Batch `index` of `epoch` (default: the current one), read now: `(images, labels)`."""
        epoch = self.epoch if epoch is None else epoch
        chosen = self.batch_indices(index, epoch)
        images = np.stack([self.load(int(i), epoch) for i in chosen])
        if self.pin_memory:
            import torch

            images = torch.from_numpy(images).pin_memory()
        return images, self.labels[chosen]

    def side(self, epoch=None):
        """The side of the images of `epoch` (default: the current one): `image_size`, or with `image_sizes`
        that epoch's."""
        epoch = self.epoch if epoch is None else epoch
        if not self.image_sizes or epoch >= len(self.image_sizes):
            return self.image_size
        return self.image_sizes[epoch]

    def load(self, i, epoch=0):
        """Sample `i` as the model sees it in `epoch`: `(S, S, 3)` uint8."""
        size = self.side(epoch)
        try:
            # Random crops keep as little as half the side: decode with margin.
            pixels = read_image(self.paths[i], min_size=size * 2 if self.augment else size)
        except (UnreadableImage, OSError) as error:
            raise DataError(
                f"{display_name(os.fspath(self.paths[i]))} can no longer be read ({first_line(error)}): it changed "
                "after the dataset was scanned; restore it or scan the folder again"
            ) from error
        transforms = getattr(self._local, "transforms", None)  # albumentations pipelines hold random state
        if transforms is None:
            transforms = self._local.transforms = {}
        if size not in transforms:
            transforms[size] = image_transform(size, self.augment, self.random_erasing, self.seed)
        transform = transforms[size]
        if self.augment:
            sample_seed = np.random.SeedSequence([self.seed, epoch, i]).generate_state(1)[0]
            transform.set_random_seed(int(sample_seed))
        image = transform(image=pixels)["image"]
        if self.shift != (0, 0):
            image = shift_image(image, *self.shift)
        return np.ascontiguousarray(image[:, ::-1]) if self.mirror else image

    def __copy__(self):
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._fresh_state()
        return clone

    def __getstate__(self):
        state = self.__dict__.copy()
        for name in ("_local", "_reader"):
            state.pop(name)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._fresh_state()


def shift_image(image, dx, dy):
    """`image` (H, W, C) moved `dx` pixels right and `dy` down, the uncovered border filled by reflection."""
    pad = max(abs(dx), abs(dy))
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    height, width = image.shape[:2]
    return padded[pad - dy : pad - dy + height, pad - dx : pad - dx + width]


def epoch_order(count, seed, epoch, shuffle):
    """The order in which `count` samples are served in `epoch`: a permutation drawn from `(seed, epoch)`
    alone, so any process, and any resumed run, serves the same one."""
    if not shuffle:
        return np.arange(count)
    return np.random.default_rng([seed, epoch]).permutation(count)


def global_batches(count, batch_size, shards, shuffle):
    """`(number of batches, global batch size)` of `count` samples dealt to `shards` processes."""
    size = batch_size * shards
    batches = math.ceil(count / size)
    # A shuffled (training) batch needs 2 samples per process: BatchNorm can't normalise over one.
    least = shards * (2 if shuffle and batch_size > 1 else 1)
    if batches > 1 and count - (batches - 1) * size < least:
        batches -= 1  # the remainder joins the previous batch
    return batches, size
