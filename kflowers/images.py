"""Reading one image file as an RGB `uint8` array, or saying why it can't be read.

Photo folders collected from the web hold CMYK JPEGs, palette and 16-bit PNGs,
rotated phone pictures, truncated downloads and HTML pages saved as `.jpg`.
`read_image` turns every readable one into the same thing, an `(H, W, 3)`
`uint8` array with EXIF orientation applied, and raises `UnreadableImage`
(with the reason) for the rest. Pillow decodes (it can apply EXIF orientation
and decode a JPEG at a reduced scale, which scikit-image's `imread` can't);
scikit-image converts grey, alpha and 16-bit pixels to 8-bit RGB.
"""

import os
import warnings

import numpy as np
from PIL import Image
from PIL import ImageOps
from skimage import color
from skimage import util

from kflowers.errors import KflowersError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# Pillow's own guard against decompression bombs warns at ~89 Mpx and raises at
# twice that; kflowers refuses anything above this size outright.
MAX_PIXELS = 64_000_000


class UnreadableImage(KflowersError, ValueError):
    """A file that is not a usable image; the message says why."""


def is_image_file(path):
    """Whether `path` has an image extension (case-insensitive).

    Example:
    >>> is_image_file("Rose_01.JPG")
    True
    """
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def read_image(path, min_size=None):
    """Decode `path` into an `(H, W, 3)` `uint8` RGB array.

    Args:
        path: the image file.
        min_size: optional int. When set, a JPEG may be decoded at a reduced
            scale (1/2, 1/4 or 1/8) as long as both sides stay at least
            `min_size` pixels: a 1000 px photo resized to 64 px then costs a
            fraction of a full decode.

    Raises:
        UnreadableImage: the file is empty, truncated, not an image, or too
            large; the message names the reason.

    Example:
    >>> pixels = read_image("flowers/rose/1.jpg", min_size=224)
    >>> pixels.shape[-1], pixels.dtype
    (3, dtype('uint8'))
    """
    try:
        if os.path.getsize(path) == 0:  # FileNotFoundError for a dangling link
            raise UnreadableImage("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise UnreadableImage(f"too large ({width}x{height} pixels; the limit is {MAX_PIXELS:,} pixels)")
                if min_size and image.format == "JPEG":
                    image.draft("RGB", (min_size, min_size))
                image.load()
                image = ImageOps.exif_transpose(image)
                return _to_rgb_uint8(image)
    except UnreadableImage:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UnreadableImage(_reason(error)) from None


def _to_rgb_uint8(image):
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode in ("CMYK", "YCbCr", "LAB", "HSV", "1"):
        image = image.convert("RGB")
    elif image.mode == "LA":
        image = image.convert("RGBA")
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8:
        # 16-bit and 32-bit integer images, floats in [0, 1].
        if pixels.dtype.kind in "iu" and pixels.max(initial=0) > 255:
            pixels = util.img_as_ubyte(pixels.astype(np.uint16))
        elif pixels.dtype.kind == "f":
            pixels = util.img_as_ubyte(np.clip(pixels, 0, 1))
        else:
            pixels = pixels.astype(np.uint8)
    if pixels.ndim == 2:
        pixels = color.gray2rgb(pixels)
    elif pixels.shape[-1] == 4:
        # Composite transparent pixels onto white, as a viewer shows them.
        pixels = util.img_as_ubyte(color.rgba2rgb(pixels))
    if pixels.ndim != 3 or pixels.shape[-1] != 3 or min(pixels.shape[:2]) < 1:
        raise UnreadableImage(f"unsupported pixel layout {pixels.shape}")
    return np.ascontiguousarray(pixels)


def _reason(error):
    if isinstance(error, FileNotFoundError):
        return "missing file (a broken link?)"
    text = str(error).strip() or type(error).__name__
    if "cannot identify image file" in text:
        return "not an image (unrecognised file contents)"
    if "truncated" in text.lower():
        return "truncated image data"
    return text.splitlines()[0]
