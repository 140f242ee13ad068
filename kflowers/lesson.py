"""What every example script shares: its command-line flags and the data.

Each `examples/*.py` calls `example_args` and `example_data`, then shows its
own `build_model` / `compile` / `fit`.
"""

import argparse


def example_args(description, epochs, weights="imagenet", argv=None):
    """Parse the flags every example takes, with the lesson's defaults.

    Flags: `--data DIR` (default: download the flowers dataset), `--epochs N`,
    `--image-size S`, `--weights W` (`imagenet`, a keras-hub preset, a file,
    or `none`), `--batch-size B`, `--seed K`.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", help="dataset folder, one subfolder per class (default: download)")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--weights", default=weights,
                        help="imagenet, a keras-hub preset, a .pth/.safetensors/.weights.h5 file, or none")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.weights.lower() == "none":
        args.weights = None
    return args


def example_data(args):
    """`(class_names, train_ds, test_ds)`: the lesson's split and loaders."""
    import keras

    from kflowers.data import FlowerDataset
    from kflowers.data import download_flowers
    from kflowers.data import scan_folder
    from kflowers.data import split_dataset

    keras.utils.set_random_seed(args.seed)
    folder = scan_folder(args.data or download_flowers())
    train, test = split_dataset(folder, test_size=0.2, seed=args.seed)
    print(f"{len(train)} training and {len(test)} test images of {', '.join(folder.class_names)}")
    train_ds = FlowerDataset.from_folder(train, batch_size=args.batch_size, image_size=args.image_size,
                                         shuffle=True, seed=args.seed)
    test_ds = FlowerDataset.from_folder(test, batch_size=256, image_size=args.image_size)
    return folder.class_names, train_ds, test_ds


def report(model, test_ds):
    """Print the final test accuracy and return it."""
    loss, accuracy = model.evaluate(test_ds, verbose=0)
    print(f"final test accuracy: {accuracy:.4f} (test loss {loss:.4f})")
    return accuracy
