"""How fast `FlowerDataset` feeds images, with 1, 2 and 4 worker threads.

Reads every batch of an epoch through Keras's own PyDataset adapter (the path
`model.fit` uses) and reports images/second, next to the training step's
appetite measured by benchmark.py. Also shows what JPEG draft decoding saves
when the target size is much smaller than the photos.

    python benchmarks/loader.py --data ../shared/data/flowers --image-size 224 --batches 20
"""

import argparse
import time

import kflowers
from kflowers.data.dataset import FlowerDataset


def images_per_second(dataset, batches):
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    adapter = PyDatasetAdapter(dataset, shuffle=False)
    adapter.on_epoch_begin()
    start = time.perf_counter()
    count = 0
    for index, (images, _) in enumerate(adapter.get_numpy_iterator()):
        count += len(images)
        if index + 1 >= batches:
            break
    seconds = time.perf_counter() - start
    adapter.on_epoch_end()
    return count / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--image-size", type=int, nargs="+", default=[224, 64])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    folder = kflowers.scan_folder(args.data, check_images=False)
    print("| image size | augment | " + " | ".join(f"{w} worker(s) img/s" for w in args.workers) + " |")
    print("|---|---|" + "---|" * len(args.workers))
    for size in args.image_size:
        for augment in (False, True):
            rates = []
            for workers in args.workers:
                dataset = FlowerDataset.from_folder(
                    folder, batch_size=args.batch_size, image_size=size, shuffle=True, augment=augment, workers=workers
                )
                rates.append(images_per_second(dataset, args.batches))
            print(f"| {size} | {augment} | " + " | ".join(f"{r:.0f}" for r in rates) + " |")


if __name__ == "__main__":
    main()
