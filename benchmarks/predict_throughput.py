"""`kflowers predict` against a torchvision + PIL + DataLoader script, end to end, as whole processes.

A: `benchmarks/torchvision_predict.py`, written as a PyTorch user would
   (torchvision ResNet18, `Resize(256)` + `CenterCrop(224)`, a `DataLoader`
   with 2 workers, batches of 32, `model.eval()` under `torch.no_grad()`).
B: `kflowers predict --json --quiet` on a kflowers ResNet18 of 224 px (the
   same network; random weights: a forward pass costs the same whatever
   they are), batches of 32, its default precision.

Both classify the same photos of a folder (the first N of its sorted image
files), each a whole process from start to exit (imports, model load, every
photo's answer written), alternating A, B, A, B, ... in one run so that
machine drift hits both alike. Reports each side's best and median wall
seconds, photos per second, the median ratio, and each process's peak RSS
(`os.wait4`). `--memory-photos` then runs B alone over more photos (the
folder's list repeated) to show that its memory stays flat.

A needs torchvision, which needs another torch than kflowers's CPU build here:
give it its own environment with `--reference-python`.

    python -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 pillow
    python benchmarks/predict_throughput.py --data ../shared/data/flowers --photos 2000 --rounds 3 \\
        --reference-python /tmp/tvenv/bin/python --memory-photos 2000 10000
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run(command, stdout_path):
    """Wall seconds and peak RSS (MB) of `command`, its output in `stdout_path`."""
    start = time.perf_counter()
    with open(stdout_path, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command[:4]} failed: {process.stderr.read()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def answered(path):
    with open(path) as f:
        return sum(1 for line in f if json.loads(line)["top"])


def cpu():
    with open("/proc/cpuinfo") as f:
        text = f.read()
    name = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
    bf16 = "native bf16" if ("avx512_bf16" in text or "amx_bf16" in text) else "no native bf16"
    return f"{name}, {os.cpu_count()} vCPUs, {'AVX-512' if 'avx512f' in text else 'AVX2'}, {bf16}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder of photos (class subfolders)")
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reference-python", default=sys.executable, help="a Python with torchvision")
    parser.add_argument("--memory-photos", type=int, nargs="*", default=[], help="B alone over these many photos")
    parser.add_argument("--precision", default="auto", help="kflowers predict --precision")
    args = parser.parse_args()

    from kflowers.data.folders import image_files

    os.environ.setdefault("KERAS_BACKEND", "torch")
    import kflowers

    files = image_files(args.data)
    photos = files[: args.photos]
    work = tempfile.mkdtemp(prefix="kflowers-predict-bench-")
    model_path = os.path.join(work, "resnet18-224.keras")
    kflowers.save_model(
        kflowers.build_model(num_classes=5, weights=None, image_size=224),
        model_path,
        ["daisy", "dandelion", "rose", "sunflower", "tulip"],
    )
    list_path = os.path.join(work, "paths.txt")
    with open(list_path, "w") as f:
        f.write("\n".join(photos) + "\n")
    sides = {
        "A": [args.reference_python, os.path.join(HERE, "torchvision_predict.py"), list_path],
        "B": [sys.executable, "-m", "kflowers", "predict", "--model", model_path, "--json", "--quiet"]
        + ["--precision", args.precision, *photos],
    }
    seconds = {side: [] for side in sides}
    memory = {side: [] for side in sides}
    for round_ in range(args.rounds):
        for side, command in sides.items():
            out = os.path.join(work, f"{side}.jsonl")
            wall, rss = run(command, out)
            assert answered(out) == len(photos), f"{side} answered {answered(out)} of {len(photos)}"
            seconds[side].append(wall)
            memory[side].append(rss)
            print(f"round {round_ + 1}, {side}: {wall:.1f} s, peak RSS {rss:.0f} MB", file=sys.stderr)
    ratios = [a / b for a, b in zip(seconds["A"], seconds["B"])]
    print(f"\n{len(photos)} photos of {args.data}; {cpu()}; {args.rounds} rounds alternating A, B\n")
    print("| side | best s | median s | photos/s (median) | peak RSS MB |")
    print("|---|---|---|---|---|")
    names = {"A": "A: torchvision + PIL + DataLoader", "B": "B: kflowers predict"}
    for side in sides:
        median = statistics.median(seconds[side])
        print(
            f"| {names[side]} | {min(seconds[side]):.1f} | {median:.1f} | {len(photos) / median:.1f} | "
            f"{max(memory[side]):.0f} |"
        )
    rounds = ", ".join(f"{r:.2f}" for r in ratios)
    print(f"\nB's throughput / A's: median {statistics.median(ratios):.2f}x (rounds: {rounds})")
    for count in args.memory_photos:
        many = (files * (count // len(files) + 1))[:count]
        out = os.path.join(work, "many.jsonl")
        wall, rss = run(sides["B"][: sides["B"].index("--precision") + 2] + many, out)
        assert answered(out) == count
        print(f"B over {count} photos: {wall:.1f} s, peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
