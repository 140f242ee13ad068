"""
Title: Two stages in one fit: train the head on a frozen backbone, then unfreeze
Part of: kflowers, a Keras 3 port of the PyTorch transfer-learning lesson (ResNet18, 5 flower classes).

First the new head learns on frozen ImageNet features (lr 1e-2), so that its
random weights don't send large gradients into the backbone; then everything
trains at a small learning rate (1e-4). The lesson ran 5 + 5 epochs and
reached 0.845.

    python examples/two_stage.py --data ../shared/data/flowers --epochs 1 --image-size 64 --weights W.pth
"""

"""
## Setup

Keras picks its backend when it is first imported, so the backend is chosen
first, in plain sight. kflowers runs on torch by default and on jax or
tensorflow as well: `KERAS_BACKEND=jax python examples/two_stage.py ...`.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import argparse

import keras

import kflowers
from kflowers.options import add_flags
from kflowers.options import weights_value

parser = argparse.ArgumentParser(
    description="Two stages in one fit: train the head on a frozen backbone, then unfreeze"
)
# The same flags, help and checks as `kflowers train` (kflowers.options).
add_flags(
    parser,
    ["data", "epochs", "image_size", "batch_size", "weights", "seed", "precision"],
    epochs=10,
    weights="imagenet",
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

"""
## Train: frozen, then unfrozen

`UnfreezeBackbone` makes the switch inside a single `fit`, at the start of
the given epoch: it sets the backbone trainable and compiles a fresh
optimizer of the same kind at the new learning rate, exactly as a second
`compile` and `fit` would.
"""

kflowers.model_parts(model).backbone.trainable = False
model.compile(
    optimizer=keras.optimizers.SGD(learning_rate=1e-2),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
unfreeze_at = max(1, args.epochs // 2)  # half the epochs frozen: 5 of the lesson's 10
if unfreeze_at >= args.epochs:  # as `kflowers train` warns
    print(f"warning: --epochs {args.epochs} never reaches the unfreeze (epoch {unfreeze_at + 1}): this is frozen.py")
model.fit(
    train_ds,
    validation_data=test_ds,
    epochs=args.epochs,
    shuffle=False,
    callbacks=[kflowers.callbacks.UnfreezeBackbone(epoch=unfreeze_at, learning_rate=1e-4)],
)

"""
## Evaluate
"""

loss, accuracy = model.evaluate(test_ds, verbose=0)
print(f"final test accuracy: {accuracy:.4f} (test loss {loss:.4f})")
