"""The modern recipe, measured: the headline run, the same run with each ingredient removed in turn, and
the lesson's recipe for the same epochs, image size and precision, on a real dataset.

Every run is the README's command (`kflowers train --strategy scratch --recipe modern --weights none`,
plus `--without INGREDIENT` or `--recipe lesson`), so each row is reproducible by hand.

    python benchmarks/recipe_ablation.py --data ../shared/data/flowers --out runs/ablation \\
        [--seeds 0 1 2] [--without ema tta ...] [--lesson] [--epochs N --image-size S] [--ledger-only]

The ledger's rows (sessions 9-11) predate progressive resizing, which joined the recipe in session 14: they
are of today's `--without progressive-resizing`; a new row would run the recipe as it is now
(`benchmarks/time_to_accuracy.py` measures the two side by side).

Every finished run is added to a ledger kept in git, `benchmarks/results/recipe_ablation.json` (its
accuracy, minutes, per-epoch history, CPU and commit), and a run found there is not run again: an ablation
of many hours can be stopped and continued in another session, on another machine, and its table is
rebuilt from the ledger alone. A run stopped part-way in `--out` is resumed (`--resume`); one finished
there is read back.

Two ingredients only change how the test images are scored (`tta`, `test-resolution`): their rows rescore
the headline run's saved model without them, which is exactly what a run with `--without` them would
report (its training is the same), in seconds instead of a run.

Writes `--out/ablation.md` (accuracy and minutes per row: mean and spread over the seeds) and
`--out/curves.png` (test accuracy per epoch of the first seed's runs, where the ledger has them), and
prints the table. Minutes are given twice: the run's wall clock, and its median epoch times its epochs
(which a run that shared the CPU for a while, or was paused, does not inflate).
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

import numpy as np

LEDGER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "recipe_ablation.json")
HISTORY_COLUMNS = ("loss", "accuracy", "test_loss", "test_accuracy", "seconds")

# Ingredients of evaluation only: the weights a run trains are the same with or without them.
EVALUATION_ONLY = ("tta", "test-resolution")


def read_ledger(path):
    """The ledger's records (a JSON list), or none where there is no ledger yet."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


def write_ledger(path, records, key=lambda r: (r["run"], r["seed"], json.dumps(r["overrides"]))):
    """Write the ledger's records, sorted by `key` (so that a new run changes one place of the file)."""
    from kflowers.files import write_text

    records = sorted(records, key=key)
    write_text(path, json.dumps(records, indent=1) + "\n")


def find(records, name, seed, overrides):
    return next((r for r in records if (r["run"], r["seed"], r["overrides"]) == (name, seed, overrides)), None)


def write_table(path, table, records, data, ledger):
    """Write and print a benchmark's markdown `table`, with the CPUs its `records` ran on and where they are."""
    from kflowers.files import write_text

    machines = "; ".join(sorted({r["cpu"] for r in records}))
    text = f"{table}\n\nCPU: {machines}; data {data}; the ledger: {os.path.relpath(ledger)}\n"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_text(path, text)
    print(text, end="")


def commit():
    """The last commit that changed the package: the code a run in this checkout ran."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = ["git", "-C", root, "log", "-1", "--format=%h", "--", "kflowers"]
    return subprocess.run(command, capture_output=True, text=True).stdout.strip() or None


def new_record(name, seed, overrides, metrics, history):
    """One ledger row: what a finished (or rescored) run measured, and where and when."""
    seconds = history["seconds"]
    return {
        "run": name,
        "seed": seed,
        "overrides": overrides,
        "test_accuracy": round(float(metrics["test_accuracy"]), 4),
        "wall_seconds": round(float(metrics["wall_seconds"]), 1),
        "median_epoch_minutes": round(float(np.median(seconds)) * len(seconds) / 60, 2),
        "history": {key: [round(float(v), 4) for v in history[key]] for key in HISTORY_COLUMNS},
        "cpu": cpu(),
        "commit": commit(),
        "date": datetime.date.today().isoformat(),
    }


def history_of(out):
    from kflowers.runs.record import read_history

    history = read_history(out)
    return {key: history[key] for key in HISTORY_COLUMNS}


def run(data, out, seed, extra, common):
    """Train (or resume, or read back) one run in `out`; its metrics and history."""
    metrics_path = os.path.join(out, "metrics.json")
    finished = os.path.exists(metrics_path) and not os.path.exists(os.path.join(out, "backup"))
    if not finished:
        command = [sys.executable, "-m", "kflowers", "train", "--data", data, "--out", out, "--strategy", "scratch"]
        command += ["--weights", "none", "--seed", str(seed), "--quiet", *common, *extra]
        if os.path.exists(os.path.join(out, "backup")):
            command.append("--resume")
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True)
    with open(metrics_path) as f:
        return json.load(f), history_of(out)


def rescore(run_dir, data, without):
    """The finished run's saved model, scored on its own test split without an evaluation-only ingredient."""
    from kflowers.data.dataset import FlowerDataset
    from kflowers.data.folders import scan_folder
    from kflowers.data.folders import split_dataset
    from kflowers.models.resnet import with_image_size
    from kflowers.models.saving import load_model
    from kflowers.runs.evaluate import evaluate_model

    if not os.path.exists(os.path.join(run_dir, "model.keras")):
        sys.exit(f"recipe_ablation: the `{without}` row rescores {run_dir}, which is not there: run the headline first")
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
    return {"test_accuracy": result["accuracy"], "wall_seconds": metrics["wall_seconds"]}, history_of(run_dir)


