"""Pixels are scaled by their type's range, never by the image's own values: hand-computed decodes of
16-bit, integer, float and transparent images written to disk."""

import numpy as np
import pytest
from PIL import Image

from kflowers.data.images import read_image

pytestmark = pytest.mark.one_backend  # pixel conversion in numpy: the torch pass covers it


def grey16(path, value, pixel=None):
    pixels = np.full((8, 8), value, np.uint16)
    if pixel is not None:
        pixels[0, 0] = pixel
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize(
    "value, expected",
    [(0, 0), (255, 1), (256, 1), (32768, 128), (65535, 255)],  # round(v / 257)
)
def test_16_bit_greys_scale_by_the_16_bit_range(tmp_path, value, expected):
    pixels = read_image(grey16(tmp_path / "g.png", value))
    assert pixels.dtype == np.uint8 and pixels.shape == (8, 8, 3)
    assert (pixels == expected).all()


def test_two_16_bit_images_differing_in_one_pixel_decode_alike(tmp_path):
    # Scaled by each image's own maximum, these decoded to means 84.8 and 0.0.
    a = read_image(grey16(tmp_path / "a.png", 255, pixel=255))
    b = read_image(grey16(tmp_path / "b.png", 255, pixel=256))
    assert a.mean() == pytest.approx(1.0) and np.array_equal(a, b)


@pytest.mark.parametrize("value, expected", [(0.0, 0), (0.5, 128), (1.0, 255), (200.0, 255), (-3.0, 0)])
def test_float_images_are_taken_as_0_to_1(tmp_path, value, expected):
    Image.fromarray(np.full((8, 8), value, np.float32)).save(tmp_path / "f.tif")
    assert (read_image(tmp_path / "f.tif") == expected).all()


@pytest.mark.parametrize("value, expected", [(2**31 - 1, 255), (2**30, 128), (70000, 0), (-5, 0)])
def test_32_bit_integer_images_scale_by_their_range(tmp_path, value, expected):
    Image.fromarray(np.full((8, 8), value, np.int32)).save(tmp_path / "i.tif")
    assert (read_image(tmp_path / "i.tif") == expected).all()


def test_transparent_pixels_are_composited_onto_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128  # half-transparent red
    rgba[0, 0] = (10, 20, 30, 255)  # opaque
    rgba[0, 1] = (10, 20, 30, 0)  # fully transparent
    Image.fromarray(rgba).save(tmp_path / "a.png")
    pixels = read_image(tmp_path / "a.png")
    assert tuple(pixels[4, 4]) == (255, 127, 127)  # round((c * 128 + 255 * 127) / 255)
    assert tuple(pixels[0, 0]) == (10, 20, 30) and tuple(pixels[0, 1]) == (255, 255, 255)


def test_a_huge_image_wanted_small_is_shrunk_right_after_decoding(tmp_path):
    from kflowers.data.images import LARGE_PIXELS

    side = int(LARGE_PIXELS**0.5) + 100  # just above the budget
    rgba = np.zeros((side, side, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba).save(tmp_path / "huge.png")
    pixels = read_image(tmp_path / "huge.png", min_size=64)
    assert min(pixels.shape[:2]) >= 128 and min(pixels.shape[:2]) < 256  # reduced by a whole factor, not below 2x
    assert tuple(pixels[5, 5]) == (200, 0, 0)
    assert read_image(tmp_path / "huge.png").shape[:2] == (side, side)  # no min_size: the full image
