"""Scanning, splitting, downloading and `FlowerDataset`."""

import os
import zipfile

import numpy as np
import pytest

import kflowers
from conftest import CLASSES
from kflowers.data.download import DataError
from kflowers.data.dataset import FlowerDataset
from kflowers.data.download import download_flowers
from kflowers.training.loop import train


def test_scan_sorted_classes_and_case_insensitive_extensions(flowers_dir):
    folder = kflowers.scan_folder(flowers_dir)
    assert folder.class_names == sorted(CLASSES)
    assert folder.counts() == {name: 12 for name in CLASSES}
    assert any(p.endswith(".JPG") for p in folder.paths) and any(p.endswith(".png") for p in folder.paths)
    for path, label in zip(folder.paths, folder.labels):
        assert os.path.basename(os.path.dirname(path)) == folder.class_names[label]


def test_explicit_classes_set_the_label_order(flowers_dir):
    folder = kflowers.scan_folder(flowers_dir, classes=["tulip", "rose"])
    assert folder.class_names == ["tulip", "rose"]
    assert all("tulip" in p for p, label in zip(folder.paths, folder.labels) if label == 0)
    with pytest.raises(DataError, match="not found.*orchid"):
        kflowers.scan_folder(flowers_dir, classes=["rose", "orchid"])


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        kflowers.scan_folder(tmp_path / "nope")


def test_stratified_seeded_split(flowers_dir):
    folder = kflowers.scan_folder(flowers_dir)
    train, test = kflowers.split_dataset(folder, test_size=0.25, seed=3)
    again_train, again_test = kflowers.split_dataset(folder, test_size=0.25, seed=3)
    other_train, _ = kflowers.split_dataset(folder, test_size=0.25, seed=4)
    assert train.paths == again_train.paths and test.paths == again_test.paths
    assert train.paths != other_train.paths
    assert not set(train.paths) & set(test.paths)
    assert len(train) + len(test) == len(folder)
    assert test.counts() == {name: 3 for name in CLASSES}


def test_dataset_batches(flowers_dir):
    folder = kflowers.scan_folder(flowers_dir)
    ds = FlowerDataset.from_folder(folder, batch_size=16, image_size=40)
    assert len(ds) == 4
    x, y = ds[3]
    assert x.shape == (12, 40, 40, 3) and x.dtype == np.uint8
    assert y.dtype == np.int32 and y.tolist() == folder.labels[48:]
    with pytest.raises(IndexError):
        ds[4]


def epoch_batches(ds, epoch):
    ds.set_epoch(epoch)
    return [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize("augment", [False, True])
def test_shuffle_and_augmentation_depend_only_on_seed_and_epoch(flowers_dir, augment):
    folder = kflowers.scan_folder(flowers_dir)
    make = lambda **kw: FlowerDataset.from_folder(  # noqa: E731
        folder, batch_size=8, image_size=32, shuffle=True, augment=augment, **kw
    )
    first, second = make(seed=1), make(seed=1, workers=2)
    e0, e1 = epoch_batches(first, 0), epoch_batches(first, 1)
    for (xa, ya), (xb, yb) in zip(e1, epoch_batches(second, 1)):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(e0, e1))  # reshuffled
    assert sorted(np.concatenate([y for _, y in e1]).tolist()) == sorted(folder.labels)
    other = epoch_batches(make(seed=2), 1)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(e1, other))


def test_augmentation_changes_pixels_but_not_labels(flowers_dir):
    folder = kflowers.scan_folder(flowers_dir)
    plain = FlowerDataset.from_folder(folder, batch_size=60, image_size=32)
    augmented = FlowerDataset.from_folder(folder, batch_size=60, image_size=32, augment=True)
    (xp, yp), (xa, ya) = plain[0], augmented[0]
    np.testing.assert_array_equal(yp, ya)
    assert not np.array_equal(xp, xa)


