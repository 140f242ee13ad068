"""`kflowers serve` under load on 127.0.0.1: one request at a time against 32 clients at once.

Starts `kflowers serve --port 0` (a free port of 127.0.0.1) on a kflowers ResNet18 (224 px, random weights:
a forward pass costs the same whatever they are), then sends photos of a folder, one photo a request:

1. alone: `--alone` requests, one after another;
2. at once: `--clients` clients, each sending `--requests` requests one after another, all clients together.

Every answer must be 200. Prints requests per second, p50 and p99 latency for each, the throughput ratio
(what micro-batching buys) and the server's own count of photos and batches (`/health`). Bounded in count
and time; traffic goes to 127.0.0.1 only.

    python benchmarks/serve_load.py --data ../shared/data/flowers
"""

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

from predict_throughput import cpu


def post(url, name, data, timeout=120):
    boundary = "kflowers-load-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        url + "/predict?top=3", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()
        status = response.status
    return status, time.perf_counter() - start


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--alone", type=int, default=64)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4)
    args = parser.parse_args()

    os.environ.setdefault("KERAS_BACKEND", "torch")
    import kflowers
    from kflowers.data.folders import image_files

    photos = []
    for path in image_files(args.data)[: args.alone + args.clients * args.requests]:
        with open(path, "rb") as f:
            photos.append((os.path.basename(path), f.read()))
    model_path = os.path.join(tempfile.mkdtemp(prefix="kflowers-serve-bench-"), "resnet18-224.keras")
    model = kflowers.build_model(num_classes=5, weights=None, image_size=224)
    kflowers.save_model(model, model_path, ["daisy", "dandelion", "rose", "sunflower", "tulip"])
    server = subprocess.Popen(
        [sys.executable, "-m", "kflowers", "serve", "--model", model_path, "--port", "0", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        url = server.stdout.readline().split(" at ")[1].split()[0]
        post(url, *photos[0])  # the first forward pass builds what later ones reuse
        rows = []
        start = time.perf_counter()
        alone = [post(url, *photo) for photo in photos[: args.alone]]
        rows.append(("one request at a time", alone, time.perf_counter() - start))

        def client(index):
            mine = photos[args.alone + index * args.requests : args.alone + (index + 1) * args.requests]
            return [post(url, *photo) for photo in mine]

        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            together = [answer for answers in pool.map(client, range(args.clients)) for answer in answers]
        rows.append(
            (f"{args.clients} clients x {args.requests} requests at once", together, time.perf_counter() - start)
        )
        with urllib.request.urlopen(url + "/health", timeout=30) as response:
            answered = json.loads(response.read())["answered"]
    finally:
        server.terminate()
        server.wait(60)
    print(f"\nkflowers serve, ResNet18 at 224 px, one photo of {args.data} a request; {cpu()}\n")
    print("| load | requests | all 200 | requests/s | p50 latency s | p99 latency s |")
    print("|---|---|---|---|---|---|")
    rates = []
    for name, answers, seconds in rows:
        latencies = [latency for _, latency in answers]
        rates.append(len(answers) / seconds)
        print(
            f"| {name} | {len(answers)} | {all(status == 200 for status, _ in answers)} | {rates[-1]:.1f} | "
            f"{percentile(latencies, 50):.2f} | {percentile(latencies, 99):.2f} |"
        )
    print(
        f"\nthroughput at once / alone: {rates[1] / rates[0]:.2f}x; the server answered {answered['photos']} photos in "
        f"{answered['batches']} batches (mean {answered['photos'] / answered['batches']:.1f} a batch)"
    )


if __name__ == "__main__":
    main()
