"""
Title: Fine-tuning: start from ImageNet weights and train everything
Part of: kflowers, a Keras 3 port of the PyTorch transfer-learning lesson (ResNet18, 5 flower classes).

All 11M parameters learn at the lesson's learning rate of 1e-2, which is high
for pretrained weights: the lesson peaked at 0.85 test accuracy and ended at
0.77 after 5 epochs. Compare with two_stage.py and discriminative.py.

    python examples/fine_tune.py --data ../shared/data/flowers --epochs 1 --image-size 64 --weights W.pth
"""

"""
## Setup

Keras picks its backend when it is first imported, so the backend is chosen
first, in plain sight. kflowers runs on torch by default and on jax or
tensorflow as well: `KERAS_BACKEND=jax python examples/fine_tune.py ...`.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import argparse

import keras

import kflowers
from kflowers.options import add_flags
from kflowers.options import weights_value

parser = argparse.ArgumentParser(description="Fine-tuning: start from ImageNet weights and train everything")
# The same flags, help and checks as `kflowers train` (kflowers.options).
add_flags(
    parser, ["data", "epochs", "image_size", "batch_size", "weights", "seed", "precision"], epochs=5, weights="imagenet"
)
args = parser.parse_args()
keras.utils.set_random_seed(args.seed)
keras.mixed_precision.set_global_policy(kflowers.options.PRECISIONS[args.precision])

"""
## The data

One folder per class. `scan_folder` looks at every image once (unreadable
files are skipped and named), `split_dataset` makes the lesson's stratified
80/20 split, and `FlowerDataset` feeds `fit` batches of 0-255 pixels: the
model normalises them itself. The dataset shuffles itself, reproducibly from
the seed, so `fit` is told not to.
"""

folder = kflowers.scan_folder(args.data or kflowers.download_flowers())
train, test = kflowers.split_dataset(folder, test_size=0.2, seed=args.seed)
print(f"{len(train)} training and {len(test)} test images of {', '.join(folder.class_names)}")
train_ds = kflowers.FlowerDataset.from_folder(
    train, batch_size=args.batch_size, image_size=args.image_size, shuffle=True, seed=args.seed
)
test_ds = kflowers.FlowerDataset.from_folder(test, batch_size=256, image_size=args.image_size)

"""
## The model

ImageNet normalisation, keras-hub's ResNet18 backbone, global average pooling
and a new `Dense` head that emits logits.
"""

model = kflowers.build_model(
    num_classes=len(folder.class_names), weights=weights_value(args.weights), image_size=args.image_size
)
if weights_value(args.weights) is None:  # as `kflowers train` warns
    print("warning: --weights none: fine-tuning a random backbone is training from scratch (examples/scratch.py)")

"""
## Train everything
"""

model.compile(
    optimizer=keras.optimizers.SGD(learning_rate=1e-2),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
model.fit(train_ds, validation_data=test_ds, epochs=args.epochs, shuffle=False)

"""
## Evaluate
"""

loss, accuracy = model.evaluate(test_ds, verbose=0)
print(f"final test accuracy: {accuracy:.4f} (test loss {loss:.4f})")
