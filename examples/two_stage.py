"""Two stages in one fit: train the head on a frozen backbone, then unfreeze.

First the new head learns on frozen ImageNet features (lr 1e-2), so that its
random weights don't send large gradients into the backbone; then everything
trains at a small learning rate (1e-4). The lesson ran 5 + 5 epochs and
reached 0.845. `UnfreezeBackbone` does the switch inside a single `fit`.

    python examples/two_stage.py --data ../shared/data/flowers --epochs 2 --image-size 64 --weights W.pth
"""

import kflowers  # first: it makes torch the default Keras backend
import keras
from kflowers.callbacks import SetDatasetEpoch, UnfreezeBackbone
from kflowers.lesson import example_args, example_data, report

args = example_args(__doc__.splitlines()[0], epochs=10)
class_names, train_ds, test_ds = example_data(args)

model = kflowers.build_model(num_classes=len(class_names), weights=args.weights,
                             image_size=args.image_size)
model.get_layer("backbone").trainable = False
model.compile(
    optimizer=keras.optimizers.SGD(learning_rate=1e-2),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
# Half the epochs frozen (5 of the lesson's 10), then unfrozen at lr 1e-4.
unfreeze_at = max(1, args.epochs // 2)
model.fit(
    train_ds,
    validation_data=test_ds,
    epochs=args.epochs,
    shuffle=False,
    callbacks=[SetDatasetEpoch(train_ds), UnfreezeBackbone(epoch=unfreeze_at, learning_rate=1e-4)],
)
report(model, test_ds)