def cpu():
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in text]
    return f"{model}, {os.cpu_count()} cores, native bf16: {', '.join(flags) or 'no'}"


def variants_for(args):
    """`{row name: the flags it adds to the README's command}`, the headline first."""
    variants = {"modern": ["--recipe", "modern"]}
    variants.update({f"modern without {w}": ["--recipe", "modern", "--without", w] for w in args.without})
    if args.lesson:
        from kflowers.options import RunOptions

        modern = RunOptions(data=args.data, strategy="scratch", recipe="modern")
        epochs, size = args.epochs or modern.epochs, args.image_size or modern.image_size
        variants["lesson (same epochs, size, precision)"] = [
            *("--recipe", "lesson", "--epochs", str(epochs), "--image-size", str(size)),
            *("--precision", modern.precision),
        ]
    return variants


def summary_row(name, records, rescored, headline):
    """A table row: accuracy's mean and spread over the seeds, its change from the headline run of the same
    seeds (`headline`: `{seed: record}`), in points, and the minutes of the seeds that timed them."""
    accuracy = np.array([r["test_accuracy"] for r in records])
    paired = [
        100 * (r["test_accuracy"] - headline[r["seed"]]["test_accuracy"]) for r in records if r["seed"] in headline
    ]

    def mean_of(key, scale=1):
        timed = [r for r in records if r[key] is not None]
        if not timed:
            return ""
        seeds = "" if len(timed) == len(records) else f" (seed {', '.join(str(r['seed']) for r in timed)})"
        return f"{np.mean([r[key] / scale for r in timed]):.1f}{seeds}"

    return {
        "run": name + (" (the headline's weights, rescored)" if rescored else ""),
        "seeds": ", ".join(str(r["seed"]) for r in records),
        "test_accuracy": f"{accuracy.mean():.4f}" + (f" ± {accuracy.std():.4f}" if len(records) > 1 else ""),
        "min_max": f"{accuracy.min():.4f}–{accuracy.max():.4f}" if len(records) > 1 else "",
        "points_vs_headline": f"{np.mean(paired):+.1f}" if paired and name != "modern" else "",
        "minutes": mean_of("wall_seconds", 60),
        "median_epoch_x_epochs_minutes": mean_of("median_epoch_minutes"),
    }


def main():
    from kflowers.recipes import INGREDIENTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--ledger", default=LEDGER, help="the finished runs, kept in git")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    # Progressive resizing joined the recipe after this ledger's runs (which are without it): it is measured
    # by benchmarks/time_to_accuracy.py, beside the recipe without it.
    ablated = [name for name in INGREDIENTS if name != "progressive-resizing"]
    parser.add_argument("--without", nargs="*", default=ablated, choices=INGREDIENTS)
    parser.add_argument("--lesson", action="store_true", help="add the lesson's recipe for the same epochs")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (a shorter ablation)")
    parser.add_argument("--image-size", type=int, help="override the recipe's image size")
    parser.add_argument("--ledger-only", action="store_true", help="run nothing: the table of what the ledger has")
    args = parser.parse_args()
    overrides = {"epochs": args.epochs, "image_size": args.image_size}
    common = [flag for key, value in overrides.items() if value for flag in (f"--{key.replace('_', '-')}", str(value))]
    ledger = read_ledger(args.ledger)
    rows, histories, used, headline = [], {}, [], {}
    for name, extra in variants_for(args).items():
        rescored = extra[-1] if "--without" in extra and extra[-1] in EVALUATION_ONLY else None
        records = []
        for seed in args.seeds:
            record = find(ledger, name, seed, overrides)
            if record is None and args.ledger_only:
                continue
            if record is None:
                if rescored:
                    headline = os.path.join(args.out, "modern", f"seed{seed}")
                    metrics, history = rescore(headline, args.data, rescored)
                else:
                    out = os.path.join(args.out, name.replace(" ", "-").replace(",", ""), f"seed{seed}")
                    metrics, history = run(args.data, out, seed, extra, common)
                record = new_record(name, seed, overrides, metrics, history)
                ledger.append(record)
                write_ledger(args.ledger, ledger)
            records.append(record)
        used += records
        if not records:
            rows.append({"run": name, "seeds": "", "test_accuracy": "not yet measured"})
            continue
        if records[0]["history"] and not rescored:
            histories[name] = records[0]["history"]
        if name == "modern":
            headline = {r["seed"]: r for r in records}
        rows.append(summary_row(name, records, rescored, headline))
    from kflowers.tables import markdown_table
    from kflowers.plots import plot_comparison

    write_table(os.path.join(args.out, "ablation.md"), markdown_table(rows), used, args.data, args.ledger)
    if histories:
        plot_comparison(histories, os.path.join(args.out, "curves.png"))


if __name__ == "__main__":
    main()
