"""Reading one image file as an RGB `uint8` array, or saying why it can't be read.

Photo folders collected from the web hold CMYK JPEGs, palette and 16-bit PNGs,
rotated phone pictures, truncated downloads and HTML pages saved as `.jpg`.
`read_image` turns every readable one into the same thing, an `(H, W, 3)`
`uint8` array with EXIF orientation applied, and raises `UnreadableImage`
(with the reason) for the rest. Pillow decodes (it can apply EXIF orientation
and decode a JPEG at a reduced scale, which scikit-image's `imread` can't);
`to_uint8` scales 16-bit, integer and float pixels by their type's range, and
transparent pixels are composited onto white in integer arithmetic.
"""

import contextlib
import os
import stat
import threading
import warnings

import numpy as np
from PIL import Image
from PIL import ImageOps

from kflowers.errors import KflowersError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# Pillow's own guard against decompression bombs warns at ~89 Mpx and raises at
# twice that; kflowers refuses anything above this size outright.
MAX_PIXELS = 64_000_000
# Images above this many pixels are decoded one at a time, whatever the number of threads: four 64-megapixel
# decodes at once would hold gigabytes.
LARGE_PIXELS = 16_000_000
_ONE_LARGE_DECODE = threading.Lock()


class UnreadableImage(KflowersError, ValueError):
    """A file that is not a usable image; the message says why."""


def is_image_file(path):
    """Whether `path` has an image extension (case-insensitive).

    Example:
    ```python
    is_image_file("Rose_01.JPG")  # True
    ```
    """
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def read_image(path, min_size=None):
    """Decode `path` into an `(H, W, 3)` `uint8` RGB array.

    Args:
        path: str or path, or an open binary file. The image file.
        min_size: int or `None`. When set, a JPEG may be decoded at a
            reduced scale (1/2, 1/4 or 1/8) as long as both sides stay at
            least `min_size` pixels: a 1000 px photo resized to 64 px then
            costs a fraction of a full decode. An image above
            `LARGE_PIXELS` of any format is shrunk by a whole factor right
            after decoding, keeping at least twice `min_size` on its short
            side, before any copy. Defaults to `None`.

    Raises:
        UnreadableImage: the file is empty, truncated, not an image, or too
            large; the message names the reason.

    Example:
    ```python
    pixels = read_image("rose.jpg", min_size=224)
    pixels.shape[-1], pixels.dtype  # (3, dtype('uint8'))
    ```
    """
    try:
        if hasattr(path, "read"):  # an open binary file (an upload)
            if path.seek(0, os.SEEK_END) == 0:
                raise UnreadableImage("empty file (0 bytes)")
            path.seek(0)
        else:
            status = os.stat(path)  # FileNotFoundError for a dangling link
            if not stat.S_ISREG(status.st_mode):  # a FIFO would block the decoder, a device never end
                raise UnreadableImage("not a regular file (a FIFO, a device or a folder)")
            if status.st_size == 0:
                raise UnreadableImage("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Pillow's notes on palettes, EXIF: not the user's concern
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise UnreadableImage(f"too large ({width}x{height} pixels; the limit is {MAX_PIXELS:,} pixels)")
                if min_size and image.format == "JPEG":
                    image.draft("RGB", (min_size, min_size))
                large = image.size[0] * image.size[1] > LARGE_PIXELS
                with _ONE_LARGE_DECODE if large else contextlib.nullcontext():
                    image.load()
                    factor = min(image.size) // (2 * min_size) if (large and min_size) else 1
                    if factor >= 2:  # a huge image wanted small: shrink before any copy (twice min_size kept)
                        image = image.reduce(factor)
                    image = ImageOps.exif_transpose(image)
                    return _to_rgb_uint8(image)
    except UnreadableImage:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UnreadableImage(_reason(error)) from error


def _to_rgb_uint8(image):
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode in ("CMYK", "YCbCr", "LAB", "HSV", "1"):
        image = image.convert("RGB")
    elif image.mode == "LA":
        image = image.convert("RGBA")
    pixels = to_uint8(np.asarray(image))
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    elif pixels.shape[-1] == 4:
        pixels = composite_on_white(pixels)
    if pixels.ndim != 3 or pixels.shape[-1] != 3 or min(pixels.shape[:2]) < 1:
        raise UnreadableImage(f"unsupported pixel layout {pixels.shape}")
    return np.ascontiguousarray(pixels)


def to_uint8(pixels):
    """`pixels` as `uint8`, scaled by the range of their dtype, never by the image's own values.

    `uint8` stays as it is; `uint16` (16-bit PNG and TIFF) maps 0..65535 to
    0..255 (`round(v / 257)`); other integer types map 0..their maximum to
    0..255 (negative values become 0); floats are taken as 0..1 (skimage's
    convention: outside values are clipped); booleans become 0 or 255. So two
    16-bit images that differ in one pixel decode to images that differ in at
    most that pixel.

    Example:
    ```python
    to_uint8(np.array([0, 256, 32768, 65535], np.uint16))  # array([  0,   1, 128, 255], dtype=uint8)
    ```
    """
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.bool_:
        return pixels.astype(np.uint8) * 255
    if pixels.dtype == np.uint16:
        return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if pixels.dtype.kind in "iu":
        top = float(np.iinfo(pixels.dtype).max)
        scaled = np.clip(pixels, 0, None).astype(np.float64) * (255.0 / top)
    elif pixels.dtype.kind == "f":
        scaled = np.clip(np.nan_to_num(pixels.astype(np.float32), nan=0.0), 0.0, 1.0) * np.float32(255)
    else:
        raise UnreadableImage(f"unsupported pixel type {pixels.dtype}")
    return np.rint(scaled).astype(np.uint8)


def composite_on_white(rgba):
    """An `(H, W, 4)` `uint8` image composited onto white, as a viewer shows it, in integer arithmetic
    (`round((rgb * a + 255 * (255 - a)) / 255)`): a fraction of the memory of a float conversion."""
    out = np.empty(rgba.shape[:2] + (3,), np.uint8)
    for top in range(0, rgba.shape[0], 512):  # in bands of rows: the uint16 temporaries stay small
        band = rgba[top : top + 512]
        alpha = band[..., 3:4].astype(np.uint16)
        out[top : top + 512] = (band[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha) + 127) // 255
    return out


def _reason(error):
    if isinstance(error, FileNotFoundError):
        return "missing file (a broken link?)"
    text = str(error).strip() or type(error).__name__
    if "cannot identify image file" in text:
        return "not an image (unrecognised file contents)"
    if "truncated" in text.lower():
        return "truncated image data"
    return text.splitlines()[0]
