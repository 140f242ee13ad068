"""The flowers data: download, scan, split, and `FlowerDataset`.

A dataset on disk is one folder per class. `scan_folder` reads it once, up
front: it lists the images (class index = position in the sorted list of class
names), decodes each one to make sure it can be read, and reports what it had
to skip. `split_dataset` makes the lesson's stratified 80/20 split and
`FlowerDataset` feeds a split to `model.fit` as a `keras.utils.PyDataset`.
"""

import dataclasses
import hashlib
import logging
import math
import os
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from kflowers.images import UnreadableImage
from kflowers.images import is_image_file
from kflowers.images import read_image
from kflowers.errors import DataError
from kflowers.errors import display_name
from kflowers.errors import first_line
from kflowers.files import RUN_MARKER

log = logging.getLogger("kflowers")

FLOWERS_URL = "https://mymldatasets.s3.eu-de.cloud-object-storage.appdomain.cloud/flowers.zip"
FLOWERS_ZIP_BYTES = 235_962_103
CLASS_NAMES = ("daisy", "dandelion", "rose", "sunflower", "tulip")


# ---------------------------------------------------------------- download


def download_flowers(cache_dir=None, url=FLOWERS_URL, expected_bytes=FLOWERS_ZIP_BYTES):
    """Download and extract `flowers.zip`; return the path of `flowers/`.

    The archive is cached by `keras.utils.get_file` (in `~/.keras/datasets`
    unless `cache_dir` says otherwise) and checked before it is extracted: a
    truncated or corrupted download is deleted and fetched once more, then
    raises `DataError`.

    Args:
        cache_dir: where to keep the archive and the extracted folder.
        url: where to fetch the archive from (any URL `urllib` can open,
            `file://` included).
        expected_bytes: the archive's size; `None` skips the size check.

    Example:
    >>> root = download_flowers()   # ~236 MB the first time
    >>> folder = scan_folder(root)
    """
    import keras

    if cache_dir is not None:  # get_file would quietly fall back to /tmp/.keras
        cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
        os.makedirs(os.path.join(cache_dir, "datasets"), exist_ok=True)
        if not os.access(os.path.join(cache_dir, "datasets"), os.W_OK):
            raise DataError(f"cannot write to {cache_dir}: choose a writable --dir")

    def fetch(force):
        return keras.utils.get_file("flowers.zip", url, cache_dir=cache_dir, force_download=force)

    try:
        archive = fetch(force=False)
        problem = _archive_problem(archive, expected_bytes)
        if problem:
            log.warning("flowers.zip is damaged (%s); downloading it again", problem)
            os.remove(archive)
            archive = fetch(force=True)
            problem = _archive_problem(archive, expected_bytes)
            if problem:
                os.remove(archive)
                raise DataError(f"the downloaded flowers.zip is damaged: {problem}")
    except (OSError, Exception) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(
            f"could not download the flowers dataset from {url} ({first_line(error)}); "
            "without network, pass --data DIR with a folder of class subfolders"
        ) from error
    target = os.path.join(os.path.dirname(archive), "flowers_extracted")
    marker = os.path.join(target, ".complete")
    stamp = _archive_stamp(archive)
    if _read_text(marker) != stamp:  # not extracted, or from another archive
        extract_archive(archive, target)
        with open(marker, "w") as f:
            f.write(stamp)
    return _find_class_root(target)


MAX_EXPANSION = 50  # bytes extracted per byte of archive; JPEGs barely compress


def extract_archive(archive, target):
    """Extract a zip archive into `target`, after checking what it would write.

    The archive's declared sizes must fit the free space (with 10% to spare)
    and expand at most `MAX_EXPANSION` times its compressed size (a
    decompression bomb expands thousands of times); member names stay inside
    `target` (zipfile drops `..` and absolute parts).

    Raises:
        DataError: the archive would not fit, or expands implausibly.
    """
    import shutil

    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        size = sum(m.file_size for m in members)
        packed = sum(m.compress_size for m in members)
        if size > MAX_EXPANSION * max(packed, 1) and size > 1 << 20:
            raise DataError(
                f"{archive} would expand {size / max(packed, 1):.0f} times (to {size:,} bytes); "
                "refusing it as a likely decompression bomb"
            )
        os.makedirs(target, exist_ok=True)
        free = shutil.disk_usage(target).free
        if size * 1.1 > free:
            raise DataError(
                f"{archive} needs {size / 1e6:,.0f} MB to extract and {target} has "
                f"{free / 1e6:,.0f} MB free: free some space or choose another --dir"
            )
        zf.extractall(target)


