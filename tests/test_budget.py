"""`--budget MINUTES`: the epochs chosen from measured speed, recorded in config.json, and a resumed run
that reads the plan back instead of measuring again (and so ends as the uninterrupted run)."""

import json
import os

import numpy as np
import pytest

import kflowers
from kflowers.options import RunOptions
from kflowers.recipes import LESSON
from kflowers.recipes import get_recipe
from kflowers.training import budget
from kflowers.errors import BudgetTooShort
from kflowers.training.budget import StepCosts
from kflowers.training.budget import plan_epochs
from kflowers.training.strategies import get_strategy


def costs(step=1.0, image=0.01, steps=10, train=600, test=100, stages=None, side=96):
    return StepCosts(stages or {"trainable": {str(side): step}}, image, train, test, steps, side)


def test_the_plan_is_the_most_epochs_that_fit():
    # By hand: an epoch is 10 batches of 1 s plus 100 test images of 10 ms (11 s); the final scoring is at
    # 4/3 of the side with flips (1 s * 16/9 * 2 = 3.56 s); writing 10 s. With 95 s usable: 7 epochs (90.6 s).
    scratch, recipe = get_strategy("scratch"), get_recipe("modern", "scratch", ["progressive-resizing"])
    plan = plan_epochs(scratch, recipe, costs(), 95 / (1 - budget.MARGIN), minutes=5 / 3)
    assert plan.epochs == 7 and plan.planned_seconds == pytest.approx(90.6, abs=0.05)
    assert plan_epochs(scratch, recipe, costs(), 100, minutes=5 / 3, max_epochs=4).epochs == 4
    assert budget.BudgetPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan


def test_progressive_resizing_costs_each_epoch_at_its_side():
    # 8 epochs at 96 px are 4 at 64 (0.5 s a batch), 2 at 80 (0.75 s), 2 at 96 (1 s): 55 s of batches, 8 s of
    # test images, 3.56 s of final scoring, 10 s of writing: 76.56 s. Nine epochs (4, 2, 3) take 87.56 s.
    steps = {"trainable": {"64": 0.5, "80": 0.75, "96": 1.0}}
    scratch, recipe = get_strategy("scratch"), get_recipe("modern", "scratch")
    plan = plan_epochs(scratch, recipe, costs(stages=steps), 80 / (1 - budget.MARGIN), minutes=1.5)
    assert plan.epochs == 8 and plan.planned_seconds == pytest.approx(76.56, abs=0.05)


