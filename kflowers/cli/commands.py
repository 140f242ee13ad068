"""What each `kflowers` command does. Keras, torch and keras-hub are imported inside the commands that
need them, so that `kflowers --help` and argument errors come at once."""

import json
import logging
import os
import sys
from kflowers.errors import KflowersError as UserError
from kflowers.errors import display_name
from kflowers.files import strict_json

log = logging.getLogger("kflowers")


def cmd_download(args):
    from kflowers.data.download import DataError
    from kflowers.data.download import download_flowers
    from kflowers.data.folders import scan_folder

    try:
        root = download_flowers(cache_dir=args.dir)
    except DataError as error:  # its hint is for the commands that take --data
        text = str(error).replace(
            "pass --data DIR with a folder of class subfolders",
            "copy the dataset here by hand and give it to train or compare as --data DIR",
        )
        raise DataError(text) from error
    folder = scan_folder(root, check_images=False)
    print(f"flowers dataset in {root}: {len(folder)} images")
    print(f"train with: kflowers train --data {root}")


def _print_counts(folder):
    from kflowers.tables import markdown_table

    rows = [{"class": name, "label": i, "images": count} for i, (name, count) in enumerate(folder.counts().items())]
    rows.append({"class": "total", "label": "", "images": len(folder)})
    print(markdown_table(rows))
    if folder.skipped:
        print(f"skipped {len(folder.skipped)} file(s); see the warnings above")


def cmd_show(args):
    from kflowers.data.folders import scan_folder
    from kflowers.data.samples import plot_samples

    folder = scan_folder(args.data)
    _print_counts(folder)
    print(f"sample grid: {plot_samples(folder, args.out, seed=args.seed)}")


def _run_options(args, strategy, out):
    from kflowers.options import RunOptions

    return RunOptions.from_namespace(args, strategy=strategy, out=out)


def cmd_train(args):
    from kflowers.runs.run import train_run

    metrics = train_run(_run_options(args, args.strategy, args.out), on_scanned=_print_counts)
    if metrics is not None:  # under torchrun, the main process's
        _print_summary(args.out, metrics)


def _print_summary(out, metrics):
    state = " (interrupted)" if metrics.get("interrupted") else ""
    print(
        f"\n{metrics['strategy']}{state}: test accuracy {metrics['test_accuracy']:.4f} "
        f"(best {metrics['best_test_accuracy']:.4f}) after {metrics['epochs']} epoch(s), "
        f"{metrics['wall_seconds']:.0f} s"
    )
    print(f"run directory: {out} (model.keras, history.csv, metrics.json, curves.png, confusion.png, top_losses.png)")


def _load(path):
    from kflowers.models.saving import load_model

    return load_model(path)


def cmd_evaluate(args):
    from kflowers.runs.evaluate import evaluate_folder
    from kflowers.tables import markdown_table

    result = evaluate_folder(args.model, args.data, side=args.split, image_size=args.image_size, out=args.out)
    if args.json:
        print(json.dumps(strict_json({key: value for key, value in result.items() if key != "description"})))
        return
    classes = result["classes"]
    print(f"accuracy: {result['accuracy']:.4f} on {result['images']} images ({result['description']})")
    if result["left_out_as_training"]:
        print(
            f"left out: {result['left_out_as_training']} images the model trained on (--split all or train scores them)"
        )
    if result["trained_on"]:
        print(f"note: {result['trained_on']} of these {result['images']} images are images the model trained on")
    rows = [{"class": name, **values} for name, values in result["per_class"].items()]
    print(markdown_table(rows, ["class", "precision", "recall", "f1", "support"]))
    print("\nconfusion matrix (rows: true class, columns: predicted)")
    matrix = [{"true": name, **dict(zip(classes, row))} for name, row in zip(classes, result["confusion"])]
    print(markdown_table(matrix, ["true", *classes]))
    if result["confusion_png"]:
        print(f"confusion matrix: {result['confusion_png']}")


def cmd_explain(args):
    from kflowers.data.folders import readable_images
    from kflowers.inference.explain import explain_images

    model = _load(args.model)
    written = explain_images(model, readable_images(args.images), args.out, top_k=args.top)
    print(f"{len(written)} Grad-CAM picture(s) in {args.out}")


