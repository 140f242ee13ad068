"""Time to accuracy: the README's from-scratch command given a budget of minutes, and the test accuracy
it reaches, on a real dataset (issue 35; DAWNBench's measure).

Every run is `kflowers train --strategy scratch --weights none --recipe RECIPE --budget MINUTES --seed K`
(plus a row's own flags), timed from the command's start to its end, so each row is reproducible by hand:

    python benchmarks/time_to_accuracy.py --data ../shared/data/flowers --out runs/time-to-accuracy \\
        --budgets 10 30 --seeds 0 1 2 [--rows modern modern-without-progressive-resizing lesson] [--ledger-only]

Every finished run is added to a ledger kept in git, `benchmarks/results/time_to_accuracy.json` (its
accuracy, the command's minutes, the epochs the budget chose, the per-epoch history, the CPU and the
commit); a run found there is not run again, so the measurements can be spread over sessions. Writes
`--out/time_to_accuracy.md` (mean and spread over the seeds per row and budget) and
`--out/time_to_accuracy.png` (test accuracy against the command's minutes), and prints the table. With
`--views`, each saved model is also scored with one view, with its mirror image and with ten views
(`multi-crop`), recorded beside its run in the ledger.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import recipe_ablation  # noqa: E402
from recipe_ablation import commit  # noqa: E402
from recipe_ablation import cpu  # noqa: E402
from recipe_ablation import read_ledger  # noqa: E402
from recipe_ablation import write_table  # noqa: E402

LEDGER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "time_to_accuracy.json")
# A row: the flags it adds to `kflowers train --strategy scratch --weights none --budget M --seed K`.
ROWS = {
    "modern": ["--recipe", "modern"],
    "modern without progressive-resizing": ["--recipe", "modern", "--without", "progressive-resizing"],
    "lesson (96 px)": ["--recipe", "lesson", "--image-size", "96"],
}


def write_ledger(path, records):
    recipe_ablation.write_ledger(path, records, key=lambda r: (r["run"], r["budget_minutes"], r["seed"]))


def run(data, out, seed, budget, extra):
    """Train one run in `out` (or read back a finished one); its metrics, config, history and command seconds."""
    from kflowers.runs.record import read_history

    metrics_path = os.path.join(out, "metrics.json")
    seconds = None
    if not os.path.exists(metrics_path) or os.path.exists(os.path.join(out, "backup")):
        command = [sys.executable, "-m", "kflowers", "train", "--data", data, "--out", out, "--strategy", "scratch"]
        command += ["--weights", "none", "--seed", str(seed), "--budget", str(budget), "--quiet", *extra]
        resumed = os.path.exists(os.path.join(out, "backup"))
        command += ["--resume"] if resumed else []
        print(" ".join(command), flush=True)
        started = time.perf_counter()
        subprocess.run(command, check=True)
        seconds = None if resumed else time.perf_counter() - started  # a resumed run's minutes are not the budget's
    with open(metrics_path) as f:
        metrics = json.load(f)
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    return metrics, config, read_history(out), seconds


def score_views(run_dir, data):
    """The run's saved model on its own test split, at its side: `{"one": acc, "flip": acc, "multi_crop": acc}`
    (one view; with its mirror image; ten views: `kflowers.runs.evaluate.test_views`)."""
    from kflowers.data.dataset import FlowerDataset
    from kflowers.data.folders import scan_folder
    from kflowers.data.folders import split_dataset
    from kflowers.models.saving import load_model
    from kflowers.runs.evaluate import evaluate_model

    with open(os.path.join(run_dir, "config.json")) as f:
        config = json.load(f)
    model = load_model(os.path.join(run_dir, "model.keras"))
    _, test = split_dataset(scan_folder(data, check_images=False), test_size=config["test_size"], seed=config["seed"])
    dataset = FlowerDataset.from_folder(test, batch_size=128, image_size=model.input_shape[1])
    return {
        key: round(evaluate_model(model, dataset, model.class_names, tta=tta)["accuracy"], 4)
        for key, tta in (("one", False), ("flip", "flip"), ("multi_crop", "multi-crop"))
    }


def new_record(name, seed, budget, metrics, config, history, seconds):
    return {
        "run": name,
        "seed": seed,
        "budget_minutes": budget,
        "test_accuracy": round(float(metrics["test_accuracy"]), 4),
        "command_minutes": round(seconds / 60, 2) if seconds is not None else None,
        "wall_minutes": round(float(metrics["wall_seconds"]) / 60, 2),
        "epochs": config["epochs"],
        "planned_minutes": round(config["budget_plan"]["planned_seconds"] / 60, 2),
        "precision": config["precision"],
        "image_size": config["image_size"],
        "history": {key: [round(float(v), 4) for v in history[key]] for key in ("test_accuracy", "seconds")},
        "cpu": cpu(),
        "commit": commit(),
        "date": datetime.date.today().isoformat(),
    }


def summary_row(name, budget, records):
    accuracy = np.array([r["test_accuracy"] for r in records])
    timed = [r["command_minutes"] for r in records if r["command_minutes"] is not None]
    scored = [r["views"] for r in records if "views" in r]
    views = {
        f"{key}_views" if key != "one" else "one_view": f"{np.mean([v[key] for v in scored]):.4f}" if scored else ""
        for key in ("one", "flip", "multi_crop")
    }
    return {
        "run": name,
        "budget_minutes": budget,
        "seeds": ", ".join(str(r["seed"]) for r in records),
        "test_accuracy": f"{accuracy.mean():.4f}" + (f" ± {accuracy.std():.4f}" if len(records) > 1 else ""),
        "min_max": f"{accuracy.min():.4f}–{accuracy.max():.4f}" if len(records) > 1 else "",
        "command_minutes": f"{max(timed):.1f} (longest)" if timed else "",
        "epochs": ", ".join(str(r["epochs"]) for r in records),
        "precision": records[0]["precision"],
        **views,
    }


def plot(records, path):
    """Test accuracy against the command's minutes (a run's own, from its metrics.json, where the command was
    not timed): each row's seeds, and their mean per budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["run"] for r in records):
        mine = [dict(r, command_minutes=r["command_minutes"] or r["wall_minutes"]) for r in records if r["run"] == name]
        if not mine:
            continue
        points = axes.scatter([r["command_minutes"] for r in mine], [r["test_accuracy"] for r in mine], alpha=0.5)
        budgets = sorted({r["budget_minutes"] for r in mine})
        means = [
            (
                np.mean([r["command_minutes"] for r in mine if r["budget_minutes"] == b]),
                np.mean([r["test_accuracy"] for r in mine if r["budget_minutes"] == b]),
            )
            for b in budgets
        ]
        axes.plot(*zip(*means), marker="o", color=points.get_facecolor()[0][:3], label=name)
    axes.set_xlabel("minutes, the whole command (2 CPU cores)")
    axes.set_ylabel("test accuracy of the saved model")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _key(name):
    """A row's short name, for `--rows` and its folder: `modern`, `modern-without-progressive-resizing`."""
    return name.split(" (")[0].replace(" ", "-")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", default="runs/time-to-accuracy")
    parser.add_argument("--ledger", default=LEDGER, help="the finished runs, kept in git")
    parser.add_argument("--budgets", type=float, nargs="+", default=[10.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rows", nargs="+", default=["modern"], choices=[_key(name) for name in ROWS])
    parser.add_argument("--ledger-only", action="store_true", help="run nothing: the table of what the ledger has")
    parser.add_argument("--views", action="store_true", help="also score each saved model with 1, 2 and 10 views")
    args = parser.parse_args()
    ledger = read_ledger(args.ledger)
    rows, used = [], []
    for name, extra in ROWS.items():
        if _key(name) not in args.rows:
            continue
        for budget in args.budgets:
            records = []
            for seed in args.seeds:
                found = next(
                    (r for r in ledger if (r["run"], r["budget_minutes"], r["seed"]) == (name, budget, seed)), None
                )
                run_dir = os.path.join(args.out, _key(name), f"budget{budget:g}", f"seed{seed}")
                if found is None and not args.ledger_only:
                    found = new_record(name, seed, budget, *run(args.data, run_dir, seed, budget, extra))
                    ledger.append(found)
                    write_ledger(args.ledger, ledger)
                if found is not None and args.views and "views" not in found and os.path.isdir(run_dir):
                    found["views"] = score_views(run_dir, args.data)
                    write_ledger(args.ledger, ledger)
                if found is not None:
                    records.append(found)
            used += records
            if records:
                rows.append(summary_row(name, budget, records))
    from kflowers.tables import markdown_table

    table = markdown_table(rows) if rows else "(nothing measured yet)"
    write_table(os.path.join(args.out, "time_to_accuracy.md"), table, used, args.data, args.ledger)
    if used:
        plot(used, os.path.join(args.out, "time_to_accuracy.png"))


if __name__ == "__main__":
    main()