@pytest.mark.one_backend  # the loader's threads are the dataset's own, whatever the backend
def test_fit_with_worker_threads_matches_single_thread(flowers_dir):
    """The same seed gives the same weights whether the data comes from 1 or 2 threads, in a plain
    `fit` with no kflowers callback (Keras stops its workers at each epoch's end)."""
    import keras

    folder = kflowers.scan_folder(flowers_dir)

    def run(workers):
        keras.utils.set_random_seed(0)
        model = kflowers.build_model(weights=None, image_size=32)
        ds = FlowerDataset.from_folder(
            folder, batch_size=20, image_size=32, shuffle=True, augment=True, seed=5, workers=workers
        )
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(ds, epochs=3, shuffle=False, verbose=0)
        return [keras.ops.convert_to_numpy(w) for w in model.weights]

    for one, two in zip(run(1), run(2)):
        np.testing.assert_array_equal(one, two)


def test_pinned_batches_train_exactly_as_plain_ones(flowers_dir, monkeypatch):
    """`pin_memory` changes where a batch lives, nothing else: the batches and the
    trained weights are the same. (No CUDA here: pinning is stood in for and counted.)"""
    import keras

    if keras.backend.backend() != "torch":
        pytest.skip("page-locked batches are for the torch backend")
    import torch

    pinned = []

    def pin(tensor):
        pinned.append(tensor.shape)
        return tensor.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    folder = kflowers.scan_folder(flowers_dir)
    assert FlowerDataset.from_folder(folder).pin_memory == torch.cuda.is_available()  # auto

    def run(pin_memory):
        keras.utils.set_random_seed(0)
        model = kflowers.build_model(weights=None, image_size=32)
        ds = FlowerDataset.from_folder(
            folder, batch_size=20, image_size=32, shuffle=True, augment=True, pin_memory=pin_memory
        )
        images, labels = ds[0]
        assert isinstance(images, torch.Tensor) == pin_memory
        train(model, "finetune", ds, epochs=1, verbose=0)
        return images, [keras.ops.convert_to_numpy(w) for w in model.weights]

    plain_images, plain_weights = run(False)
    pinned_images, pinned_weights = run(True)
    assert pinned  # every batch went through pin_memory
    np.testing.assert_array_equal(pinned_images.numpy(), plain_images)
    for a, b in zip(plain_weights, pinned_weights):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="use_multiprocessing must be False"):
        FlowerDataset.from_folder(folder, pin_memory=True, use_multiprocessing=True)


def make_zip(folder, path):
    with zipfile.ZipFile(path, "w") as zf:
        for directory, _, files in os.walk(folder):
            for name in files:
                full = os.path.join(directory, name)
                zf.write(full, os.path.join("flowers", os.path.relpath(full, folder)))
    return path


def test_download_extracts_and_caches(flowers_dir, tmp_path):
    served = make_zip(flowers_dir, tmp_path / "flowers.zip")
    size = os.path.getsize(served)
    root = download_flowers(cache_dir=str(tmp_path / "cache"), url=served.as_uri(), expected_bytes=size)
    assert sorted(os.listdir(root)) == sorted(CLASSES)
    assert kflowers.scan_folder(root).counts() == {name: 12 for name in CLASSES}
    os.remove(served)  # cached: no second download
    assert download_flowers(cache_dir=str(tmp_path / "cache"), url=served.as_uri(), expected_bytes=size) == root


def test_damaged_download_is_fetched_again_then_reported(flowers_dir, tmp_path):
    served = make_zip(flowers_dir, tmp_path / "flowers.zip")
    with pytest.raises(DataError, match="damaged.*bytes instead of 123"):
        download_flowers(cache_dir=str(tmp_path / "cache"), url=served.as_uri(), expected_bytes=123)
    assert not os.path.exists(tmp_path / "cache" / "datasets" / "flowers.zip")


