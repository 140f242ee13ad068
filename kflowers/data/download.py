"""The flowers dataset: download it once (cached, size- and CRC-checked) and extract it safely."""

import hashlib
import logging
import os
import zipfile
from kflowers.errors import DataError
from kflowers.errors import first_line

log = logging.getLogger("kflowers")


FLOWERS_URL = "https://mymldatasets.s3.eu-de.cloud-object-storage.appdomain.cloud/flowers.zip"


FLOWERS_ZIP_BYTES = 235_962_103


CLASS_NAMES = ("daisy", "dandelion", "rose", "sunflower", "tulip")


def download_flowers(cache_dir=None, url=FLOWERS_URL, expected_bytes=FLOWERS_ZIP_BYTES):
    """Download and extract `flowers.zip`; return the path of `flowers/`.

    The archive is cached by `keras.utils.get_file` (in `~/.keras/datasets`
    unless `cache_dir` says otherwise) and checked before it is extracted: a
    truncated or corrupted download is deleted and fetched once more, then
    raises `DataError`.

    Args:
        cache_dir: str or `None`. Where to keep the archive and the
            extracted folder. Defaults to `None`: `~/.keras/datasets`.
        url: str. Where to fetch the archive from (any URL `urllib` can
            open, `file://` included). Defaults to the lesson's archive.
        expected_bytes: int or `None`. The archive's size; `None` skips the
            size check. Defaults to the lesson's archive's size.

    Example:
    ```python
    root = download_flowers()   # ~236 MB the first time
    folder = scan_folder(root)
    ```
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
    from kflowers.files import read_text

    try:
        return read_text(path, limit=4096)
    except (OSError, ValueError):
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