def cmd_export(args):
    from kflowers.inference.export import export_model

    result = export_model(args.model, args.format, args.out, images=args.check_images, force=args.force)
    print(
        f"{args.format}: {result['path']} (checked on {result['images']} images: same top-1, probabilities "
        f"within {result['max_probability_difference']:.1e} of {args.model})"
    )


def cmd_predict(args):
    """Answers stream out as each batch is done: a markdown table, JSON Lines or CSV on stdout; skipped files
    and the progress bar on stderr. Ctrl-C leaves whole lines only (exit 130)."""
    from kflowers.data.folders import image_paths
    from kflowers.inference.predict import choose_precision
    from kflowers.inference.predict import class_names_of
    from kflowers.inference.predict import iter_predictions

    paths = image_paths(args.images)
    model = _load(args.model)
    precision, why = choose_precision(args.precision)
    if not args.quiet:
        print(f"predicting in {precision}: {why}", file=sys.stderr)
    top = min(args.top, len(class_names_of(model)))
    write = _answer_writer("json" if args.json else "csv" if args.csv else "table", top)
    progress = _Progress(len(paths), enabled=not args.quiet and sys.stderr.isatty())
    answered = 0
    for index, answer in enumerate(
        iter_predictions(model, paths, args.top, batch_size=args.batch_size, precision=precision)
    ):
        if answer.error:
            sys.stdout.flush()  # the answers before it come first
            progress.clear()
            log.warning("skipped %s: %s", display_name(os.fspath(answer.image)), answer.error)
        else:
            write(answer)
            answered += 1
        if (index + 1) % args.batch_size == 0 or index + 1 == len(paths):
            sys.stdout.flush()
            progress.update(index + 1)
    progress.clear()
    if not answered:
        raise UserError("no readable image in " + ", ".join(args.images))


def _answer_writer(form, top):
    """A function that writes one `Prediction` to stdout as one whole line (a single write, so that Ctrl-C
    never leaves half a line): a markdown table row, a JSON Lines object or a CSV row (headers first)."""
    import csv
    import io

    def line(text):
        sys.stdout.write(text + "\n")

    if form == "json":
        return lambda answer: line(json.dumps(strict_json(_answer_dict(answer)), ensure_ascii=False))
    if form == "csv":

        def csv_line(row):
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="").writerow(row)
            line(buffer.getvalue())

        csv_line(["image"] + [f"{key}_{k + 1}" for k in range(top) for key in ("class", "probability")])
        return lambda answer: csv_line(
            [answer.image] + [value for name, p in answer.top for value in (name, f"{p:.6f}")]
        )
    line("| image | " + " | ".join(f"#{k + 1}" for k in range(top)) + " |")
    line("|---" * (top + 1) + "|")
    return lambda answer: line(
        f"| {_cell(answer.image)} | " + " | ".join(f"{_cell(name)} {p:.3f}" for name, p in answer.top) + " |"
    )


def _answer_dict(answer):
    return {"image": os.fspath(answer.image), "top": [{"class": n, "probability": p} for n, p in answer.top]}


def _cell(value):
    return display_name(os.fspath(value)).replace("|", "\\|")


class _Progress:
    """`done/total images, N/s` on one line of stderr, redrawn in place (a terminal only)."""

    def __init__(self, total, enabled):
        import time

        self.total, self.enabled, self.clock, self.start, self.shown = total, enabled, time.monotonic, None, False
        self.start = self.clock()

    def update(self, done):
        if self.enabled:
            rate = done / max(self.clock() - self.start, 1e-9)
            sys.stderr.write(f"\r{done}/{self.total} images, {rate:.0f}/s ")
            sys.stderr.flush()
            self.shown = True

    def clear(self):
        if self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.shown = False


def cmd_compare(args):
    from kflowers.runs.compare import compare_strategies

    options = _run_options(args, args.strategies[0], args.out)
    result = compare_strategies(options, args.strategies, on_scanned=_print_counts)
    print("\n" + result["table"])
    print(f"\ntable: {os.path.join(args.out, 'compare.md')}, curves: {os.path.join(args.out, 'curves.png')}")
    return 130 if result["interrupted"] else 0


