"""The modern recipe, measured: the headline run, the same run with each ingredient removed in turn, and
the lesson's recipe for the same epochs, image size and precision, on a real dataset.

Every run is the README's command (`kflowers train --strategy scratch --recipe modern --weights none`,
plus `--without INGREDIENT` or `--recipe lesson`), so each row is reproducible by hand. Runs already
finished in `--out` are read back, not repeated (a long ablation can be stopped and continued).

    python benchmarks/recipe_ablation.py --data ../shared/data/flowers --out runs/ablation \\
        [--seeds 0 1 2] [--without ema tta ...] [--lesson] [--epochs N --image-size S]

Two ingredients only change how the test images are scored (`tta`, `test-resolution`): their rows rescore
the headline run's saved model without them, which is exactly what a run with `--without` them would
report (its training is the same), in seconds instead of a run.

Writes `--out/ablation.md` (accuracy and minutes per row: mean and spread over the seeds) and
`--out/curves.png` (test accuracy per epoch of the first seed's runs), and prints the table. Minutes
are given twice: the run's wall clock, and its median epoch times its epochs (which a run that shared
the CPU for a while, or was paused, does not inflate).
"""

import argparse
import csv
import json
import os
import platform
import subprocess
import sys

import numpy as np


def with_epoch_minutes(metrics, out):
    """`metrics` with `median_epoch_minutes`: the run's median epoch (history.csv) times its epochs."""
    with open(os.path.join(out, "history.csv")) as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    return {**metrics, "median_epoch_minutes": float(np.median(seconds)) * len(seconds) / 60}


def run(data, out, seed, extra, common):
    metrics_path = os.path.join(out, "metrics.json")
    if os.path.exists(metrics_path) and not os.path.exists(os.path.join(out, "backup")):
        with open(metrics_path) as f:
            return with_epoch_minutes(json.load(f), out)
    command = [sys.executable, "-m", "kflowers", "train", "--data", data, "--out", out, "--strategy", "scratch"]
    command += ["--weights", "none", "--seed", str(seed), "--quiet", *common, *extra]
    if os.path.exists(os.path.join(out, "backup")):
        command.append("--resume")
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)
    with open(metrics_path) as f:
        return with_epoch_minutes(json.load(f), out)


# Ingredients of evaluation only: the weights a run trains are the same with or without them.
EVALUATION_ONLY = ("tta", "test-resolution")


def rescore(run_dir, data, without):
    """The finished run's saved model, scored on its own test split without an evaluation-only ingredient."""
    from kflowers.data.dataset import FlowerDataset
    from kflowers.data.folders import scan_folder
    from kflowers.data.folders import split_dataset
    from kflowers.models.saving import load_model
    from kflowers.models.resnet import with_image_size
    from kflowers.runs.run import evaluate_model

    with open(os.path.join(run_dir, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    model = load_model(os.path.join(run_dir, "model.keras"))
    size = model.input_shape[1]
    if without == "test-resolution":
        size = config["image_size"]
        model = with_image_size(model, size)
    folder = scan_folder(data, check_images=False)
    _, test = split_dataset(folder, test_size=config["test_size"], seed=config["seed"])
    dataset = FlowerDataset.from_folder(test, batch_size=128, image_size=size)
    result = evaluate_model(model, dataset, model.class_names, tta=without != "tta")
    return with_epoch_minutes({"test_accuracy": result["accuracy"], "wall_seconds": metrics["wall_seconds"]}, run_dir)


def cpu():
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in text]
    return f"{model}, {os.cpu_count()} cores, native bf16: {', '.join(flags) or 'no'}"


def main():
    from kflowers.recipes import INGREDIENTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--without", nargs="*", default=list(INGREDIENTS), choices=INGREDIENTS)
    parser.add_argument("--lesson", action="store_true", help="add the lesson's recipe for the same epochs")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (a shorter ablation)")
    parser.add_argument("--image-size", type=int, help="override the recipe's image size")
    args = parser.parse_args()
    common = []
    if args.epochs:
        common += ["--epochs", str(args.epochs)]
    if args.image_size:
        common += ["--image-size", str(args.image_size)]
    variants = {"modern": ["--recipe", "modern"]}
    variants.update({f"modern without {w}": ["--recipe", "modern", "--without", w] for w in args.without})
    if args.lesson:
        from kflowers.options import RunOptions

        modern = RunOptions(data=args.data, strategy="scratch", recipe="modern")
        size = args.image_size or modern.image_size
        variants["lesson (same epochs, size, precision)"] = [
            "--recipe",
            "lesson",
            "--epochs",
            str(args.epochs or modern.epochs),
            "--image-size",
            str(size),
            "--precision",
            modern.precision,
        ]
    rows, histories = [], {}
    for name, extra in variants.items():
        results = []
        rescored = extra[-1] if "--without" in extra and extra[-1] in EVALUATION_ONLY else None
        for seed in args.seeds:
            if rescored:
                headline = os.path.join(args.out, "modern", f"seed{seed}")
                results.append(rescore(headline, args.data, rescored))
                continue
            out = os.path.join(args.out, name.replace(" ", "-").replace(",", ""), f"seed{seed}")
            results.append(run(args.data, out, seed, extra, common))
            if seed == args.seeds[0]:
                from kflowers.runs.run import read_history

                histories[name] = read_history(out)
        accuracy = np.array([r["test_accuracy"] for r in results])
        minutes = np.array([r["wall_seconds"] / 60 for r in results])
        epoch_minutes = np.array([r["median_epoch_minutes"] for r in results])
        rows.append(
            {
                "run": name + (" (the headline's weights, rescored)" if rescored else ""),
                "seeds": len(results),
                "test_accuracy": f"{accuracy.mean():.4f} ± {accuracy.std():.4f}",
                "min_max": f"{accuracy.min():.4f}–{accuracy.max():.4f}",
                "minutes": f"{minutes.mean():.1f}",
                "median_epoch_x_epochs_minutes": f"{epoch_minutes.mean():.1f}",
            }
        )
    from kflowers.files import write_text
    from kflowers.reports import markdown_table
    from kflowers.reports import plot_comparison

    table = markdown_table(rows)
    note = f"\n\nCPU: {cpu()}; seeds {', '.join(map(str, args.seeds))}; data {args.data}\n"
    write_text(os.path.join(args.out, "ablation.md"), table + note)
    plot_comparison(histories, os.path.join(args.out, "curves.png"))
    print(table + note)


if __name__ == "__main__":
    main()
