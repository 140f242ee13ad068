"""`kflowers ...`: parse, check what can be checked before the heavy imports, run the command.

A user's mistake ends as one line on stderr and exit status 2; Ctrl-C as exit 130.
"""

import logging
import os
import sys
from kflowers.errors import KflowersError as UserError
from kflowers.errors import user_message
from kflowers import native_logs
from kflowers.cli.parser import build_parser
from kflowers.cli.commands import COMMANDS

log = logging.getLogger("kflowers")


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the command's own parser, so that the hint names its --help
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    if args.verbose:  # TensorFlow's start-up lines too (kflowers.native_logs)
        os.environ["KFLOWERS_VERBOSE"] = "1"
    native_logs.install()  # the command line's quiet start (`import kflowers` leaves stderr alone)
    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.INFO if args.verbose else logging.WARNING)
    logging.getLogger("kflowers").setLevel(logging.INFO)
    if (getattr(args, "image_size", None) or 32) < 32:
        log.warning(
            "--image-size %d: below 32 px ResNet18's last stage sees a single pixel; expect poor accuracy",
            args.image_size,
        )
    backend = os.environ.get("KERAS_BACKEND", "torch")
    if args.command in HEAVY_COMMANDS and backend not in KERAS_BACKENDS:
        print(
            f"kflowers {args.command}: error: KERAS_BACKEND={backend} is not a Keras backend; use one of "
            f"{', '.join(KERAS_BACKENDS)} (or unset it for torch)",
            file=sys.stderr,
        )
        return 2
    try:
        _check_before_imports(args)
        return COMMANDS[args.command](args) or 0
    except KeyboardInterrupt:
        print("kflowers: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `kflowers predict ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141  # as a shell tool ended by SIGPIPE
    except Exception as error:  # noqa: BLE001 - user errors become one line
        text = user_message(error) or lost_process(error)
        if text is None:
            raise
        print(f"kflowers {args.command}: error: {text}", file=sys.stderr)
        return 2


KERAS_BACKENDS = ("torch", "jax", "tensorflow", "numpy", "openvino")


# The commands that import Keras (and keras-hub, which loads TensorFlow when it is installed).
HEAVY_COMMANDS = (
    "download",
    "train",
    "evaluate",
    "predict",
    "serve",
    "explain",
    "export",
    "compare",
    "lr-find",
    "demo",
)


def _check_before_imports(args):
    """The checks that need neither Keras nor torch, made before they are imported (which takes seconds):
    a mistyped path or a missing extra is said at once."""
    data = getattr(args, "data", None)
    if data is not None and args.command in HEAVY_COMMANDS and not os.path.isdir(data):
        raise UserError(f"dataset folder not found: {data}")
    model = getattr(args, "model", None)
    if model is not None and not os.path.isfile(model):
        raise UserError(f"model file not found: {model}")
    if args.command == "export":
        from kflowers.inference.export import check_export_runtime
        from kflowers.inference.export import check_export_target

        check_export_target(args.format, args.out, args.force)
        check_export_runtime(args.format)
    if args.command == "serve":
        from kflowers.inference.serve import check_serve_installed

        check_serve_installed()


# What gloo and nccl say when a collective's peer process is gone.
LOST_PEER = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted")


def lost_process(error):
    """One line for a collective that failed because another process of the torchrun job is gone (killed,
    or its machine lost), naming the other rank(s); `None` for any other error."""
    dist = sys.modules.get("torch.distributed")
    if not isinstance(error, RuntimeError) or dist is None or not (dist.is_available() and dist.is_initialized()):
        return None
    text = str(error)
    said = next((phrase for phrase in LOST_PEER if phrase in text), None)
    if said is None:
        return None
    rank, size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    others = [str(r) for r in range(size) if r != rank]
    who = f"rank {others[0]}" if len(others) == 1 else f"one of ranks {', '.join(others)}"
    return (
        f"{who} of the torchrun job stopped ({said.lower()} while rank {rank} exchanged gradients); "
        "run the same torchrun command with --resume"
    )
