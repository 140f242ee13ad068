"""Several strategies trained on one split, side by side: `kflowers compare`.

    OUT/STRATEGY/       one run directory per strategy (`train_run`)
    OUT/compare.md      the table: best and final test accuracy, epochs, minutes; how each strategy trains

With `--budget MINUTES` the strategies share the minutes: each gets an equal share of what is left when
it starts, and plans its own epochs (its `config.json`).
    OUT/compare.json    the same rows, and which strategy Ctrl-C interrupted
    OUT/curves.png      every strategy's test accuracy and loss, epoch by epoch

Example:
```python
options = RunOptions(data="flowers", strategy="scratch", out="runs/compare", epochs=1, image_size=32, quiet=True)
result = compare_strategies(options, ["scratch", "finetune"])
print(result["table"])
```
"""

import dataclasses
import os
import time

from kflowers.files import write_json
from kflowers.files import write_text
from kflowers.runs import record
from kflowers.runs.directory import check_out
from kflowers.runs.directory import claim
from kflowers.runs.run import data_root
from kflowers.runs.run import train_run


def strategy_options(options, strategy):
    """The `RunOptions` of one strategy of a comparison: its own folder under `options.out`, and from scratch
    for `scratch` whatever weights the pretrained strategies use."""
    return dataclasses.replace(
        options,
        strategy=strategy,
        out=os.path.join(options.out, strategy),
        weights=None if strategy == "scratch" else options.weights,
        force=False,  # --force is for the top folder: a strategy's folder must be new or kflowers's own
        resume=False,
    )


def compare_strategies(options, strategies, folder=None, on_scanned=None):
    """Train each of `strategies` on the same split and write the comparison into `options.out`.

    Args:
        options: a `RunOptions`; its `out` is the comparison's folder, its
            `strategy` is not used.
        strategies: strategy names, trained in this order.
        folder: an already scanned `ImageFolder` of `options.data` (`data=None`:
            the flowers dataset, downloaded).
        on_scanned: called with the scanned `ImageFolder` before training
            (the CLI prints its class counts).

    Returns:
        `{"rows": [...], "interrupted": name or None, "table": markdown}`.
    """
    from kflowers import plots
    from kflowers.data.folders import scan_folder
    from kflowers.data.folders import split_dataset

    check_out(options.out, options.data, options.force)  # before anything is downloaded or scanned
    for strategy in strategies:  # each strategy's folder must be new or kflowers's, --force or not
        check_out(os.path.join(options.out, strategy), options.data, force=False)
    claim(options.out, kind="compare", force=options.force)
    if folder is None:
        options = dataclasses.replace(options, data=data_root(options.data))
        folder = scan_folder(options.data)
    if on_scanned is not None:
        on_scanned(folder)
    split = split_dataset(folder, test_size=options.test_size, seed=options.seed)
    rows, histories, interrupted = [], {}, None
    started = time.perf_counter()
    try:
        for index, strategy in enumerate(strategies):
            print(f"\n=== {strategy} ({options.recipe} recipe) ===")
            run_options = strategy_options(options, strategy)
            if options.budget is not None:  # each strategy gets an equal share of the minutes left
                left = options.budget - (time.perf_counter() - started) / 60
                run_options = dataclasses.replace(run_options, budget=left / (len(strategies) - index))
            metrics = train_run(run_options, folder=folder, split=split)
            if metrics["epochs"]:
                histories[strategy] = record.read_history(run_options.out)
            rows.append(_row(strategy, options.recipe, metrics))
            if metrics.get("interrupted"):
                interrupted = strategy
                break
    except KeyboardInterrupt:  # a second Ctrl-C, or one between two strategies
        interrupted = strategies[len(rows)] if len(rows) < len(strategies) else strategies[-1]
    table = _table(options, strategies, rows, interrupted)
    write_text(os.path.join(options.out, "compare.md"), table + "\n")
    write_json(os.path.join(options.out, "compare.json"), {"rows": rows, "interrupted": interrupted})
    if histories:
        plots.plot_comparison(histories, os.path.join(options.out, "curves.png"))
    return {"rows": rows, "interrupted": interrupted, "table": table}


def _table(options, strategies, rows, interrupted):
    from kflowers.tables import markdown_table

    table = markdown_table(rows) if rows else "(no strategy finished an epoch)"
    table += "\n\nHow each strategy trains:\n\n" + how_they_train(options, strategies)
    if interrupted:
        left = strategies[strategies.index(interrupted) + 1 :]
        table += f"\n\nInterrupted (Ctrl-C) during {interrupted}" + (f"; not run: {', '.join(left)}" if left else "")
    return table


def how_they_train(options, strategies):
    """One row per strategy: what trains when, and at which rates (the recipe's, or the lesson's)."""
    from kflowers.recipes import get_recipe
    from kflowers.tables import markdown_table
    from kflowers.training.strategies import get_strategy

    rows = []
    for name in strategies:
        run_options = strategy_options(options, name)
        strategy = get_strategy(name).with_epochs(run_options.epochs or _planned_epochs(run_options.out))
        recipe = get_recipe(run_options.recipe, strategy.name, run_options.without)
        stages = "frozen, then unfrozen" if strategy.unfreeze_epoch else "frozen" if strategy.freeze else "all trains"
        rates = ", ".join(
            f"{key} {value:g}" if isinstance(value, float) else f"{key}: {value}"
            for key, value in record.learning_rates(run_options, strategy, recipe).items()
        )
        rows.append({"strategy": name, "epochs": strategy.epochs, "backbone": stages, "learning_rates": rates})
    return markdown_table(rows)


def _planned_epochs(out):
    """The epochs a budget chose for the run in `out` (its `config.json`), or `None` (not run yet)."""
    config = record.read_run_json(os.path.join(out, "config.json"))
    return config.get("epochs") if isinstance(config, dict) else None


def _row(strategy, recipe, metrics):
    return {
        "strategy": strategy,
        "recipe": recipe,
        "best_test_accuracy": round(metrics["best_test_accuracy"], 4),
        "final_test_accuracy": round(metrics["test_accuracy"], 4),
        "epochs": metrics["epochs"],
        "wall_seconds": round(metrics["wall_seconds"], 1),
        "interrupted": bool(metrics.get("interrupted")),
    }