def test_a_planted_extraction_marker_is_not_trusted(flowers_dir, tmp_path):
    served = make_zip(flowers_dir, tmp_path / "flowers.zip")
    cache = tmp_path / "cache"
    planted = cache / "datasets" / "flowers_extracted"
    planted.mkdir(parents=True)
    (planted / ".complete").write_text("")  # someone else's "already extracted"
    root = download_flowers(cache_dir=str(cache), url=served.as_uri(), expected_bytes=os.path.getsize(served))
    assert kflowers.scan_folder(root).counts() == {name: 12 for name in CLASSES}


def test_extraction_refuses_bombs_and_archives_that_do_not_fit(tmp_path, monkeypatch):
    import shutil

    from kflowers.data.download import extract_archive

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("flowers/rose/zeros.jpg", b"\0" * (20 << 20))
    with pytest.raises(DataError, match="would expand .* times.*decompression bomb"):
        extract_archive(bomb, tmp_path / "out")
    assert not os.path.exists(tmp_path / "out" / "flowers")

    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("flowers/rose/a.jpg", os.urandom(2 << 20))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1 << 20))
    with pytest.raises(DataError, match="needs 2 MB to extract .* has 1 MB free"):
        extract_archive(plain, tmp_path / "out")


def test_download_dir_that_cannot_be_written_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # root may write anywhere: pretend not
    with pytest.raises(DataError, match="cannot write to .*: choose a writable --dir"):
        download_flowers(cache_dir=str(tmp_path / "readonly"), url="file:///nothing.zip")


def test_offline_download_says_how_to_use_local_data(tmp_path):
    with pytest.raises(DataError, match="--data DIR"):
        download_flowers(cache_dir=str(tmp_path), url=(tmp_path / "nothing.zip").as_uri())


def test_sample_grid_is_written(flowers_dir, tmp_path):
    from kflowers.data.samples import plot_samples

    folder = kflowers.scan_folder(flowers_dir)
    out = plot_samples(folder, tmp_path / "grid.png", seed=0)
    from PIL import Image

    image = np.asarray(Image.open(out).convert("L"))
    assert image.shape[0] > 200 and image.std() > 10


def test_progressive_resizing_serves_each_epoch_at_its_side(flowers_dir):
    folder = kflowers.scan_folder(flowers_dir)
    ds = FlowerDataset.from_folder(
        folder, batch_size=4, image_size=48, shuffle=True, augment="trivial", image_sizes=[32, 40]
    )
    assert [ds.batch(0, epoch)[0].shape[1:] for epoch in range(3)] == [(32, 32, 3), (40, 40, 3), (48, 48, 3)]
    ds.set_epoch(1)
    assert ds[0][0].shape == (4, 40, 40, 3) and ds.side() == 40


def test_multi_crop_views_are_the_image_moved_and_mirrored(flowers_dir):
    from kflowers.data.dataset import shift_image
    from kflowers.runs.evaluate import test_views

    image = np.arange(6 * 5 * 1).reshape(6, 5, 1)
    moved = shift_image(image, 2, -1)  # 2 right, 1 up: the interior is the image rolled, the rest reflected
    np.testing.assert_array_equal(moved[:5, 2:], image[1:, :3])
    np.testing.assert_array_equal(moved[:5, :2], image[1:, 2:0:-1])
    ds = FlowerDataset.from_folder(kflowers.scan_folder(flowers_dir), batch_size=4, image_size=32)
    views = test_views(ds, "multi-crop")
    assert len(views) == 10 and [v.shift for v in views[:4]] == [(0, 0), (0, 0), (2, 0), (2, 0)]
    plain, right_mirrored = ds.batch(0)[0], views[3].batch(0)[0]
    np.testing.assert_array_equal(right_mirrored, np.stack([shift_image(i, 2, 0) for i in plain])[:, :, ::-1])
    with pytest.raises(ValueError, match="unknown test-time augmentation 'five'"):
        test_views(ds, "five")
