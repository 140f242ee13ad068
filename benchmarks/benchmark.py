"""kflowers against the PyTorch lesson's training loop, side by side.

A: the lesson: torchvision `resnet18` with a new 5-way `fc`, SGD lr 1e-2,
   `CrossEntropyLoss`, `model.train()`, contiguous NCHW batches (what the
   lesson's DataLoader yields); "frozen" = `requires_grad=False` on
   everything but `fc`; predict = `model.eval()` under `torch.no_grad()`.
B: kflowers: `build_model` + `compile` + `fit` (and `predict`) with the same
   batch, image size and optimizer (frozen = `backbone.trainable = False`).
`--extra` adds more sides: `A-channels-last` (the lesson's loop in torch's
channels_last memory format, what B runs on), `B-stock` (kflowers on Keras's
stock layers: what `kflowers.models.torch_kernels.layers` buys), and mixed precision:
`B-bf16` (kflowers under `mixed_bfloat16`) with `A-bf16` (the lesson's loop
under `torch.autocast(bfloat16)`, the fair reference) and
`A-channels-last-bf16` (the same in channels_last, what B-bf16 runs on), and
`B-fp16`/`A-fp16` likewise for GPUs. The output says whether the CPU has
native bf16 (AVX512_BF16 or AMX).

Speed: for each mode, one process builds every side and then alternates
them step by step (A, B, A, B, ...), so machine drift and other tenants hit
all sides alike; each side's fastest step counts (as with `timeit`), and the
median ratio is printed too. Memory: each side and mode runs once more in a
fresh process of its own for its peak RSS. Prints a markdown table:
images/second, the ratios to A, peak RSS, and the share of the CPU's peak
FLOP rate that B reaches (ResNet18 training ~ 3 x 1.82 GFLOP per 224x224
image, scaled by the image area).

On a machine with a CUDA GPU both sides run there (Keras's torch backend
picks the GPU by itself): A copies each batch to the GPU as the lesson's loop
does (`inputs.to(device)`), B is fed numpy batches by `fit`/`predict`; each
step is timed between `torch.cuda.synchronize()` calls, memory is the peak
GPU allocation, and the FLOP share is of the GPU's plain fp32 rate (torch
runs convolutions in TF32 by default, so it can pass 100%).

    pip install -e ".[bench]"      # torchvision (here: torch 2.14.1)
    python benchmarks/benchmark.py --batch-size 64 --image-size 224 --steps 10 --extra A-channels-last B-stock
    python benchmarks/benchmark.py --batch-size 64 --image-size 224 --steps 6 --extra A-bf16 B-bf16
"""

import argparse
import concurrent.futures
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

GFLOP_PER_IMAGE = {"finetune": 3 * 1.82, "frozen": 1.82, "predict": 1.82}  # frozen: forward only
SIDE_NAMES = {"A": "lesson (A)", "B": "kflowers (B)"}
EXTRA_SIDES = {
    "A-channels-last": "the lesson's loop with model and batches in torch's channels_last memory format",
    "B-stock": "kflowers on Keras's stock layers (build_model(torch_kernels=False))",
    "A-bf16": "the lesson's loop under torch.autocast(bfloat16): the fair mixed-precision reference",
    "A-channels-last-bf16": "the lesson's loop in channels_last under torch.autocast(bfloat16)",
    "B-bf16": "kflowers under the mixed_bfloat16 policy (kflowers train --precision bfloat16)",
    "B-fp16": "kflowers under the mixed_float16 policy (GPUs)",
    "A-fp16": "the lesson's loop under torch.autocast(float16) (GPUs)",
}
PRECISION = {
    "A-bf16": "bfloat16",
    "A-channels-last-bf16": "bfloat16",
    "B-bf16": "bfloat16",
    "A-fp16": "float16",
    "B-fp16": "float16",
}


def make_step(side, mode, batch, size):
    """A function that runs one step of `side` in `mode` and returns its seconds."""
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, size, size, 3)).astype("uint8")
    labels = rng.integers(0, 5, batch).astype("int64")
    if side.startswith("A"):
        return _torch_step(side, mode, images, labels)
    return _keras_step(side, mode, images, labels)