def cmd_lr_find(args):
    from kflowers.runs.lr_find import lr_find

    if not args.min_lr < args.max_lr:
        raise UserError(f"--min-lr {args.min_lr:g} must be below --max-lr {args.max_lr:g} (the sweep goes up)")
    result = lr_find(
        args.data,
        strategy=args.strategy,
        weights=args.weights,
        batch_size=args.batch_size,
        image_size=args.image_size,
        steps=args.steps,
        min_lr=args.min_lr,
        max_lr=args.max_lr,
        seed=args.seed,
        plot_path=args.out,
        verbose=0 if args.quiet else 1 if sys.stdout.isatty() else 2,
    )
    if result["stopped_early"]:
        print(f"\nstopped early after {len(result['rates'])} of {args.steps} steps: {result['stopped_early']}")
    print(f"suggested learning rate: {result['suggestion']:.2e} (steepest descent of the loss)")
    if result["at_bound"]:
        log.warning(
            "the suggestion is at the edge of the sweep (%.1e to %.1e): widen it with --min-lr "
            "and --max-lr before trusting it",
            args.min_lr,
            args.max_lr,
        )
    print(f"plot: {args.out}")


def cmd_demo(args):
    from kflowers.data.download import CLASS_NAMES
    from kflowers.data.demo import check_demo_folder
    from kflowers.data.demo import draw_demo_dataset
    from kflowers.options import RunOptions
    from kflowers.runs.directory import claim
    from kflowers.runs.directory import check_out
    from kflowers.runs.run import train_run

    check_out(args.out, force=args.force)
    # The drawn images stay in the run directory, so that its config.json and split.json point to data that
    # exists (`kflowers evaluate --data RUN/demo-data` works). `draw_demo_dataset` refuses a folder of that name
    # that it did not draw itself (whatever --force says), and writes only its own file names there.
    data = os.path.join(args.out, DEMO_DATA)
    check_demo_folder(data, CLASS_NAMES)
    claim(args.out, kind="demo", force=args.force)
    draw_demo_dataset(data, CLASS_NAMES, per_class=40, size=48, seed=0)
    print(f"drew a dataset of 5 x 40 images in {data}")
    options = RunOptions(
        data=data,
        strategy="scratch",
        out=args.out,
        epochs=4,
        batch_size=32,
        image_size=32,
        weights=None,
        quiet=args.quiet,
        force=True,  # the folder was claimed above; it now holds the drawn images
    )
    metrics = train_run(options)
    sample = os.path.join(data, CLASS_NAMES[2], f"{CLASS_NAMES[2]}_000.JPG")
    _print_summary(args.out, metrics)
    print(f"\nnext: kflowers predict --model {os.path.join(args.out, 'model.keras')} {sample}")


DEMO_DATA = "demo-data"


def cmd_serve(args):
    from kflowers.inference.predict import choose_precision
    from kflowers.inference.serve import ServeLimits
    from kflowers.inference.serve import serve

    precision, why = choose_precision(args.precision)
    print(f"inference in {precision}: {why}", file=sys.stderr)
    limits = ServeLimits(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_file_bytes=int(args.max_upload_mb * 1e6),
        max_request_bytes=int(args.max_upload_mb * 1e6 * 2),
        max_files=args.max_files,
    )
    return serve(args.model, args.host, args.port, limits, precision, quiet=args.quiet)


def cmd_launch(args):
    from kflowers.cli.launch import launch

    if not args.launched or args.launched[0] not in COMMANDS or args.launched[0] == "launch":
        raise UserError("kflowers launch needs the kflowers command to run, such as: train --data DIR --out RUN")
    if not 0 <= args.node_rank < args.nnodes:
        raise UserError(f"--node-rank {args.node_rank}: must be from 0 to {args.nnodes - 1} (--nnodes {args.nnodes})")
    return launch(
        args.launched,
        nnodes=args.nnodes,
        node_rank=args.node_rank,
        nproc_per_node=args.nproc_per_node,
        endpoint=args.rdzv_endpoint,
        join_timeout=args.join_timeout,
    )


COMMANDS = {
    "download": cmd_download,
    "show": cmd_show,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "explain": cmd_explain,
    "serve": cmd_serve,
    "export": cmd_export,
    "compare": cmd_compare,
    "lr-find": cmd_lr_find,
    "demo": cmd_demo,
    "launch": cmd_launch,
}
