"""The arguments of a training run, defined once for Python and the command line.

`RunOptions` is what `kflowers.runs.train_run` takes; each field's metadata
holds its command-line help, so `kflowers train --help` and this class can't
disagree. Imports nothing heavy: the command line reads it before Keras loads.

Example:
```python
RunOptions(data="flowers", strategy="fine-tune", weights="none")
# RunOptions(data='flowers', strategy='finetune', ..., weights='none', ...): a run resolves "default" and
# "none" (`Strategy.weights_for`)
```
"""

import argparse
import dataclasses
import math
import sys

from kflowers.recipes import INGREDIENTS
from kflowers.recipes import RECIPE_NAMES

STRATEGY_NAMES = ("scratch", "frozen", "finetune", "two-stage", "discriminative")
STRATEGY_ALIASES = {"fine-tune": "finetune", "fine_tune": "finetune", "two_stage": "two-stage", "twostage": "two-stage"}
MIN_IMAGE_SIZE = 8  # ResNet18 halves the image five times
MAX_IMAGE_SIZE = 4096  # the largest --image-size (a model file may declare more: models.saving.MAX_INPUT_SIZE)
# --precision -> the Keras dtype policy it sets (variables and BatchNorm statistics stay float32).
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def strategy_name(name):
    """The canonical name of a strategy (`"fine-tune"` -> `"finetune"`).

    Raises:
        ValueError: not a strategy.
    """
    key = STRATEGY_ALIASES.get(name, name)
    if key not in STRATEGY_NAMES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGY_NAMES)}")
    return key


# ------------------------------------------------------------ flag types


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text):
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {text}")
    return value


def non_negative_float(text):
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, got {text}")
    return value


def port(text):
    value = int(text)
    if not 0 <= value < 65536:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, got {text}")
    return value


def seed(text):
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**32 - 1, got {text}")
    return value


def image_size(text):
    value = int(text)
    if not MIN_IMAGE_SIZE <= value <= MAX_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(f"must be from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels, got {text}")
    return value


def batch_size(text):
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(
            f"must be at least 2, got {text} (BatchNorm normalises each channel over the images of a batch)"
        )
    return value


def strategy(text):
    try:
        return strategy_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _flag(default, help, **argparse_kwargs):
    return dataclasses.field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclasses.dataclass
