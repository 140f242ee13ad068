"""A dataset drawn on the spot, for `kflowers demo` and the tests.

Each class has its own shape and colour, so a small model learns them in a few
epochs on a CPU: the whole pipeline runs without network or real photos.
"""

import os

import numpy as np
from PIL import Image
from PIL import ImageDraw

from kflowers.errors import KflowersError
from kflowers.files import write_text

# The file that says a folder holds images `draw_demo_dataset` drew (and so may redraw).
DEMO_MARKER = ".kflowers-demo-data"

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


def draw_demo_dataset(root, classes, per_class=40, size=48, seed=0):
    """`draw_dataset` into a folder of the demo's own (`kflowers demo`), drawn again on every call.

    `root` must be new, empty, or a folder this function drew before (it
    holds `DEMO_MARKER`); the images are written under their own names only,
    never through a link, and nothing else there is deleted or replaced.

    Raises:
        KflowersError: `root` is a link or a file, or a folder the demo did not draw.
    """
    check_demo_folder(root, classes)
    os.makedirs(root, exist_ok=True)
    write_text(os.path.join(root, DEMO_MARKER), "images drawn by kflowers demo\n")
    return draw_dataset(root, classes, per_class, size, seed)


def check_demo_folder(root, classes):
    """Raise `KflowersError` unless `root` may take the demo's drawn images (see `draw_demo_dataset`)."""
    where = f"{root} (the demo's drawn images)"
    if os.path.islink(root) or (os.path.lexists(root) and not os.path.isdir(root)):
        raise KflowersError(f"{where} is a link or a file, not a folder the demo made: move it or choose another --out")
    if os.path.isdir(root) and os.listdir(root) and not os.path.isfile(os.path.join(root, DEMO_MARKER)):
        raise KflowersError(f"{where} holds files the demo did not draw: move them or choose another --out")
    for name in classes:  # a link planted where a class folder or an image goes would send the pixels elsewhere
        folder = os.path.join(root, name)
        links = [folder] if os.path.islink(folder) else []
        if os.path.isdir(folder) and not links:
            links = [os.path.join(folder, n) for n in os.listdir(folder) if os.path.islink(os.path.join(folder, n))]
        if links:
            raise KflowersError(f"{links[0]} is a link: the demo writes only into its own files; remove it")
