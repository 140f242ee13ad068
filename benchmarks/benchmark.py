"""kflowers against the PyTorch lesson's training loop, side by side.

A: the lesson: torchvision `resnet18` with a new 5-way `fc`, SGD lr 1e-2,
   `CrossEntropyLoss`, `model.train()`; "frozen" = `requires_grad=False` on
   everything but `fc`.
B: kflowers: `build_model` + `compile` + `fit` (and `predict`) with the same
   batch, image size and optimizer (frozen = `backbone.trainable = False`).
`--extra A-channels-last B-stock` adds two more sides: the lesson's loop in
torch's channels_last memory format (what B runs on), and kflowers on Keras's
stock layers (what `kflowers.torch_layers` buys).

Both run in this process tree, alternating A/B for `--rounds` rounds to
cancel machine drift; each measurement runs in a fresh subprocess so peak RSS
is its own. Prints a markdown table: images/second for fine-tuning, frozen
training and predict, the B/A ratios, peak RSS, and the share of the CPU's
peak FLOP rate that the training step reaches (ResNet18 training ~ 3 x 1.82
GFLOP per 224x224 image).

    pip install -e ".[bench]"      # torchvision (here: torch 2.14.1)
    python benchmarks/benchmark.py --batch-size 64 --image-size 224 --steps 5 --rounds 2
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

GFLOP_PER_IMAGE_TRAIN = 3 * 1.82
SIDE_NAMES = {"A": "lesson (A)", "B": "kflowers (B)"}
EXTRA_SIDES = {
    "A-channels-last": "the lesson's loop with model and batches in torch's channels_last memory format",
    "B-stock": "kflowers on Keras's stock layers (build_model(torch_kernels=False))",
}


def measure(side, mode, batch, size, steps, warmup):
    """One measurement in this process: images/second and peak RSS (MiB)."""
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, size, size, 3)).astype("uint8")
    labels = rng.integers(0, 5, batch).astype("int64")
    if side.startswith("A"):
        import torch
        import torchvision

        model = torchvision.models.resnet18()
        model.fc = torch.nn.Linear(512, 5)
        if mode == "frozen":
            for name, p in model.named_parameters():
                p.requires_grad = name.startswith("fc.")
        # The lesson's DataLoader (ToTensor, default collate) yields contiguous NCHW batches.
        x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).contiguous()
        if side == "A-channels-last":
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(labels)
        if mode == "predict":
            model.eval()

            def step():
                with torch.no_grad():
                    model(x)
        else:
            model.train()
            optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2)
            loss_fn = torch.nn.CrossEntropyLoss()

            def step():
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()
    else:
        import kflowers
        import keras

        # "B-stock": the same model on Keras's stock layers (no kflowers.torch_layers).
        model = kflowers.build_model(weights=None, image_size=size, torch_kernels=side == "B")
        if mode == "frozen":
            model.get_layer("backbone").trainable = False
        model.compile(keras.optimizers.SGD(1e-2),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        y = labels.astype("int32")

        class SameBatch(keras.utils.PyDataset):
            def __init__(self, steps, with_labels):
                super().__init__()
                self.steps, self.with_labels = steps, with_labels

            def __len__(self):
                return self.steps

            def __getitem__(self, index):
                return (images, y) if self.with_labels else images

        def run(steps):
            if mode == "predict":
                model.predict(SameBatch(steps, False), verbose=0)
            else:
                model.fit(SameBatch(steps, True), epochs=1, verbose=0)

        run(warmup)
        start = time.perf_counter()
        run(steps)
        seconds = time.perf_counter() - start
        return {"images_per_second": batch * steps / seconds,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    return {"images_per_second": batch * steps / seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["finetune", "frozen", "predict"])
    parser.add_argument("--extra", nargs="*", default=[], choices=list(EXTRA_SIDES),
                        help="more sides to measure: " + "; ".join(f"{k}: {v}" for k, v in EXTRA_SIDES.items()))
    parser.add_argument("--one", nargs=2, metavar=("SIDE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.batch_size, args.image_size, args.steps, args.warmup)))
        return
    results = {}
    for round_index in range(args.rounds):
        for mode in args.modes:
            sides = ["A", "B"] + args.extra
            for side in sides if round_index % 2 == 0 else sides[::-1]:
                out = subprocess.run(
                    [sys.executable, __file__, "--one", side, mode, "--batch-size", str(args.batch_size),
                     "--image-size", str(args.image_size), "--steps", str(args.steps),
                     "--warmup", str(args.warmup)],
                    capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
                if out.returncode:
                    sys.exit(f"{side}/{mode} failed:\n{out.stderr[-3000:]}")
                value = json.loads(out.stdout.strip().splitlines()[-1])
                results.setdefault((mode, side), []).append(value)
                print(f"round {round_index + 1} {mode:8s} {side}: {value['images_per_second']:.1f} img/s",
                      file=sys.stderr)
    peak = cpu_peak_gflops()
    print(f"\n{args.batch_size} images of {args.image_size}x{args.image_size} a step, best of {args.rounds} "
          f"rounds, {os.cpu_count()} CPU threads, peak ~{peak:.0f} GFLOP/s\n")
    sides = ["A", "B"] + args.extra
    print("| mode | " + " | ".join(f"{SIDE_NAMES.get(side, side)} img/s" for side in sides)
          + " | " + " | ".join(f"{side}/A" for side in sides[1:])
          + " | " + " | ".join(f"{side} peak RSS MiB" for side in sides) + " | B % of peak FLOP/s |")
    print("|---" * (1 + 3 * len(sides)) + "|")
    for mode in args.modes:
        best = {side: max(results[(mode, side)], key=lambda r: r["images_per_second"]) for side in sides}
        speed = {side: best[side]["images_per_second"] for side in sides}
        # Frozen training is a forward pass (the head's backward is negligible).
        gflop = {"finetune": GFLOP_PER_IMAGE_TRAIN, "frozen": 1.82, "predict": 1.82}[mode]
        gflop *= (args.image_size / 224) ** 2
        cells = ([f"{speed[side]:.1f}" for side in sides]
                 + [f"{speed[side] / speed['A']:.2f}" for side in sides[1:]]
                 + [f"{best[side]['peak_rss_mib']:.0f}" for side in sides]
                 + [f"{100 * speed['B'] * gflop / peak:.1f}"])
        print(f"| {mode} | " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
