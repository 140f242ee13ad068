"""The data layer: photos on disk to batches for `fit`.

download   the flowers dataset, fetched once and extracted safely
folders    `scan_folder` and `split_dataset`: a folder per class, read once, split stratified
images     decoding any photo to 8-bit RGB, safely
augment    TrivialAugment-style operations
dataset    `FlowerDataset`, a `keras.utils.PyDataset` read ahead by threads
samples    the lesson's grid of sample photos
demo       a drawn dataset, for the demo and the tests
"""

from kflowers.lazy import lazy_exports


_EXPORTS = {
    "FLOWERS_URL": "kflowers.data.download",
    "FLOWERS_ZIP_BYTES": "kflowers.data.download",
    "CLASS_NAMES": "kflowers.data.download",
    "download_flowers": "kflowers.data.download",
    "MAX_EXPANSION": "kflowers.data.download",
    "extract_archive": "kflowers.data.download",
    "sha256_of": "kflowers.data.download",
    "ImageFolder": "kflowers.data.folders",
    "scan_folder": "kflowers.data.folders",
    "JUNK_FILES": "kflowers.data.folders",
    "image_files": "kflowers.data.folders",
    "image_paths": "kflowers.data.folders",
    "readable_images": "kflowers.data.folders",
    "split_dataset": "kflowers.data.folders",
    "trivial_augment": "kflowers.data.augment",
    "cuda_on_torch_backend": "kflowers.data.dataset",
    "FlowerDataset": "kflowers.data.dataset",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
