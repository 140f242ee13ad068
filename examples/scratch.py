"""ResNet18 from scratch: no pretrained weights.

The lesson's baseline. With ~3,500 images and random weights, ResNet18 barely
learns: in the PyTorch lesson test accuracy swung between 0.19 and 0.52 over
15 epochs and ended at 0.27. Every other example starts from ImageNet weights
and shows what transfer learning buys.

    python examples/scratch.py --data ../shared/data/flowers --epochs 1 --image-size 64
"""

import kflowers  # first: it makes torch the default Keras backend
import keras
from kflowers.lesson import example_args, example_data, report

args = example_args(__doc__.splitlines()[0], epochs=15, weights="none")
class_names, train_ds, test_ds = example_data(args)

model = kflowers.build_model(num_classes=len(class_names), weights=args.weights,
                             image_size=args.image_size)
model.compile(
    optimizer=keras.optimizers.SGD(learning_rate=1e-2),
    # The head emits logits; the loss applies the softmax.
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
# FlowerDataset shuffles itself, reproducibly from --seed: tell fit not to.
model.fit(train_ds, validation_data=test_ds, epochs=args.epochs, shuffle=False)
report(model, test_ds)
