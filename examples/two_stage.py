"""
Title: Two stages: train the head on a frozen backbone, then fine-tune everything
Part of: kflowers, a Keras 3 port of the PyTorch transfer-learning lesson (ResNet18, 5 flower classes).

First the new head learns on frozen ImageNet features (SGD 1e-2), so that its
random weights don't send large gradients into the backbone; then everything
trains at a small learning rate (1e-4). The lesson ran 5 + 5 epochs and
reached 0.845. This is the idiom of keras.io's transfer-learning guide:
freeze, compile, fit; unfreeze, compile again, fit again.

    python examples/two_stage.py --data ../shared/data/flowers --epochs 4 --image-size 64 --weights resnet18.pth

Offline, pass a torchvision `.pth` (or `.safetensors`) file as `--weights`.
With `--epochs 1` the second stage never comes (the script says so).
"""

"""
## Setup

Keras picks its backend when it is first imported, so the backend is chosen
first, in plain sight (kflowers runs on torch by default, and on jax or
tensorflow as well: `KERAS_BACKEND=jax python examples/two_stage.py ...`).
`kflowers.quiet_start()` keeps TensorFlow's start-up lines (keras-hub imports
TensorFlow) off the terminal; a library doesn't do that behind your back, so
the call is here, before keras-hub is imported.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import kflowers

kflowers.quiet_start()  # TensorFlow's start-up lines off stderr (KFLOWERS_VERBOSE=1 shows them)

import argparse

import keras

parser = argparse.ArgumentParser(description="Two stages: train the head on a frozen backbone, then unfreeze")
parser.add_argument("--data", help="a folder with one subfolder per class (default: download the flowers)")
parser.add_argument("--epochs", type=int, default=10, help="epochs in all (default: %(default)s, the lesson's)")
parser.add_argument("--image-size", type=int, default=224, help="side of the images in pixels (default: 224)")
parser.add_argument("--batch-size", type=int, default=64, help="images per step (default: 64)")
parser.add_argument(
    "--weights", default="imagenet", help="imagenet, a .pth or .safetensors file, or none (default: %(default)s)"
)
parser.add_argument("--seed", type=int, default=0, help="seed of the split, shuffling and head (default: 0)")
args = parser.parse_args()
keras.utils.set_random_seed(args.seed)

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

`kflowers.build_model` stacks ImageNet's normalisation (raw 0-255 pixels go
in), keras-hub's ResNet18 (`ResNetBackbone`), global average pooling and a new
`Dense` head (float32 under mixed precision); `weights` maps torchvision's
ImageNet checkpoint or a file onto the backbone. `kflowers.model_parts(model)`
names the parts: `.backbone`, `.head`.

BatchNorm follows `trainable`: in stage 1 the frozen backbone normalises with
ImageNet's moving statistics; after the unfreeze it uses each batch's and
updates them, as the lesson's PyTorch code does. keras.io's guide keeps
inference mode even then (`training=False`); kflowers keeps the lesson's.
"""

model = kflowers.build_model(num_classes=len(folder.class_names), weights=args.weights, image_size=args.image_size)
backbone = kflowers.model_parts(model).backbone

"""
## Stage 1: train the head on frozen features

Freezing before `compile` leaves the optimizer only the head's parameters,
and runs the backbone's BatchNorm layers in inference mode.
"""

if args.weights == "none":  # as `kflowers train` warns
    print("warning: --weights none leaves the frozen backbone random: stage 1 trains the head on random features")
frozen_epochs = max(1, args.epochs // 2)  # the lesson: 5 of 10
if frozen_epochs >= args.epochs:  # as `kflowers train` warns
    print(f"warning: --epochs {args.epochs} never reaches the unfreeze (epoch {frozen_epochs + 1}): this is frozen.py")
backbone.trainable = False
model.compile(
    optimizer=keras.optimizers.SGD(learning_rate=1e-2),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
first = model.fit(train_ds, validation_data=test_ds, epochs=frozen_epochs, shuffle=False)

"""
## Stage 2: unfreeze, recompile at a low rate, train on

Setting `trainable` changes which weights train only at the next `compile`,
which also makes a fresh optimizer. The rate is 100 times lower: the head
is no longer random, and large steps would wreck the pretrained features.
`initial_epoch` continues the epoch count where stage 1 stopped.
"""

backbone.trainable = True
model.compile(
    optimizer=keras.optimizers.SGD(learning_rate=1e-4),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
print(f"Epoch {frozen_epochs + 1}: backbone unfrozen, learning rate 0.0001")
second = model.fit(train_ds, validation_data=test_ds, epochs=args.epochs, initial_epoch=frozen_epochs, shuffle=False)

"""
## What happened

The lesson printed a table of each epoch; `fit`'s `History` holds the same
numbers. Test accuracy is measured on images the model never trained on.
"""

print(kflowers.tables.history_table(first, second))
loss, accuracy = model.evaluate(test_ds, verbose=0)
print(f"final test accuracy: {accuracy:.4f} (test loss {loss:.4f})")
