"""A dataset drawn on the spot, for `kflowers demo` and the tests.

Each class has its own shape and colour, so a small model learns them in a few
epochs on a CPU: the whole pipeline runs without network or real photos.
"""

import os

import numpy as np
from PIL import Image
from PIL import ImageDraw

PALETTE = [
    (240, 240, 240),
    (250, 210, 20),
    (210, 30, 60),
    (250, 160, 0),
    (200, 60, 200),
    (40, 120, 240),
    (30, 200, 120),
]


def draw_flower(label, size=48, rng=None):
    """A `size`x`size` RGB PIL image of class `label`."""
    rng = rng or np.random.default_rng()
    background = tuple(int(c) for c in rng.integers(0, 90, 3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    colour = tuple(int(np.clip(c + rng.integers(-25, 25), 0, 255)) for c in PALETTE[label % len(PALETTE)])
    r = int(size * rng.uniform(0.25, 0.4))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    box = [cx - r, cy - r, cx + r, cy + r]
    shape = label % 5
    if shape == 0:
        draw.ellipse(box, fill=colour)
    elif shape == 1:
        draw.rectangle(box, fill=colour)
    elif shape == 2:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == 3:
        draw.ellipse(box, outline=colour, width=max(2, r // 3))
    else:
        draw.line([(cx - r, cy - r), (cx + r, cy + r)], fill=colour, width=max(2, r // 2))
        draw.line([(cx - r, cy + r), (cx + r, cy - r)], fill=colour, width=max(2, r // 2))
    return image


def draw_dataset(root, classes, per_class=12, size=48, seed=0):
    """Write `per_class` images per class folder under `root`; return `root`."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            image = draw_flower(label, size, rng)
            ext = ".JPG" if i % 4 == 0 else (".png" if i % 4 == 1 else ".jpg")
            image.save(os.path.join(folder, f"{name}_{i:03d}{ext}"), quality=95)
    return str(root)
