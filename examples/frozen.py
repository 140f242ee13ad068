"""A frozen pretrained backbone: train only the new head.

The backbone keeps its ImageNet features and only `Dense(5)` learns. In Keras,
`trainable = False` also puts BatchNorm in inference mode, so the ImageNet
statistics stay exactly as loaded (the PyTorch lesson's frozen run let them
drift). The lesson reached 0.80 test accuracy after 5 epochs.

    python examples/frozen.py --data ../shared/data/flowers --epochs 1 --image-size 64 --weights W.pth
"""

import kflowers  # first: it makes torch the default Keras backend
import keras
from kflowers.lesson import example_args, example_data, report

args = example_args(__doc__.splitlines()[0], epochs=5)
class_names, train_ds, test_ds = example_data(args)

model = kflowers.build_model(num_classes=len(class_names), weights=args.weights,
                             image_size=args.image_size)
model.get_layer("backbone").trainable = False  # freeze before compile
model.compile(
    optimizer=keras.optimizers.SGD(learning_rate=1e-2),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
model.summary()  # 2,565 trainable parameters: the head
model.fit(train_ds, validation_data=test_ds, epochs=args.epochs, shuffle=False)
report(model, test_ds)
