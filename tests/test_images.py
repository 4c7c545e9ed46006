"""Input images: every mode becomes RGB, EXIF orientation, unreadable files give a clear InputError,
the output size rules and the three resize modes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from webui import images as imaging
from webui.errors import InputError

from tests.support.testing import png_header

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def close(pixel, colour, tolerance: int = 12) -> bool:
    return all(abs(int(a) - int(b)) <= tolerance for a, b in zip(pixel, colour))


# -- modes ---------------------------------------------------------------------------------------
def _sixteen_bit() -> Image.Image:
    ramp = np.linspace(0, 65535, 40 * 24).reshape(24, 40).astype(np.uint16)
    image = Image.fromarray(ramp)
    assert image.mode.startswith("I;16")
    return image


def _palette_with_transparency() -> Image.Image:
    image = Image.new("P", (40, 24), 1)
    image.putpalette(list(RED) + list(GREEN) + [0] * 762)
    image.paste(0, (0, 0, 20, 24))  # left half: palette index 0, declared transparent
    image.info["transparency"] = 0
    return image


MODES = {
    "RGB": lambda: Image.new("RGB", (40, 24), RED),
    "RGBA": lambda: Image.new("RGBA", (40, 24), (255, 0, 0, 0)),
    "P": _palette_with_transparency,
    "L": lambda: Image.new("L", (40, 24), 128),
    "LA": lambda: Image.new("LA", (40, 24), (0, 0)),
    "CMYK": lambda: Image.new("CMYK", (40, 24), (0, 255, 255, 0)),
    "I;16": _sixteen_bit,
    "1": lambda: Image.new("1", (40, 24), 1),
    "I": lambda: Image.new("I", (40, 24), 40000),
    "F": lambda: Image.new("F", (40, 24), 100.0),
}


# What a file can hold: PNG for most modes, TIFF for CMYK and 32-bit integer/float grey.
FILE_FORMAT = {"CMYK": "TIFF", "I": "TIFF", "F": "TIFF"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("via", ["pil", "file-bytes"])
def test_every_mode_becomes_rgb_of_the_same_size(mode, via):
    image = MODES[mode]()
    source = image if via == "pil" else encode(image, FILE_FORMAT.get(mode, "PNG"))
    out = imaging.load_image(source)
    assert out.mode == "RGB"
    assert out.size == (40, 24)


def test_rgba_is_composited_over_the_background():
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    image.putpixel((0, 0), (0, 255, 0, 255))
    out = imaging.load_image(encode(image), background=BLUE)
    assert out.getpixel((5, 5)) == BLUE  # fully transparent: the background shows
    assert out.getpixel((0, 0)) == GREEN  # opaque pixel kept
    assert imaging.load_image(image).getpixel((5, 5)) == WHITE  # default background is white


def test_half_transparent_pixels_blend():
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    out = imaging.load_image(image, background=WHITE)
    assert all(120 <= c <= 135 for c in out.getpixel((1, 1)))


def test_palette_transparency_shows_the_background():
    out = imaging.load_image(encode(_palette_with_transparency()), background=BLUE)
    assert out.getpixel((5, 5)) == BLUE  # transparent index
    assert out.getpixel((35, 5)) == GREEN  # opaque index


def test_la_and_grey_and_cmyk_colours():
    assert imaging.load_image(Image.new("LA", (4, 4), (0, 0)), background=RED).getpixel((0, 0)) == RED
    assert imaging.load_image(Image.new("LA", (4, 4), (50, 255))).getpixel((0, 0)) == (50, 50, 50)
    assert imaging.load_image(Image.new("L", (4, 4), 77)).getpixel((2, 2)) == (77, 77, 77)
    assert imaging.load_image(Image.new("1", (4, 4), 1)).getpixel((2, 2)) == WHITE
    cyan = imaging.load_image(Image.new("CMYK", (4, 4), (255, 0, 0, 0))).getpixel((1, 1))
    assert close(cyan, (0, 255, 255), 2)


def test_sixteen_bit_is_scaled_not_clipped():
    out = np.asarray(imaging.load_image(encode(_sixteen_bit())))
    # A full-range ramp stays a ramp: dark at the start, white at the end, and not all white.
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[-1, -1].tolist() == [255, 255, 255]
    assert 100 < out.mean() < 155
    assert len(np.unique(out[..., 0])) > 200


# -- EXIF orientation ----------------------------------------------------------------------------
def _oriented_jpeg(orientation: int) -> bytes:
    # 48x32, blue with a red block in the top-left corner (as stored, before rotation).
    image = Image.new("RGB", (48, 32), BLUE)
    image.paste(RED, (0, 0, 16, 16))
    exif = image.getexif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("orientation,red_corner", [
    (1, "top-left"),
    (6, "top-right"),  # rotate 90 degrees clockwise to display
    (8, "bottom-left"),  # rotate 90 degrees counter-clockwise to display
    (3, "bottom-right"),  # upside down
])
def test_exif_orientation_is_applied(orientation, red_corner, tmp_path):
    path = tmp_path / f"o{orientation}.jpg"
    path.write_bytes(_oriented_jpeg(orientation))
    out = imaging.load_image(path)
    assert out.size == ((32, 48) if orientation in (6, 8) else (48, 32))
    w, h = out.size
    corners = {"top-left": (4, 4), "top-right": (w - 5, 4), "bottom-left": (4, h - 5),
               "bottom-right": (w - 5, h - 5)}
    for name, xy in corners.items():
        expected = RED if name == red_corner else BLUE
        assert close(out.getpixel(xy), expected, 30), (orientation, name, out.getpixel(xy))


def test_exif_orientation_applied_to_an_opened_pil_image():
    opened = Image.open(io.BytesIO(_oriented_jpeg(6)))
    assert opened.size == (48, 32)
    assert imaging.load_image(opened).size == (32, 48)


# -- unreadable input ----------------------------------------------------------------------------
def test_truncated_png(make_image):
    data = encode(make_image(64, 64))
    with pytest.raises(InputError) as info:
        imaging.load_image(data[: len(data) // 2])
    assert info.value.field == "init_image"
    assert "damaged or truncated" in str(info.value)


def test_truncated_jpeg(make_image, tmp_path):
    data = encode(make_image(64, 64), "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as info:
        imaging.load_image(path, field="reference")
    assert info.value.field == "reference"
    assert "damaged or truncated" in str(info.value)
    assert str(info.value).startswith("reference:")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(InputError) as info:
        imaging.load_image(path)
    assert "empty" in str(info.value)
    with pytest.raises(InputError, match="empty"):
        imaging.load_image(b"")


def test_text_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n")
    with pytest.raises(InputError) as info:
        imaging.load_image(path)
    assert "not an image file" in str(info.value)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(InputError) as info:
        imaging.load_image(missing)
    assert "no such file" in str(info.value)
    assert str(missing) in str(info.value)
    with pytest.raises(InputError, match="no such file"):
        imaging.load_image(str(missing))


def test_huge_image_is_too_large_not_a_non_image():
    with pytest.raises(InputError) as info:
        imaging.load_image(png_header(15_000, 15_000))
    assert "too large" in str(info.value)
    assert "not an image" not in str(info.value)


def test_own_decode_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's own guard switched off
    with pytest.raises(InputError) as info:
        imaging.load_image(png_header(25_000, 20_000))
    assert "25000x20000 is too large" in str(info.value)


def test_no_image():
    with pytest.raises(InputError, match="no image"):
        imaging.load_image(None)


def test_file_object_and_bytes_work(make_image):
    data = encode(make_image(40, 24))
    assert imaging.load_image(io.BytesIO(data)).size == (40, 24)
    assert imaging.load_image(bytearray(data)).tobytes() == make_image(40, 24).tobytes()


# -- output size ---------------------------------------------------------------------------------
def test_target_size_explicit():
    init = Image.new("RGB", (100, 50))
    assert imaging.target_size(init, 64, 96) == (64, 96)
    assert imaging.target_size(init, 70, 100) == (64, 96)  # multiples of 8


def test_target_size_one_side_keeps_aspect():
    init = Image.new("RGB", (200, 100))
    assert imaging.target_size(init, 128, None) == (128, 64)
    assert imaging.target_size(init, None, 64) == (128, 64)
    tall = Image.new("RGB", (300, 600))
    assert imaging.target_size(tall, 96, None) == (96, 192)


def test_target_size_none_keeps_init_size():
    assert imaging.target_size(Image.new("RGB", (96, 64)), None, None) == (96, 64)
    assert imaging.target_size(Image.new("RGB", (100, 70)), None, None) == (96, 64)


@pytest.mark.parametrize("size", [(200, 200), (300, 150), (1000, 999), (150, 300), (800, 100)])
@pytest.mark.parametrize("max_pixels", [5000, 96 * 96 - 1, 64 * 64 * 3 - 5])
def test_target_size_scales_down_inherited_sizes(size, max_pixels):
    init = Image.new("1", size)
    w, h = imaging.target_size(init, None, None, max_pixels=max_pixels)
    assert w % 8 == 0 and h % 8 == 0
    assert w * h <= max_pixels
    if min(w, h) > imaging.MIN_SIDE:
        # Scaled, not cropped to a square: the aspect ratio survives (within the 8 px grid).
        assert abs(w / h - size[0] / size[1]) <= 8 / min(w, h) * (size[0] / size[1]) + 0.01
    else:
        # A picture too long to keep its aspect in so few pixels keeps the smallest side instead.
        assert min(w, h) == imaging.MIN_SIDE and (w >= h) == (size[0] >= size[1])
    # and not needlessly small: one more grid step on both sides would not fit.
    assert (w + 8) * (h + 8) > max_pixels


def test_target_size_one_side_over_the_limit_is_scaled_down():
    init = Image.new("1", (400, 200))
    assert imaging.target_size(init, 400, None, max_pixels=128 * 64) == (128, 64)
    w, h = imaging.target_size(init, None, 300, max_pixels=10_000)
    assert w * h <= 10_000 and abs(w / h - 2) < 0.2


def test_target_size_explicit_over_the_limit_is_rejected():
    with pytest.raises(InputError) as info:
        imaging.target_size(Image.new("RGB", (8, 8)), 128, 128, max_pixels=10_000)
    assert "128x128" in str(info.value) and "10,000" in str(info.value)


def test_default_limit_keeps_4096():
    huge = Image.new("1", (8741, 8741))
    assert imaging.target_size(huge, None, None) == (4096, 4096)
    assert imaging.target_size(Image.new("1", (5000, 5000)), None, None) == (4096, 4096)


# -- resize modes --------------------------------------------------------------------------------
def _stripes() -> Image.Image:
    """192x64: red | green | blue thirds."""
    image = Image.new("RGB", (192, 64), GREEN)
    image.paste(RED, (0, 0, 64, 64))
    image.paste(BLUE, (128, 0, 192, 64))
    return image


@pytest.mark.parametrize("mode", ["just resize", "crop and resize", "resize and fill"])
@pytest.mark.parametrize("size", [(64, 64), (96, 32), (32, 96), (192, 64)])
def test_fit_gives_the_requested_size(mode, size):
    out = imaging.fit(_stripes(), *size, mode=mode)
    assert out.size == size
    assert out.mode == "RGB"


def test_fit_same_size_is_unchanged():
    image = _stripes()
    for mode in ("just resize", "crop and resize", "resize and fill"):
        assert imaging.fit(image, 192, 64, mode).tobytes() == image.tobytes()


def test_just_resize_stretches_everything_in():
    out = imaging.fit(_stripes(), 48, 48, "just resize")
    assert close(out.getpixel((4, 24)), RED)
    assert close(out.getpixel((24, 24)), GREEN)
    assert close(out.getpixel((43, 24)), BLUE)


def test_crop_and_resize_keeps_the_centre():
    out = imaging.fit(_stripes(), 32, 32, "crop and resize")
    pixels = np.asarray(out).reshape(-1, 3).astype(int)
    # The middle third only: green everywhere (allowing resampling ringing at the edges).
    assert close(out.getpixel((16, 16)), GREEN, 2)
    assert (np.abs(pixels - GREEN).max(axis=1) <= 40).mean() > 0.9
    assert pixels[:, 0].max() < 80 and pixels[:, 2].max() < 80  # no red or blue stripe survived


def test_resize_and_fill_keeps_the_whole_picture():
    image = Image.new("RGB", (64, 32), RED)
    image.paste(BLUE, (32, 0, 64, 32))
    out = imaging.fit(image, 64, 64, "resize and fill")
    # The whole picture sits in the middle band, unchanged ...
    assert out.crop((0, 16, 64, 48)).tobytes() == image.tobytes()
    # ... and the borders continue its edges instead of a flat background frame.
    for y in (0, 8, 56, 63):
        assert close(out.getpixel((4, y)), RED, 2), y
        assert close(out.getpixel((60, y)), BLUE, 2), y


def test_resize_and_fill_side_borders():
    out = imaging.fit(_stripes(), 384, 64, "resize and fill")
    assert out.crop((96, 0, 288, 64)).tobytes() == _stripes().tobytes()
    assert close(out.getpixel((10, 32)), RED, 2)
    assert close(out.getpixel((380, 32)), BLUE, 2)


def test_fit_unknown_mode():
    with pytest.raises(InputError) as info:
        imaging.fit(_stripes(), 64, 64, "stretch")
    assert info.value.field == "resize_mode"
    assert "crop and resize" in str(info.value)


@pytest.mark.parametrize("size", [(1, 1), (3, 2), (10, 40), (63, 63)])
def test_target_size_inherited_from_a_tiny_picture_is_at_least_64(size):
    # A 1x1 upload gave an 8x8 job, below the smallest size the settings accept (64).
    w, h = imaging.target_size(Image.new("1", size), None, None)
    assert min(w, h) == imaging.MIN_SIDE and w % 8 == 0 and h % 8 == 0
    assert abs(w / h - size[0] / size[1]) <= 8 / min(w, h) * max(1, size[0] / size[1]) + 0.01


def test_target_size_one_side_given_keeps_the_other_at_least_64():
    assert imaging.target_size(Image.new("1", (400, 10)), 400, None) == (400, imaging.MIN_SIDE)
    assert imaging.target_size(Image.new("1", (10, 400)), None, 400) == (imaging.MIN_SIDE, 400)


@pytest.mark.parametrize("size", [(4000, 1), (1, 4000), (20000, 3)])
def test_target_size_of_a_sliver_stays_within_both_sides_and_the_limit(size):
    w, h = imaging.target_size(Image.new("1", size), None, None, max_pixels=512 * 512)
    assert imaging.MIN_SIDE <= min(w, h) and max(w, h) <= imaging.MAX_SIDE
    assert w * h <= 512 * 512
    assert (w > h) == (size[0] > size[1])



@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_an_animated_picture_gives_its_first_frame_and_says_so(fmt):
    frames = [Image.new("RGB", (64, 48), colour) for colour in ((200, 0, 0), (0, 200, 0),
                                                                 (0, 0, 200))]
    data = io.BytesIO()
    frames[0].save(data, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    image = imaging.load_image(data.getvalue())
    assert image.size == (64, 48)
    r, g, b = image.getpixel((10, 10))
    assert r > 150 and g < 60 and b < 60  # the first frame's red
    assert imaging.frames_notice(image) == ("init image: animated (3 frames), only its first "
                                            "frame is used")
    # The note survives what the engine does next; a still picture has none.
    assert imaging.frames_notice(imaging.load_image(image)) != ""
    assert imaging.frames_notice(imaging.load_image(encode(frames[0]))) == ""