@functools.lru_cache(maxsize=None)
def _cuda():
    import torch

    return torch.cuda.is_available()


def _sync():
    if _cuda():
        import torch

        torch.cuda.synchronize()


def _torch_step(side, mode, images, labels):
    import torch
    import torchvision

    device = "cuda" if _cuda() else "cpu"
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Linear(512, 5)
    model = model.to(device)
    if mode == "frozen":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("fc.")
    batch = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).contiguous()
    if "channels-last" in side:
        model = model.to(memory_format=torch.channels_last)
        batch = batch.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device, dtype=getattr(torch, PRECISION.get(side, "bfloat16")), enabled=side in PRECISION)
    labels = torch.from_numpy(labels)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        _sync()
        start = time.perf_counter()
        x, y = batch.to(device), labels.to(device)  # no copy on the CPU
        if mode == "predict":
            model.eval()
            with torch.no_grad(), autocast:
                model(x).cpu()
        else:
            model.train()
            optimizer.zero_grad()
            with autocast:
                loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
        _sync()
        return time.perf_counter() - start

    return step


def _keras_step(side, mode, images, labels):
    import kflowers  # first: it picks the torch backend unless KERAS_BACKEND says otherwise

    import keras

    policy = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}.get(PRECISION.get(side), "float32")
    keras.mixed_precision.set_global_policy(policy)
    model = kflowers.build_model(weights=None, image_size=images.shape[1], torch_kernels=side != "B-stock")
    keras.mixed_precision.set_global_policy("float32")
    if mode == "frozen":
        kflowers.model_parts(model).backbone.trainable = False
    model.compile(keras.optimizers.SGD(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    y = labels.astype("int32")

    class OneBatch(keras.utils.PyDataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return images if mode == "predict" else (images, y)

    class StepTime(keras.callbacks.Callback):
        # The step itself, without fit's per-call set-up.
        def on_train_batch_begin(self, batch, logs=None):
            _sync()
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            _sync()
            self.seconds = time.perf_counter() - self.start

        on_predict_batch_begin = on_train_batch_begin
        on_predict_batch_end = on_train_batch_end

    timer = StepTime()

    def step():
        if mode == "predict":
            model.predict(OneBatch(), verbose=0, callbacks=[timer])
        else:
            model.fit(OneBatch(), epochs=1, verbose=0, callbacks=[timer])
        return timer.seconds

    return step


def measure_speed(mode, sides, batch, size, steps, warmup):
    """Step times of every side, alternated step by step in this process."""
    run = {side: make_step(side, mode, batch, size) for side in sides}
    for step in run.values():
        for _ in range(warmup):
            step()
    times = {side: [] for side in sides}
    for i in range(steps):
        order = sides if i % 2 == 0 else sides[::-1]
        for side in order:
            times[side].append(run[side]())
    return times


def measure_memory(side, mode, batch, size, warmup):
    """Peak memory (MiB) of one side alone in this process, after warm-up and one step:
    RSS, or the peak GPU allocation on a GPU."""
    step = make_step(side, mode, batch, size)
    for _ in range(warmup + 1):
        step()
    if _cuda():
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_gflops():
    """Peak fp32 FLOP rate of the CPU, or of the GPU when there is one."""
    if _cuda():
        import torch

        # Hopper and Ampere: 128 fp32 lanes per SM, an FMA is 2 FLOP; boost clock ~1.98 GHz on an H100/H200.
        return torch.cuda.get_device_properties(0).multi_processor_count * 128 * 2 * 1.98
    return cpu_peak_gflops()


def cpu_peak_gflops():
    """Peak fp32 FLOP rate: cores x GHz x FLOP/cycle (AVX-512 FMA: 2 units x 16 x 2)."""
    cores = os.cpu_count() or 1
    ghz = 2.0
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("cpu MHz"):
                ghz = float(line.split(":")[1]) / 1000
                break
        flags = open("/proc/cpuinfo").read()
    except OSError:
        flags = ""
    per_cycle = 64 if "avx512f" in flags else 32
    return cores * ghz * per_cycle


def _gpu_name():
    import torch

    return torch.cuda.get_device_name(0)


def _child(args, *extra):
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--batch-size",
            str(args.batch_size),
            "--image-size",
            str(args.image_size),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            *extra,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    if out.returncode:
        sys.exit(f"{' '.join(extra)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per side and mode")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, help="memory measurements run side by side")
    parser.add_argument("--modes", nargs="+", default=["finetune", "frozen", "predict"])
    parser.add_argument(
        "--extra",
        nargs="*",
        default=[],
        choices=list(EXTRA_SIDES),
        help="more sides: " + "; ".join(f"{k}: {v}" for k, v in EXTRA_SIDES.items()),
    )
    parser.add_argument("--speed", metavar="MODE", help=argparse.SUPPRESS)
    parser.add_argument("--memory", nargs=2, metavar=("SIDE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sides = ["A", "B"] + args.extra
    if args.speed:
        print(json.dumps(measure_speed(args.speed, sides, args.batch_size, args.image_size, args.steps, args.warmup)))
        return
    if args.memory:
        print(json.dumps(measure_memory(*args.memory, args.batch_size, args.image_size, args.warmup)))
        return

    times = {}
    for mode in args.modes:
        times[mode] = _child(args, "--speed", mode, "--extra", *args.extra)
        print(
            f"{mode}: " + "  ".join(f"{side} {args.batch_size / min(t):.1f} img/s" for side, t in times[mode].items()),
            file=sys.stderr,
        )
    # Memory: a fresh process per side and mode; these may run side by side (--jobs).
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        rss = {(side, mode): pool.submit(_child, args, "--memory", side, mode) for mode in args.modes for side in sides}
        rss = {key: future.result() for key, future in rss.items()}
    rows = []
    for mode in args.modes:
        speed = {side: args.batch_size / min(times[mode][side]) for side in sides}
        median_ratio = {
            side: statistics.median(a / b for a, b in zip(times[mode]["A"], times[mode][side])) for side in sides
        }
        rows.append((mode, speed, median_ratio, {side: rss[side, mode] for side in sides}))

    peak = peak_gflops()
    backend = os.environ.get("KERAS_BACKEND", "torch")
    memory = "peak GPU MiB" if _cuda() else "peak RSS MiB"
    where = _gpu_name() if _cuda() else f"{os.cpu_count()} CPU threads of {cpu_name()}"
    print(
        f"\nB on the {backend} backend; {args.batch_size} images of {args.image_size}x{args.image_size} "
        f"a step, fastest of {args.steps} alternated steps per side, {where}, "
        f"fp32 peak ~{peak:.0f} GFLOP/s; {native_bf16()}\n"
    )
    # One row per mode and side: the precision is a column, every ratio is to the lesson's fp32 loop (A),
    # and a mixed-precision kflowers side is also compared with the lesson's loop in the same precision.
    print(f"| mode | side | precision | img/s | x A (median) | x A same precision | {memory} | % of fp32 peak |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, speed, median_ratio, rss in rows:
        gflop = GFLOP_PER_IMAGE[mode] * (args.image_size / 224) ** 2
        for side in sides:
            precision = PRECISION.get(side, "float32")
            twin = "A-" + side.split("-")[1] if side.startswith("B-") and side in PRECISION else None
            fair = f"{speed[side] / speed[twin]:.2f}" if twin in speed else ""
            ratio = "1" if side == "A" else f"{speed[side] / speed['A']:.2f} ({median_ratio[side]:.2f})"
            print(
                f"| {mode} | {SIDE_NAMES.get(side, side)} | {precision} | {speed[side]:.1f} | {ratio} | {fair} "
                f"| {rss[side]:.0f} | {100 * speed[side] * gflop / peak:.1f} |"
            )


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "an unknown CPU"


def native_bf16():
    """Whether the CPU computes bfloat16 natively (AVX512_BF16 or AMX), in words."""
    if _cuda():
        return "GPU"
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        flags = ""
    found = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]
    return f"native bf16: {'yes (' + ', '.join(found) + ')' if found else 'no'}"


if __name__ == "__main__":
    main()