class RunOptions:
    """The arguments of one training run (`kflowers train`); see `kflowers train --help`."""

    data: object = _flag(None, "dataset folder, one subfolder per class (default: download the flowers dataset)")
    strategy: str = _flag(
        "two-stage", f"one of {', '.join(STRATEGY_NAMES)} (or fine-tune, two_stage)", type=strategy, metavar="STRATEGY"
    )
    out: str = _flag("runs/latest", "run directory")
    epochs: object = _flag(
        None,
        "epochs in all (default: the strategy's in the lesson's recipe; the modern recipe's own)",
        type=positive_int,
    )
    budget: object = _flag(
        None,
        "minutes the run may take, instead of --epochs: the epochs (and the recipe's schedule over them) are "
        "chosen from the measured speed of the first steps, and recorded in config.json for --resume",
        type=positive_float,
        metavar="MINUTES",
    )
    lr: object = _flag(
        None, "learning rate, the head's for discriminative (default: the strategy's)", type=positive_float
    )
    batch_size: int = _flag(64, "images per training step", type=batch_size)
    image_size: object = _flag(
        None,
        "side of the square training images, in pixels (default: the recipe's: 224; for modern scratch 96, "
        "with test images scored at 128)",
        type=image_size,
    )
    weights: object = _flag(
        "default",
        "imagenet, a keras-hub preset, a .pth/.safetensors/.weights.h5 file, or "
        "none (default: the strategy's: none for scratch, imagenet otherwise)",
    )
    augment: bool = _flag(False, "random crops and flips while training", action="store_true")
    seed: int = _flag(0, "seed of the split, the shuffling, the augmentation and the head's initialisation", type=seed)
    early_stopping: bool = _flag(
        False, "stop when the test loss stops improving; keep the best epoch's weights", action="store_true"
    )
    resume: bool = _flag(False, "continue the interrupted run in --out (same arguments)", action="store_true")
    feature_cache: object = _flag(
        None,
        "train frozen epochs through the whole network, not on backbone features computed once",
        flag="--no-feature-cache",
        action="store_const",
        const=False,
    )
    precision: object = _flag(
        None,
        "float32 (the lesson's numerics), or mixed precision: bfloat16 (fast on "
        "CPUs with AVX512_BF16/AMX and on GPUs) or float16 (GPUs, with loss scaling) "
        "(default: float32 for the lesson; for modern, bfloat16 where this machine has it natively)",
        choices=list(PRECISIONS),
    )
    recipe: str = _flag(
        "lesson",
        "how each stage trains: lesson (the PyTorch lesson's recipe) or modern (warmup and cosine schedule, "
        "label smoothing, TrivialAugment and random erasing, weight EMA, flip test-time augmentation)",
        choices=list(RECIPE_NAMES),
    )
    without: list = _flag(
        (),
        f"ingredients of the modern recipe to turn off: {', '.join(INGREDIENTS)}",
        nargs="+",
        choices=list(INGREDIENTS),
        metavar="INGREDIENT",
    )
    workers: object = _flag(
        None,
        "data loading threads (default: 1 on a CPU, where decoding shares the cores "
        "with training; up to 8 with a GPU to feed)",
        type=positive_int,
    )
    force: bool = _flag(
        False,
        "use an --out that holds files kflowers did not write (only kflowers's own file names are replaced)",
        action="store_true",
    )
    test_size: float = 0.2
    quiet: bool = _flag(False, "no progress bars", action="store_true")

    @classmethod
    def from_namespace(cls, namespace, **overrides):
        """The options an `argparse` namespace holds (the flags `add_flags` made, by field name), then `overrides`.

        Example:
        ```python
        RunOptions.from_namespace(argparse.Namespace(data="flowers", epochs=3), strategy="frozen").epochs  # 3
        ```
        """
        given = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls) if hasattr(namespace, f.name)}
        return cls(**{**given, **overrides})

    def __post_init__(self):
        from kflowers.errors import OptionsError
        from kflowers.recipes import get_recipe

        try:  # one line on the command line, a ValueError in Python
            self.strategy = strategy_name(self.strategy)
            self.without = list(self.without)
            recipe = get_recipe(self.recipe, self.strategy, self.without)  # raises for a bad name or ingredient
        except ValueError as error:
            raise OptionsError(str(error)) from None
        # The effective values, so that config.json says what ran.
        if self.image_size is None:
            self.image_size = recipe.image_size or 224
        if self.budget is not None and self.epochs is not None:
            raise OptionsError("give --epochs or --budget, not both: a budget chooses the epochs")
        if self.epochs is None and self.budget is None:  # with a budget, the run plans them
            self.epochs = recipe.epochs
        if self.precision is None:
            self.precision = "bfloat16" if recipe.name == "modern" and native_bfloat16() else "float32"


# The options that change where a run writes, how it shows progress or how fast it reads, not what it computes:
# a resumed run may differ in them (every other option is the run's identity, `runs.record.run_identity`).
NOT_IDENTITY = ("out", "resume", "workers", "quiet", "force")


def native_bfloat16():
    """Whether this machine computes bfloat16 natively: a CPU with AVX512_BF16 or AMX, or (when torch is
    already loaded) a CUDA GPU that supports it."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# The flags whose `RunOptions` default is "the recipe's" take the lesson's value in a command that has no
# recipe (lr-find, through `add_flags`); `kflowers train` and `compare` keep `None` and let the recipe decide.
LESSON_DEFAULTS = {"image_size": 224, "precision": "float32"}
# The fields that are flags of `kflowers train` (in this order); `compare` takes all but the per-strategy ones.
FLAGS = [f.name for f in dataclasses.fields(RunOptions) if "help" in f.metadata]


def add_flags(parser, names, **defaults):
    """Add `RunOptions` fields `names` to an argparse `parser` as flags (`batch_size` -> `--batch-size`).

    `defaults` overrides a field's default for this command; without it, `image_size` and `precision`
    default to the lesson's (`LESSON_DEFAULTS`).
    """
    fields = {f.name: f for f in dataclasses.fields(RunOptions)}
    for name in names:
        meta = dict(fields[name].metadata)
        flag = meta.pop("flag", "--" + name.replace("_", "-"))
        default = defaults[name] if name in defaults else LESSON_DEFAULTS.get(name, fields[name].default)
        parser.add_argument(flag, dest=name, default=default, **meta)
