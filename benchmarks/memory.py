"""Peak memory of reading huge images: predicting one 64-megapixel RGBA PNG, and scanning a folder of them.

Each measurement runs in a fresh process and reports its peak resident memory above the process's own
baseline (Python, numpy and Pillow loaded; for predict also Keras and the model), from
`resource.getrusage` (`ru_maxrss`).

    python benchmarks/memory.py [--images 4] [--side 8000]

Prints a markdown table (MB above baseline).
"""

import argparse
import os
import subprocess
import sys
import tempfile

SCAN = """
import resource, sys
import numpy, PIL.Image
from kflowers.data.folders import scan_folder
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
folder = scan_folder(sys.argv[1])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((peak - base) / 1024, len(folder.paths))
"""

PREDICT = """
import resource, sys
import kflowers
from kflowers.inference.predict import predict_images
model = kflowers.load_model(sys.argv[2])
predict_images(model, [sys.argv[3]])  # warm up on the small image: the model's own buffers
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
predict_images(model, [sys.argv[1]])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((peak - base) / 1024)
"""


def huge_png(path, side):
    import numpy as np
    from PIL import Image

    pixels = np.zeros((side, side, 4), np.uint8)
    pixels[..., 0] = 200
    pixels[..., 3] = np.arange(side, dtype=np.uint16)[None, :] % 256  # alpha varies: composited for real
    Image.fromarray(pixels, "RGBA").save(path, optimize=True)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="huge images in the scanned folder")
    parser.add_argument("--side", type=int, default=8000, help="side of each square image (8000: 64 Mpx)")
    args = parser.parse_args()
    import kflowers

    with tempfile.TemporaryDirectory() as root:
        for name in ("a", "b"):
            os.makedirs(os.path.join(root, "data", name))
        image = huge_png(os.path.join(root, "data", "a", "huge0.png"), args.side)
        for i in range(1, args.images):
            os.link(image, os.path.join(root, "data", "ab"[i % 2], f"huge{i}.png"))
        small = os.path.join(root, "small.png")
        from PIL import Image

        Image.new("RGB", (64, 64), (10, 200, 30)).save(small)
        model = os.path.join(root, "model.keras")
        kflowers.save_model(kflowers.build_model(num_classes=2, weights=None, image_size=224), model, ["a", "b"])
        scan = subprocess.run([sys.executable, "-c", SCAN, os.path.join(root, "data")], capture_output=True, text=True)
        predict = subprocess.run([sys.executable, "-c", PREDICT, image, model, small], capture_output=True, text=True)
        for result in (scan, predict):
            if result.returncode:
                sys.exit(result.stderr[-3000:])
        scan_mb, count = scan.stdout.split()
        size_mb = os.path.getsize(image) / 1e6
        print("| what | peak MB above baseline |\n|---|---|")
        print(f"| predict one {args.side}x{args.side} RGBA PNG ({size_mb:.1f} MB file) | {float(predict.stdout):.0f} |")
        print(f"| scan a folder of {count} of them (4 decoding threads) | {float(scan_mb):.0f} |")


if __name__ == "__main__":
    main()
