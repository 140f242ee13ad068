"""
Title: Discriminative learning rates: a slow backbone and a fast head
Part of: kflowers, a Keras 3 port of the PyTorch transfer-learning lesson (ResNet18, 5 flower classes).

One `fit`, everything trains, but not at one rate: the pretrained backbone
at 1e-4 and the new head at 1e-3, with Adam (the lesson's optimizer for this
strategy). fastai's `fine_tune` and ULMFiT made this the default for
transfer learning.

    python examples/discriminative.py --data ../shared/data/flowers --epochs 2 --image-size 64 --weights resnet18.pth

Offline, pass a torchvision `.pth` (or `.safetensors`) file as `--weights`.
"""

"""
## Setup

Keras picks its backend when it is first imported, so the backend is chosen
first, in plain sight (kflowers runs on torch by default, and on jax or
tensorflow as well: `KERAS_BACKEND=jax python examples/discriminative.py ...`).
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

parser = argparse.ArgumentParser(description="Discriminative learning rates: a slow backbone and a fast head")
parser.add_argument("--data", help="a folder with one subfolder per class (default: download the flowers)")
parser.add_argument("--epochs", type=int, default=5, help="epochs in all (default: %(default)s, the lesson's)")
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

BatchNorm: its scale and shift learn at the backbone's slow rate, but its
statistics come from each batch and its moving averages follow them, at any
rate (the lesson's choice; keras.io's guide would keep them frozen with
`training=False`).
"""

model = kflowers.build_model(num_classes=len(folder.class_names), weights=args.weights, image_size=args.image_size)

"""
## Train with two learning rates

`kflowers.discriminative_optimizer` gives each part its own optimizer of the
same kind (Keras's `Optimizer` applies one rate to all the variables it is
given), and applies each to its part's gradients.
"""

model.compile(
    optimizer=kflowers.discriminative_optimizer(
        model, backbone_learning_rate=1e-4, head_learning_rate=1e-3, optimizer="adam"
    ),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
history = model.fit(train_ds, validation_data=test_ds, epochs=args.epochs, shuffle=False)

"""
## What happened

The lesson printed a table of each epoch; `fit`'s `History` holds the same
numbers. Test accuracy is measured on images the model never trained on.
"""

print(kflowers.tables.history_table(history))
loss, accuracy = model.evaluate(test_ds, verbose=0)
print(f"final test accuracy: {accuracy:.4f} (test loss {loss:.4f})")
