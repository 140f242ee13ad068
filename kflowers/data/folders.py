"""A dataset on disk, one folder per class: `scan_folder` reads it once, `split_dataset` splits it.

`scan_folder` lists the images (class index = position in the sorted list of
class names), decodes each one to make sure it can be read, and reports what
it had to skip. `split_dataset` makes the lesson's stratified 80/20 split.
"""

import dataclasses
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
import numpy as np
from kflowers.data.images import UnreadableImage
from kflowers.data.images import is_image_file
from kflowers.data.images import read_image
from kflowers.errors import DataError
from kflowers.errors import display_name
from kflowers.errors import first_line
from kflowers.files import RUN_MARKER

log = logging.getLogger("kflowers")


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


def _image_files(root, class_folders):
    """`({class: sorted image paths}, [(path, why skipped)])`: the files under each class folder that have an
    image's extension, never through a link that leaves `root`."""
    real_root = os.path.realpath(root)
    skipped, candidates = [], {}
    for name in class_folders:
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
    return candidates, skipped


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
        root: str or path. The dataset folder, one subfolder per class.
        classes: list of str or `None`. The class names to use, in label
            order. Defaults to `None`: every subfolder, sorted by name.
        check_images: bool. Decode every image (at a reduced scale) to
            catch broken files; `False` only checks extensions. Defaults to
            `True`.
        threads: int. Decoding threads for the check. Defaults to `4`.

    Returns:
        An `ImageFolder`.

    Raises:
        DataError: the folder is missing, holds no usable image, or an
            image belongs to two classes.

    Example:
    ```python
    folder = scan_folder("flowers")
    folder.class_names  # ['daisy', 'dandelion', 'rose', 'sunflower', 'tulip']
    ```
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

    candidates, skipped = _image_files(root, found)
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


def image_paths(items):
    """The image files among `items`: files as given, folders searched as `scan_folder` searches (`image_files`);
    not decoded. What `kflowers predict` and `explain` take.

    Raises:
        DataError: an item that does not exist, or no image file among them.
    """
    paths = []
    for item in items:
        if os.path.isdir(item):
            paths += image_files(item)
        elif os.path.lexists(item):
            paths.append(item)
        else:
            raise DataError(f"no such file or folder: {item}")
    if not paths:
        raise DataError("no image file in " + ", ".join(items))
    return paths


def readable_images(items):
    """`image_paths(items)` less the ones that can't be decoded (each skipped with a warning).

    Raises:
        DataError: as `image_paths`, or no readable image among them.
    """
    readable = []
    for path in image_paths(items):
        try:
            read_image(path, min_size=8)
            readable.append(path)
        except UnreadableImage as error:
            log.warning("skipped %s: %s", path, error)
    if not readable:
        raise DataError("no readable image in " + ", ".join(items))
    return readable


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
        folder: `ImageFolder`. A folder from `scan_folder`.
        test_size: float. The fraction of each class that goes to the test
            split. Defaults to `0.2`.
        seed: int. The split's random seed; the same seed gives the same
            split. Defaults to `0`.

    Raises:
        DataError: fewer than two classes, or too few images to give both
            sides one image of each class.

    Example:
    ```python
    train, test = split_dataset(scan_folder("flowers"), seed=0)
    ```
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
