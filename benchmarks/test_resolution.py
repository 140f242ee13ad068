"""Test accuracy of a finished run's model at several test resolutions, with and without flip TTA.

The modern scratch recipe trains on random-resized crops, where a flower fills more of the frame than in
a whole test photo resized to the same side; scoring at a higher resolution matches the two ("FixRes",
Touvron et al. 2019). This measures by how much, on the run's own test split.

    python benchmarks/test_resolution.py runs/latest --data ../shared/data/flowers --sizes 96 112 128 144
"""

import argparse
import json
import os

import kflowers  # noqa: F401 - sets the torch backend before Keras is imported

from kflowers.data.dataset import FlowerDataset
from kflowers.models.saving import load_model
from kflowers.models.resnet import with_image_size
from kflowers.data.folders import scan_folder
from kflowers.data.folders import split_dataset
from kflowers.runs.evaluate import evaluate_model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished run directory")
    parser.add_argument("--data", required=True, help="the folder the run trained on")
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 112, 128, 144, 160])
    args = parser.parse_args()
    model = load_model(os.path.join(args.run, "model.keras"))
    with open(os.path.join(args.run, "config.json")) as file:
        config = json.load(file)
    _, split = split_dataset(
        scan_folder(args.data, check_images=False), test_size=config["test_size"], seed=config["seed"]
    )
    rows = []
    for size in args.sizes:
        resized = with_image_size(model, size)
        dataset = FlowerDataset(split.paths, split.labels, batch_size=128, image_size=size)
        row = {"image_size": size}
        for tta in (False, True):
            result = evaluate_model(resized, dataset, model.class_names, tta=tta)
            row["tta" if tta else "single"] = round(result["accuracy"], 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| test size | one view | flip TTA |\n|---|---|---|")
    for row in rows:
        print(f"| {row['image_size']} | {row['single']:.4f} | {row['tta']:.4f} |")


if __name__ == "__main__":
    main()
