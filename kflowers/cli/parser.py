"""The `kflowers` command line's arguments: one sub-parser per command, every flag's default in `--help`."""

import argparse
from kflowers import options
from kflowers.training.lr_find import SWEEP


class _DefaultsFormatter(argparse.HelpFormatter):
    """Ends each flag's help with its default, unless the help already says it or there is none."""

    def _get_help_string(self, action):
        text = action.help or ""
        quiet = (
            any(action.default is value for value in (None, False, argparse.SUPPRESS))
            or "default" in text
            or action.option_strings == []
            or action.nargs == 0
        )
        return text if quiet else f"{text} (default: {action.default})"


class _Parser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line on stderr (exit status 2), with defaults in `--help`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser():
    from kflowers import __version__

    parser = _Parser(prog="kflowers", description="ResNet18 transfer learning on the flowers dataset, in Keras 3.")
    parser.add_argument("--version", action="version", version=f"kflowers {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show library log output")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = commands.choices
    _add_data_commands(commands)
    _add_training_commands(commands)
    _add_model_commands(commands)
    return parser


def _add_data_commands(commands):
    """`download` and `show`: the dataset before any model."""
    p = commands.add_parser("download", help="fetch and extract the flowers dataset")
    p.add_argument("--dir", help="cache folder (default: ~/.keras)")

    p = commands.add_parser("show", help="sample grid and per-class counts of a dataset")
    p.add_argument("--data", required=True, help="dataset folder, one subfolder per class")
    p.add_argument("--out", default="grid.png", help="where to write the sample grid")
    p.add_argument("--seed", type=options.seed, default=0, help="which images the grid shows")


def _add_training_commands(commands):
    """`train`, `compare`, `lr-find` and `demo`: what trains a model."""
    p = commands.add_parser("train", help="train one strategy into a run directory")
    options.add_flags(p, options.FLAGS, image_size=None, precision=None)  # every RunOptions flag
    p = commands.add_parser("compare", help="several strategies on the same split and seed")
    per_strategy = ("strategy", "early_stopping", "resume")  # compare gives each strategy its own
    compared = [name for name in options.FLAGS if name not in per_strategy]
    options.add_flags(p, compared, out="runs/compare", image_size=None, precision=None)
    p.add_argument(
        "--strategies",
        nargs="+",
        type=options.strategy,
        default=list(options.STRATEGY_NAMES),
        metavar="STRATEGY",
        help="the strategies to train, in order",
    )

    p = commands.add_parser("lr-find", help="loss against learning rate, with a suggestion")
    options.add_flags(p, ["data", "strategy", "weights", "batch_size", "image_size", "seed"], strategy="finetune")
    p.add_argument("--steps", type=options.positive_int, default=SWEEP["steps"], help="training steps in the sweep")
    p.add_argument("--min-lr", type=options.positive_float, default=SWEEP["min_lr"], help="the sweep's first rate")
    p.add_argument("--max-lr", type=options.positive_float, default=SWEEP["max_lr"], help="the sweep's last rate")
    p.add_argument("--out", default="lr_find.png", help="where to write the plot")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = commands.add_parser(
        "launch",
        help="a kflowers command under torchrun, on one machine or several, with a bounded wait for the others",
    )
    p.add_argument("--nnodes", type=options.positive_int, default=1, help="machines taking part")
    p.add_argument("--node-rank", type=int, default=0, help="this machine's index, from 0")
    p.add_argument("--nproc-per-node", type=options.positive_int, default=1, help="processes (devices) here")
    p.add_argument("--rdzv-endpoint", default="127.0.0.1:29400", help="HOST:PORT where the machines meet (machine 0's)")
    p.add_argument(
        "--join-timeout",
        type=options.positive_float,
        default=300.0,
        help="seconds to wait for every machine to join; then one line and exit 2",
    )
    p.add_argument("launched", nargs=argparse.REMAINDER, metavar="COMMAND", help="the kflowers command to run")

    p = commands.add_parser("demo", help="the whole pipeline, offline, on a generated dataset")
    p.add_argument("--out", default="runs/demo", help="run directory")
    options.add_flags(p, ["force", "quiet"])


def _add_model_commands(commands):
    """`evaluate`, `predict`, `explain` and `export`: what uses a trained model."""
    p = commands.add_parser("evaluate", help="accuracy, per-class report and confusion matrix")
    p.add_argument("--model", required=True, help="a model.keras file")
    p.add_argument("--data", required=True, help="dataset folder, one subfolder per class")
    p.add_argument("--image-size", type=options.image_size, help="default: the model's")
    p.add_argument("--out", help="write confusion.png into this folder (default: write no file)")
    p.add_argument(
        "--split",
        choices=["test", "train", "all"],
        help="which side of the model's run to score, read from split.json beside the model (default: every "
        "image the model did not train on: the run's test side on its own data, all of a folder of new photos)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = commands.add_parser("predict", help="classify images, streaming one answer per photo")
    p.add_argument("--model", required=True, help="a model.keras file")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--top", type=options.positive_int, default=3, help="classes to show per image")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="JSON Lines: one object per photo")
    form.add_argument("--csv", action="store_true", help="CSV: a header, then one row per photo")
    p.add_argument("--batch-size", type=options.positive_int, default=32, help="photos per forward pass")
    p.add_argument(
        "--precision",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="bfloat16 where the machine computes it natively (torch backend), else float32",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar, no precision line")

    _add_serve_command(commands)

    p = commands.add_parser("explain", help="Grad-CAM: where the model looks, one picture per image")
    p.add_argument("--model", required=True, help="a model.keras file")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", default="explain", help="folder for the NAME.gradcam.png pictures")
    p.add_argument("--top", type=options.positive_int, default=3, help="classes named in each title")

    p = commands.add_parser("export", help="SavedModel, ONNX or LiteRT, checked against the .keras model")
    p.add_argument("--model", required=True, help="a model.keras file")
    p.add_argument("--format", required=True, choices=["saved_model", "onnx", "litert"], help="what to write")
    p.add_argument("--out", required=True, help="the file (onnx, litert) or folder (saved_model) to write")
    p.add_argument(
        "--check-images",
        nargs="*",
        default=[],
        metavar="IMAGE",
        help="images to compare the export and the model on, besides 4 random ones",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out (only the export's own files)")


def _add_serve_command(commands):
    """`serve`: the page and the JSON API, with the server's limits."""
    p = commands.add_parser("serve", help="a page where people try the model, and a JSON API")
    p.add_argument("--model", required=True, help="a model.keras file")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=options.port, default=8000, help="the port (0: any free one)")
    p.add_argument("--max-batch", type=options.positive_int, default=32, help="photos per forward pass")
    p.add_argument(
        "--max-wait-ms", type=options.non_negative_float, default=5.0, help="how long a photo waits for others"
    )
    p.add_argument("--max-queue", type=options.positive_int, default=256, help="photos waiting; beyond it, 503")
    p.add_argument("--max-upload-mb", type=options.positive_float, default=10.0, help="one photo's size; beyond, 413")
    p.add_argument("--max-files", type=options.positive_int, default=16, help="photos per request; beyond, 413")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto", help="as for predict")
    p.add_argument("--quiet", action="store_true", help="no access log")
