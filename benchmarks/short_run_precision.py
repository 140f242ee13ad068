"""A short modern-recipe run from scratch in float32 and in mixed_bfloat16, on drawn images: the test loss
of each epoch (issue 34, item 8: is a huge test loss after one epoch bfloat16's doing?).

    KERAS_BACKEND=jax python benchmarks/short_run_precision.py --epochs 1
    KERAS_BACKEND=torch python benchmarks/short_run_precision.py --epochs 4

Prints one line per precision: `(training loss, test loss)` per epoch.
"""

import argparse
import os
import tempfile

import kflowers

kflowers.quiet_start()

import keras  # noqa: E402

from kflowers.data.demo import draw_dataset  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--per-class", type=int, default=40, help="drawn images per class (default: 40)")
parser.add_argument("--image-size", type=int, default=48)
args = parser.parse_args()

root = os.path.join(tempfile.mkdtemp(), "flowers")
draw_dataset(root, ["daisy", "dandelion", "rose", "sunflower", "tulip"], per_class=args.per_class, size=48, seed=0)
train_split, test_split = kflowers.split_dataset(kflowers.scan_folder(root), test_size=0.25, seed=0)
for precision in ("float32", "mixed_bfloat16"):
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    model = kflowers.build_model(weights=None, image_size=args.image_size)
    keras.mixed_precision.set_global_policy("float32")
    train_ds = kflowers.FlowerDataset.from_folder(
        train_split, batch_size=16, image_size=args.image_size, shuffle=True, seed=0
    )
    test_ds = kflowers.FlowerDataset.from_folder(test_split, batch_size=16, image_size=args.image_size)
    result = kflowers.training.train(
        model, "scratch", train_ds, test_ds, recipe="modern", epochs=args.epochs, verbose=0
    )
    rows = [(round(row["loss"], 3), round(row["test_loss"], 3)) for row in result.rows]
    print(f"{keras.backend.backend()} {precision}: {rows}")