def test_a_cached_stage_costs_its_feature_pass_and_the_head_steps():
    # two-stage over 2n epochs: n on cached features (0.01 s a batch, no test pass), n unfrozen (1 s + 1 s).
    # The feature pass scores 700 images (7 s); writing 10 s; final scoring 1 s.
    stages = {"cached": {"96": 0.01}, "unfrozen": {"96": 1.0}}
    strategy, recipe = get_strategy("two-stage"), get_recipe("lesson", "two-stage")
    plan = plan_epochs(strategy, recipe, costs(stages=stages), 200, minutes=1, cached=True)
    per_pair = 10 * 0.01 + 10 * 1.0 + 1.0
    assert plan.epochs == 2 * int((200 * (1 - budget.MARGIN) - 18) // per_pair)


def test_a_budget_too_short_for_one_epoch_says_how_long_one_takes():
    with pytest.raises(BudgetTooShort, match=r"--budget 0.2 minutes is too short: one epoch .* about 0.4 minutes"):
        plan_epochs(get_strategy("scratch"), LESSON, costs(step=1.0), 12, minutes=0.2)


def test_budget_and_epochs_are_one_or_the_other():
    with pytest.raises(ValueError, match="give --epochs or --budget, not both"):
        RunOptions(data="d", budget=5, epochs=3)
    assert RunOptions(data="d", budget=5).epochs is None  # the run plans them
    assert RunOptions(data="d", recipe="modern", strategy="scratch").epochs == 60


@pytest.mark.one_backend  # kflowers.training.budget's docstring example measures on every backend
def test_measuring_leaves_the_model_and_the_data_as_they_were(flowers_dir, resnet18_pth):
    from kflowers.data.dataset import FlowerDataset
    from kflowers.models.parts import model_parts
    from kflowers.training.loop import plan_stages

    train, test = kflowers.split_dataset(kflowers.scan_folder(flowers_dir), test_size=0.25, seed=0)
    train_ds = FlowerDataset.from_folder(train, batch_size=8, image_size=32, shuffle=True)
    test_ds = FlowerDataset.from_folder(test, batch_size=32, image_size=32)
    model = kflowers.build_model(weights=resnet18_pth, image_size=32)
    before = model.get_weights()
    strategy = get_strategy("two-stage")
    found = budget.measure_costs(
        model, strategy, get_recipe("lesson", "two-stage"), plan_stages(strategy, True), train_ds, test_ds, steps=4
    )
    assert set(found.step_seconds) == {"cached", "unfrozen"}
    assert all(found.step_seconds[stage]["32"] > 0 for stage in ("cached", "unfrozen"))
    assert found.image_seconds > 0 and found.steps_per_epoch == len(train_ds)
    assert (found.train_images, found.test_images) == (len(train.paths), len(test.paths))
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not model.compiled and train_ds.epoch == 0 and model_parts(model).backbone.trainable


class Crash(Exception):
    """What SIGKILL leaves: the process ends after the backup it was writing."""


def fixed_costs(model, strategy, recipe, stages, train_data, test_data, learning_rate=None, steps=10):
    # 4 s a batch at every side, 3 batches an epoch: 12 s an epoch. With 60 s less 10% and writing's 10 s, three
    # epochs fit (46 s) whatever the scan and build took below 8 s, and four never do (58 s > 54 s).
    sides = {str(side): 4.0 for side in (32, 40, 48)}
    return StepCosts({s.name: sides for s in stages}, 0.0, len(train_data.paths), 0, 3, train_data.image_size)


def budget_run(flowers_dir, out, **more):
    from kflowers.runs.run import train_run

    options = RunOptions(
        data=flowers_dir,
        out=str(out),
        strategy="scratch",
        recipe="modern",
        weights="none",
        image_size=48,  # progressive resizing: 3 epochs at 32, 32, 40
        batch_size=16,
        precision="float32",
        budget=1.0,
        quiet=True,
        **more,
    )
    return train_run(options)


def without_time(metrics):
    return {k: v for k, v in metrics.items() if k not in ("wall_seconds", "seconds")}


@pytest.mark.one_backend
def test_a_budget_run_records_its_plan_and_resumes_from_it(flowers_dir, tmp_path, monkeypatch):
    import kflowers.training.backup as backup
    from kflowers.runs.record import read_history

    monkeypatch.setattr(budget, "measure_costs", fixed_costs)
    straight = budget_run(flowers_dir, tmp_path / "straight")
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert config["budget"] == 1.0 and config["epochs"] == 3 and straight["epochs"] == 3
    assert config["budget_plan"]["epochs"] == 3 and config["budget_plan"]["step_seconds"]["trainable"]["40"] == 4.0
    assert config["epoch_image_sizes"] == read_history(tmp_path / "straight")["image_size"] == [32, 32, 40]

    saved = backup.save

    def crash_after_epoch_2(folder, state):
        saved(folder, state)
        if state.epoch == 2:
            raise Crash

    monkeypatch.setattr(backup, "save", crash_after_epoch_2)
    with pytest.raises(Crash):
        budget_run(flowers_dir, tmp_path / "cut")
    monkeypatch.setattr(backup, "save", saved)

    def no_measuring(*args, **kwargs):
        raise AssertionError("a resumed run reads its plan from config.json")

    monkeypatch.setattr(budget, "measure_costs", no_measuring)
    resumed = budget_run(flowers_dir, tmp_path / "cut", resume=True)
    assert without_time(resumed) == without_time(straight)
    a = kflowers.load_model(tmp_path / "straight" / "model.keras")
    b = kflowers.load_model(tmp_path / "cut" / "model.keras")
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(x, y)


@pytest.mark.one_backend
def test_compare_shares_the_budget_between_the_strategies(flowers_dir, tmp_path, monkeypatch):
    from kflowers.runs.compare import compare_strategies

    monkeypatch.setattr(budget, "measure_costs", fixed_costs)
    options = RunOptions(
        data=flowers_dir,
        out=str(tmp_path / "compare"),
        recipe="lesson",
        weights="none",
        image_size=32,
        batch_size=16,
        budget=2.0,
        quiet=True,
    )
    result = compare_strategies(options, ["scratch", "finetune"])
    first, second = (
        json.loads((tmp_path / "compare" / name / "config.json").read_text()) for name in ("scratch", "finetune")
    )
    assert 0.9 < first["budget"] <= 1.0 and first["budget"] <= second["budget"] < 2.0
    assert [row["epochs"] for row in result["rows"]] == [first["epochs"], second["epochs"]]
    assert first["epochs"] == 3 < second["epochs"]  # the second also has what the first left unused
    assert "| scratch | 3 |" in result["table"]  # how each strategy trains: the planned epochs
    assert os.path.exists(tmp_path / "compare" / "compare.md")
