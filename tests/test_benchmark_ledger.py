"""The recipe ablation's ledger, `benchmarks/results/recipe_ablation.json`: strict JSON that names its
machine, the table in docs/recipes.md is the one the ledger gives, and a row found in it is not run again
while a run finished in `--out` joins it."""

import csv
import importlib.util
import json
import os
import re
import subprocess

import pytest

pytestmark = pytest.mark.one_backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEDGER = os.path.join(ROOT, "benchmarks", "results", "recipe_ablation.json")
FIELDS = {"run", "seed", "overrides", "test_accuracy", "wall_seconds", "median_epoch_minutes", "history", "cpu"}


def ablation_script():
    spec = importlib.util.spec_from_file_location(
        "recipe_ablation", os.path.join(ROOT, "benchmarks", "recipe_ablation.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(monkeypatch, *argv):
    monkeypatch.setattr("sys.argv", ["recipe_ablation.py", *argv])
    ablation_script().main()


REAL_RUN = subprocess.run


def no_training(command, **kwargs):
    assert "train" not in command, f"the ablation started a run: {' '.join(command)}"
    return REAL_RUN(command, **kwargs)


def test_the_ledger_is_strict_json_that_names_each_row_s_machine():
    with open(LEDGER) as f:
        records = json.load(f, parse_constant=lambda name: pytest.fail(f"{name} is not strict JSON"))
    assert records
    for record in records:
        assert FIELDS <= set(record), record["run"]
        assert all(re.fullmatch(r"[a-z_]+", key) for key in record), sorted(record)
        assert 0 < record["test_accuracy"] <= 1
        assert "native bf16" in record["cpu"]
    keys = [(r["run"], r["seed"], json.dumps(r["overrides"])) for r in records]
    assert len(keys) == len(set(keys)), "a run is in the ledger twice"


def test_the_docs_ablation_table_is_the_one_the_ledger_gives(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(subprocess, "run", no_training)
    run_script(monkeypatch, *"--seeds 0 1 2 --lesson --ledger-only".split(), "--data", "x", "--out", str(tmp_path))
    table = capsys.readouterr().out.split("\n\nCPU")[0].strip()
    with open(os.path.join(ROOT, "docs", "recipes.md")) as f:
        docs = f.read()
    assert table in docs, "docs/recipes.md's ablation table is not the ledger's: paste `--ledger-only`'s table"


def test_a_row_in_the_ledger_is_not_run_again_and_a_finished_run_joins_it(tmp_path, monkeypatch):
    with open(LEDGER) as f:
        headline = next(r for r in json.load(f) if (r["run"], r["seed"]) == ("modern", 0))
    ledger = tmp_path / "ledger.json"
    ledger.write_text(json.dumps([headline]))
    finished = tmp_path / "out" / "modern-without-ema" / "seed0"
    finished.mkdir(parents=True)
    (finished / "metrics.json").write_text(json.dumps({"test_accuracy": 0.5, "wall_seconds": 120.0}))
    with open(finished / "history.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss", "accuracy", "test_loss", "test_accuracy", "seconds"])
        writer.writerows([[1, 1.5, 0.3, 1.4, 0.4, 30.0], [2, 1.2, 0.45, 1.3, 0.5, 50.0], [3, 1.0, 0.5, 1.2, 0.5, 40.0]])
    monkeypatch.setattr(subprocess, "run", no_training)
    argv = ["--data", str(tmp_path), "--out", str(tmp_path / "out"), "--ledger", str(ledger), "--without", "ema"]
    run_script(monkeypatch, *argv)
    records = json.loads(ledger.read_text())
    added = next(r for r in records if r["run"] == "modern without ema")
    assert (added["test_accuracy"], added["wall_seconds"], added["median_epoch_minutes"]) == (0.5, 120.0, 2.0)
    assert added["history"]["test_accuracy"] == [0.4, 0.5, 0.5]
    table = (tmp_path / "out" / "ablation.md").read_text()
    assert "| modern without ema | 0 | 0.5000 |" in table
    assert (tmp_path / "out" / "curves.png").exists()


def test_the_readme_s_ablation_rows_are_in_the_ledger():
    with open(LEDGER) as f:
        measured = {(r["run"], r["seed"]): r["test_accuracy"] for r in json.load(f) if not any(r["overrides"].values())}
    with open(os.path.join(ROOT, "README.md")) as f:
        rows = re.findall(r"^\| `--without ([a-z-]+)` \| ([0-9.]+) \| ([+-][0-9.]+) \|", f.read(), re.MULTILINE)
    assert len(rows) >= 2, "the README has no table of what each ingredient buys"
    for ingredient, accuracy, points in rows:
        assert measured[(f"modern without {ingredient}", 0)] == float(accuracy), ingredient
        assert f"{100 * (float(accuracy) - measured[('modern', 0)]):+.1f}" == points, ingredient


TIME_LEDGER = os.path.join(ROOT, "benchmarks", "results", "time_to_accuracy.json")
TIME_ARGS = "--budgets 10 30 --seeds 0 1 2 --rows modern modern-without-progressive-resizing lesson --ledger-only"


def test_the_time_to_accuracy_ledger_names_each_run_s_machine_and_plan():
    with open(TIME_LEDGER) as f:
        records = json.load(f, parse_constant=lambda name: pytest.fail(f"{name} is not strict JSON"))
    assert records
    for record in records:
        assert {"run", "seed", "budget_minutes", "test_accuracy", "epochs", "planned_minutes", "cpu"} <= set(record)
        assert all(re.fullmatch(r"[a-z_]+", key) for key in record), sorted(record)
        assert "native bf16" in record["cpu"] and 0 < record["test_accuracy"] <= 1
        assert record["planned_minutes"] <= record["budget_minutes"]


def test_the_docs_time_to_accuracy_table_is_the_one_the_ledger_gives(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location(
        "time_to_accuracy", os.path.join(ROOT, "benchmarks", "time_to_accuracy.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(subprocess, "run", no_training)
    monkeypatch.setattr("sys.argv", ["time_to_accuracy.py", *TIME_ARGS.split(), "--data", "x", "--out", str(tmp_path)])
    module.main()
    table = capsys.readouterr().out.split("\n\nCPU")[0].strip()
    with open(os.path.join(ROOT, "docs", "recipes.md")) as f:
        assert table in f.read(), "docs/recipes.md's time-to-accuracy table is not the ledger's: paste its table"
    assert (tmp_path / "time_to_accuracy.png").exists()