def _archive_stamp(path):
    stat = os.stat(path)
    return f"{os.path.basename(path)} {stat.st_size} {stat.st_mtime_ns}"


def _read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _archive_problem(path, expected_bytes):
    size = os.path.getsize(path)
    if expected_bytes is not None and size != expected_bytes:
        return f"{size:,} bytes instead of {expected_bytes:,}"
    if not zipfile.is_zipfile(path):
        return "not a zip archive"
    with zipfile.ZipFile(path) as zf:
        bad = zf.testzip()
    if bad:
        return f"CRC error in {bad}"
    return None


def _find_class_root(path):
    """The folder inside an extracted archive whose subfolders are classes."""
    entries = [e for e in os.listdir(path) if not e.startswith((".", "__"))]
    if len(entries) == 1 and os.path.isdir(os.path.join(path, entries[0])):
        return _find_class_root(os.path.join(path, entries[0]))
    return path


def sha256_of(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


# -------------------------------------------------------------------- scan


@dataclasses.dataclass
class ImageFolder:
    """Images and their labels. `labels[i]` indexes `class_names`.

    Attributes:
        root: the folder that was scanned.
        class_names: sorted class names; the label of a class is its position.
        paths: image files.
        labels: one int per path.
        skipped: `(path, reason)` for every file that was left out.
        seconds: how long `scan_folder` took.
    """

    root: str
    class_names: list
    paths: list
    labels: list
    skipped: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0  # how long the scan took

    def __len__(self):
        return len(self.paths)

    def counts(self):
        """Images per class, as `{class_name: count}`."""
        found = np.bincount(np.asarray(self.labels, int), minlength=len(self.class_names))
        return dict(zip(self.class_names, found.tolist()))

    def subset(self, indices):
        return dataclasses.replace(
            self,
            paths=[self.paths[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            skipped=[],
        )


def scan_folder(root, classes=None, check_images=True, threads=4):
    """Find the images under `root`, one subfolder per class.

    Every file is looked at once, here: files that are not images or can't be
    decoded are skipped and named in a warning with the reason, so that a bad
    file never stops training halfway. Images in nested folders inside a class
    folder belong to that class. A class folder without a usable image is
    left out with a warning, unless `classes` names it, in which case that is
    an error.

    The dataset is what the folder says: hidden files and folders are left
    out silently; symbolic links are followed only to places inside `root`
    (others are skipped with a warning); an image reachable from two classes
    through links is an error, and one reachable twice from the same class
    counts once; an unreadable folder is named in a warning. Class names that are not valid UTF-8 get U+FFFD for
    their bad bytes (the paths keep the bytes).

    Args:
        root: the dataset folder.
        classes: optional list of class names to use, in label order. Default:
            every subfolder, sorted by name.
        check_images: decode every image (at a reduced scale) to catch broken
            files. `False` only checks extensions.
        threads: decoding threads for the check.

    Returns:
        An `ImageFolder`.

    Raises:
        DataError: the folder is missing, holds no usable image, or an
            image belongs to two classes.

    Example:
    >>> folder = scan_folder("flowers")
    >>> folder.class_names
    ['daisy', 'dandelion', 'rose', 'sunflower', 'tulip']
    """
    started = time.perf_counter()
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataError(f"dataset folder not found: {root}")
    found = sorted(e for e in os.listdir(root) if not e.startswith(".") and os.path.isdir(os.path.join(root, e)))
    if classes is not None:
        missing = [c for c in classes if c not in found]
        if missing:
            raise DataError(f"class folder(s) not found in {root}: {', '.join(missing)}")
        found = list(classes)
    if not found:
        raise DataError(f"no class folders in {root}: expected one subfolder per class")

    real_root = os.path.realpath(root)
    skipped = []
    candidates = {}
    for name in found:
        files = []
        if _outside(os.path.join(root, name), real_root):
            skipped.append((os.path.join(root, name), "a link to a folder outside the dataset"))
            candidates[name] = []
            continue
        for path, problem in _walk_files(os.path.join(root, name), real_root):
            if problem:
                skipped.append((path, problem))
            elif is_image_file(path):
                files.append(path)
            elif not os.path.basename(path).startswith(".") and os.path.basename(path) not in JUNK_FILES:
                skipped.append((path, "not an image file (extension)"))
        candidates[name] = sorted(files)
    _refuse_shared_images(candidates)

    if check_images:
        all_files = [p for files in candidates.values() for p in files]
        with ThreadPoolExecutor(threads) as pool:
            problems = dict(zip(all_files, pool.map(_check_image, all_files)))
        for name, files in candidates.items():
            candidates[name] = [p for p in files if problems[p] is None]
        skipped += [(p, reason) for p, reason in problems.items() if reason]

    empty = [name for name, files in candidates.items() if not files]
    if empty and classes is not None:
        raise DataError(f"no usable image in class folder(s): {', '.join(map(display_name, empty))}")
    for name in empty:
        log.warning("class folder %r has no usable image; it is left out", display_name(name))
    class_names = [name for name in found if candidates[name]]
    if not class_names:
        raise DataError(f"no usable image found in {root}")

    paths, labels = [], []
    for label, name in enumerate(class_names):
        paths += candidates[name]
        labels += [label] * len(candidates[name])
    # Class names are text (printed, drawn, saved as JSON): bytes that are not UTF-8 become U+FFFD.
    shown = [display_name(name) for name in class_names]
    if len(set(shown)) < len(shown):
        raise DataError(f"class folder names that differ only in bytes that are not UTF-8: {shown}; rename them")
    class_names = shown
    skipped.sort()
    for path, reason in skipped:
        log.warning("skipped %s: %s", display_name(path), reason)
    return ImageFolder(root, class_names, paths, labels, skipped, seconds=time.perf_counter() - started)


JUNK_FILES = ("Thumbs.db", "desktop.ini")


def image_files(folder):
    """The image files under `folder`, sorted, found by the same rules as `scan_folder`
    (hidden files left out, links followed only inside `folder`); not decoded."""
    real_root = os.path.realpath(folder)
    return sorted(path for path, problem in _walk_files(folder, real_root) if problem is None and is_image_file(path))


def _walk_files(folder, real_root):
    """Yield `(path, problem)` for every file under `folder`; `problem` is `None`
    or why the file is left out. Hidden files and folders are left out silently;
    symbolic links are followed only to places inside `real_root`."""
    seen = set()
    errors = []
    for directory, subdirs, files in os.walk(folder, followlinks=True, onerror=errors.append):
        for error in errors:
            yield error.filename or directory, f"folder not readable ({error.strerror}); its images are left out"
        errors.clear()
        real = os.path.realpath(directory)
        if real in seen:  # a symlink loop
            subdirs[:] = []
            continue
        if RUN_MARKER in files:  # what kflowers wrote (plots, samples) is never read as images
            subdirs[:] = []
            yield directory, "a kflowers run directory (its pictures are not training images)"
            continue
        seen.add(real)
        kept = []
        for sub in sorted(subdirs):
            if sub.startswith("."):
                continue
            if _outside(os.path.join(directory, sub), real_root):
                yield os.path.join(directory, sub), "a link to a folder outside the dataset"
            else:
                kept.append(sub)
        subdirs[:] = kept
        for name in files:
            path = os.path.join(directory, name)
            if name.startswith("."):
                continue
            yield path, ("a link to a file outside the dataset" if _outside(path, real_root) else None)
    for error in errors:  # the class folder itself
        yield error.filename or folder, f"folder not readable ({error.strerror}); its images are left out"


def _outside(path, real_root):
    if not os.path.islink(path):
        return False
    return os.path.commonpath([os.path.realpath(path), real_root]) != real_root


def _refuse_shared_images(candidates):
    """An image reachable from two class folders (through a link) has no one label;
    one reachable twice from the same class is kept once."""
    owner = {}
    for name, files in candidates.items():
        kept = {}
        for path in files:
            real = os.path.realpath(path)
            other, other_path = owner.setdefault(real, (name, path))
            if other != name:
                raise DataError(
                    f"{display_name(other_path)} and {display_name(path)} are the same image (a link), in "
                    f"classes {display_name(other)} and {display_name(name)}: an image must belong to one "
                    "class; remove the link"
                )
            kept.setdefault(real, path)
        candidates[name] = sorted(kept.values())


def _check_image(path):
    try:
        read_image(path, min_size=8)
        return None
    except UnreadableImage as error:
        return str(error)
    except OSError as error:  # e.g. a dangling symlink
        return first_line(error)


def split_dataset(folder, test_size=0.2, seed=0):
    """The lesson's stratified split: `(train, test)` `ImageFolder`s.

    Args:
        folder: an `ImageFolder` from `scan_folder`.
        test_size: fraction of each class that goes to the test split.
        seed: the split's random seed; the same seed gives the same split.

    Raises:
        DataError: fewer than two classes, or too few images to give both
            sides one image of each class.

    Example:
    >>> train, test = split_dataset(scan_folder("flowers"), seed=0)
    """
    from sklearn.model_selection import train_test_split

    if len(folder.class_names) < 2:
        raise DataError(
            f"{folder.root} has one class with images ({folder.class_names[0]}); a classifier "
            "needs at least 2 class folders to train on"
        )
    indices = np.arange(len(folder))
    counts = np.bincount(folder.labels, minlength=len(folder.class_names))
    if counts.min() < 2:
        small = [display_name(folder.class_names[i]) for i in np.flatnonzero(counts < 2)]
        raise DataError(f"need at least 2 images per class to split; too few in: {', '.join(small)}")
    # sklearn's stratified split needs room for one image of every class on each side.
    n_test = math.ceil(test_size * len(folder))
    classes = len(folder.class_names)
    if n_test < classes or len(folder) - n_test < classes:
        need = math.ceil(classes / min(test_size, 1 - test_size))
        raise DataError(
            f"{len(folder)} images are too few to give both the train and the test split one image of "
            f"each of the {classes} classes (the test split takes {test_size:.0%}); add images "
            f"(at least {need} in all)"
        )
    train, test = train_test_split(indices, test_size=test_size, stratify=folder.labels, random_state=seed)
    return folder.subset(sorted(train)), folder.subset(sorted(test))


# ----------------------------------------------------------------- dataset


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


def trivial_augment():
    """One colour or geometry operation per image, at a random strength: TrivialAugment (Müller and
    Hutter, 2021) as an albumentations `OneOf`, its operations and ranges after torchvision's
    `TrivialAugmentWide` (identity included)."""
    import albumentations as A

    return A.OneOf(
        [
            A.NoOp(),
            A.Affine(shear={"x": (-30, 30), "y": (0, 0)}, p=1),
            A.Affine(shear={"x": (0, 0), "y": (-30, 30)}, p=1),
            A.Affine(translate_percent={"x": (-0.3, 0.3), "y": (0, 0)}, p=1),
            A.Affine(translate_percent={"x": (0, 0), "y": (-0.3, 0.3)}, p=1),
            A.Affine(rotate=(-30, 30), p=1),
            A.ColorJitter(brightness=0.9, contrast=0, saturation=0, hue=0, p=1),
            A.ColorJitter(brightness=0, contrast=0.9, saturation=0, hue=0, p=1),
            A.ColorJitter(brightness=0, contrast=0, saturation=0.9, hue=0, p=1),
            A.Sharpen(alpha=(0.1, 0.9), p=1),
            A.Posterize(num_bits=(2, 8), p=1),
            A.Solarize(threshold_range=(0.0, 1.0), p=1),
            A.AutoContrast(p=1),
            A.Equalize(p=1),
        ],
        p=1,
    )


class FlowerDataset(_pydataset_base()):
    """Batches of `(uint8 images, int labels)` for `model.fit`.

    Images are read with `kflowers.images.read_image`, resized with
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
        paths: image files.
        labels: one int per file.
        batch_size: images per batch.
        image_size: side of the square images fed to the model.
        shuffle: reshuffle the samples every epoch (pass `shuffle=False` to
            `fit`: the dataset shuffles itself, reproducibly). A shuffled
            dataset's last batch never holds a single image (BatchNorm can't
            normalise over one): such a remainder joins the batch before it.
        augment: training-time augmentation: `False`; `True` or `"basic"`,
            random resized crops and horizontal flips; `"trivial"`, basic plus
            one TrivialAugment-style colour or geometry operation per image
            at a random strength (`trivial_augment`).
        random_erasing: probability of erasing one random rectangle of each
            image (with `augment`). Defaults to `0.0`.
        seed: seed of the shuffling and augmentation.
        workers: threads that read and augment the next batches while the
            model trains on this one (decoding and resizing release the
            GIL). They are the dataset's own: Keras's enqueuer keeps batches
            it read ahead for the next epoch (those of its look at the first
            batch before training included), which would mix epochs. The
            dataset's `threads` is this number; Keras's `workers` stays 1.
        use_multiprocessing: must be `False` (see `workers`).
        max_queue_size: how many batches to read ahead, at most.
        pin_memory: hand out the images in page-locked memory, so that their
            copy to a GPU is a direct transfer. `None` (default): when Keras
            runs on torch and a CUDA device is visible.

    Example:
    >>> train, test = split_dataset(scan_folder("flowers"))
    >>> train_ds = FlowerDataset.from_folder(train, batch_size=64, shuffle=True)
    >>> model.fit(train_ds, epochs=5, shuffle=False)
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
        self.shuffle = shuffle
        if augment not in (False, True, "basic", "trivial"):
            raise ValueError(f"augment must be False, True, 'basic' or 'trivial', got {augment!r}")
        self.augment = "basic" if augment is True else augment
        self.random_erasing = float(random_erasing)
        self.mirror = False
        self.seed = int(seed)
        self.epoch = 0
        self.shard_index, self.num_shards = 0, 1
        self._epoch_set_by_callback = False
        self._fresh_state()

    def _fresh_state(self):
        # Per object, never shared by copies (`shard`, `in_order`): albumentations pipelines hold random
        # state (one per thread), and batches read ahead belong to this dataset's order.
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pool = None
        self._pending = {}

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
        >>> rank_ds = train_ds.shard(rank, world_size)
        """
        import copy

        if not 0 <= index < count:
            raise ValueError(f"shard index {index} out of range for {count} shards")
        if len(self.paths) < count:
            raise ValueError(f"{len(self.paths)} samples can't be shared by {count} processes")
        part = copy.copy(self)
        part.shard_index, part.num_shards = int(index), int(count)
        return part

    def _global_batches(self):
        size = self.batch_size * self.num_shards
        count = math.ceil(len(self.paths) / size)
        # A shuffled (training) batch needs 2 samples per process: BatchNorm can't normalise over one.
        least = self.num_shards * (2 if self.shuffle and self.batch_size > 1 else 1)
        if count > 1 and len(self.paths) - (count - 1) * size < least:
            count -= 1  # the remainder joins the previous batch
        return count, size

    def __len__(self):
        return self._global_batches()[0]

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
        with self._lock:  # what was read ahead and not asked for (fit stopped early, or only looked)
            self._drop_read_ahead(lambda key: True)
        if not self._epoch_set_by_callback:
            self.epoch += 1

    def in_order(self):
        """This dataset without shuffling: batches follow `paths`."""
        import copy

        plain = copy.copy(self)
        plain.shuffle = False
        return plain

    def mirrored(self):
        """This dataset in order, every image flipped left to right (test-time augmentation)."""
        flipped = self.in_order()
        flipped.mirror = True
        return flipped

    def order(self, epoch=None):
        """The sample indices of `epoch`, in the order they are served."""
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return np.arange(len(self.paths))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.paths))

    def batch_indices(self, index, epoch=None):
        """The sample indices (into `paths`) of batch `index` of `epoch`, this shard's part."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range (0..{len(self) - 1})")
        count, size = self._global_batches()
        end = (index + 1) * size if index < count - 1 else len(self.paths)
        return self.order(epoch)[index * size : end][self.shard_index :: self.num_shards]

    def unsharded(self):
        """This dataset with every sample in every batch (undoes `shard`)."""
        import copy

        whole = copy.copy(self)
        whole.shard_index, whole.num_shards = 0, 1
        return whole

    def __getitem__(self, index):
        if self.threads == 1:
            return self.batch(index, self.epoch)
        epoch, last = self.epoch, len(self)
        if not 0 <= index < last:
            raise IndexError(f"batch {index} out of range (0..{last - 1})")
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="kflowers-loader")
            self._drop_read_ahead(lambda key: key[0] != epoch or key[1] < index)  # another epoch's, or passed over
            for ahead in range(index, min(index + max(1, self.max_queue_size or 1), last)):
                if (epoch, ahead) not in self._pending:
                    self._pending[(epoch, ahead)] = self._pool.submit(self.batch, ahead, epoch)
            future = self._pending.pop((epoch, index))
        return future.result()

    def _drop_read_ahead(self, which):
        for key in [key for key in self._pending if which(key)]:
            self._pending.pop(key).cancel()

    def batch(self, index, epoch=None):
        """Batch `index` of `epoch` (default: the current one), read now: `(images, labels)`."""
        epoch = self.epoch if epoch is None else epoch
        chosen = self.batch_indices(index, epoch)
        images = np.stack([self.load(int(i), epoch) for i in chosen])
        if self.pin_memory:
            import torch

            images = torch.from_numpy(images).pin_memory()
        return images, self.labels[chosen]

    def load(self, i, epoch=0):
        """Sample `i` as the model sees it in `epoch`: `(S, S, 3)` uint8."""
        try:
            pixels = read_image(self.paths[i], min_size=self._decode_size())
        except (UnreadableImage, OSError) as error:
            raise DataError(
                f"{display_name(os.fspath(self.paths[i]))} can no longer be read ({first_line(error)}): it changed "
                "after the dataset was scanned; restore it or scan the folder again"
            ) from error
        transform = self._transform()
        if self.augment:
            sample_seed = np.random.SeedSequence([self.seed, epoch, i]).generate_state(1)[0]
            transform.set_random_seed(int(sample_seed))
        image = transform(image=pixels)["image"]
        return np.ascontiguousarray(image[:, ::-1]) if self.mirror else image

    def _decode_size(self):
        # Random crops keep as little as half the side: decode with margin.
        return self.image_size * 2 if self.augment else self.image_size

    def _transform(self):
        # albumentations pipelines hold random state: one per thread.
        transform = getattr(self._local, "transform", None)
        if transform is None:
            import albumentations as A

            size = self.image_size
            if self.augment:
                steps = [A.RandomResizedCrop((size, size), scale=(0.25, 1.0)), A.HorizontalFlip()]
                if self.augment == "trivial":
                    steps.append(trivial_augment())
                if self.random_erasing:
                    steps.append(A.Erasing(p=self.random_erasing, scale=(0.02, 0.25), fill="random_uniform"))
            else:
                steps = [A.Resize(size, size)]
            transform = A.Compose(steps, seed=self.seed)
            self._local.transform = transform
        return transform

    def __copy__(self):
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._fresh_state()
        return clone

    def __getstate__(self):
        state = self.__dict__.copy()
        for name in ("_local", "_lock", "_pool", "_pending"):
            state.pop(name)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._fresh_state()
