"""Discriminative learning rates: a slow backbone and a fast head.

Pretrained layers need small steps and the new head large ones. One Adam per
group, behind a single `keras.optimizers.MultiOptimizer`: 1e-4 for the
backbone, 1e-3 for the head, as in the lesson.

    python examples/discriminative.py --data ../shared/data/flowers --epochs 1 --image-size 64 --weights W.pth
"""

import kflowers  # first: it makes torch the default Keras backend
import keras
from kflowers.lesson import example_args, example_data, report

args = example_args(__doc__.splitlines()[0], epochs=5)
class_names, train_ds, test_ds = example_data(args)

model = kflowers.build_model(num_classes=len(class_names), weights=args.weights,
                             image_size=args.image_size)
model.compile(
    optimizer=kflowers.discriminative_optimizer(
        model, backbone_learning_rate=1e-4, head_learning_rate=1e-3, optimizer="adam"
    ),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
model.fit(train_ds, validation_data=test_ds, epochs=args.epochs, shuffle=False)
report(model, test_ds)
