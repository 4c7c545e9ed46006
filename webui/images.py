"""Input images: decoding, EXIF orientation, mode conversion, sizing and resize modes.

Everything an upload can be (a path, bytes, a PIL image from the browser) becomes an RGB PIL
image here, or an InputError that says what is wrong with it.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError
from .params import RESIZE_MODES

# A 4096x4096 picture; anything larger is scaled down before it reaches the model.
DEFAULT_MAX_PIXELS = 4096 * 4096
# Refuse to even decode absurd files (decompression bombs) well before they fill the memory.
DECODE_LIMIT_PIXELS = 20_000 * 20_000
DEFAULT_BACKGROUND = (255, 255, 255)
# Where load_image notes, in the picture's info, that the file was animated (its frame count):
# the job uses the first frame and says so (frames_notice).
FRAMES_INFO = "img2img-frames"
# The sides a size may have, as the width and height settings allow: an inherited size (from a
# 1x1 upload, or the other side of a sliver) is kept within them too.
MIN_SIDE, MAX_SIDE = 64, 4096


def load_image(source, field: str = "init_image", background=DEFAULT_BACKGROUND,
               keep_alpha: bool = False) -> Image.Image:
    """An RGB image from a path, bytes, file object or PIL image; EXIF rotation applied.

    Transparent images are composited over `background` (kept as RGBA with `keep_alpha`, for
    masks painted on a transparent layer); palette, grey, CMYK and 16-bit images are converted. Raises InputError naming `field` for a missing, empty, truncated or non-image file.
    """
    if source is None:
        raise InputError(field, f"{field}: no image given")
    if isinstance(source, Image.Image):
        image = source
    else:
        image = open_image(source, field)
    frames = getattr(image, "n_frames", 1)
    try:
        image = ImageOps.exif_transpose(image)
        if keep_alpha and ("A" in image.mode or "transparency" in image.info):
            image = image.convert("RGBA")
        else:
            image = _to_rgb(image, background)
    except (OSError, ValueError) as exc:
        raise InputError(field, f"{field}: the image could not be read ({exc})") from None
    if isinstance(frames, int) and frames > 1:
        image.info[FRAMES_INFO] = frames
    return image


def frames_notice(image: Image.Image, what: str = "init image") -> str:
    """'init image: animated (12 frames), only its first frame is used' for a picture
    load_image read from an animated file; "" otherwise."""
    frames = image.info.get(FRAMES_INFO)
    return f"{what}: animated ({frames} frames), only its first frame is used" if frames else ""


def open_image(source, field: str = "image", load: bool = True) -> Image.Image:
    """The picture in a path, bytes or file object as the file holds it (its mode and text
    chunks kept), refused with InputError naming `field` when it is missing, empty, not a
    picture, damaged or larger than DECODE_LIMIT_PIXELS. load=False reads the header and the
    chunks before the pixels only (PNG Info needs no pixels)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise InputError(field, f"{field}: no such file: {path}")
        data = path.read_bytes()
    elif isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        data = source.read()
    if not data:
        raise InputError(field, f"{field}: the file is empty")
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > DECODE_LIMIT_PIXELS:
            raise InputError(
                field, f"{field}: {image.width}x{image.height} is too large to open "
                f"(at most {DECODE_LIMIT_PIXELS:,} pixels)"
            )
        if load:
            image.load()
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow refuses before our own limit is reached: a huge picture, not a non-image.
        raise InputError(field, f"{field}: the image is too large to open ({exc})") from None
    except UnidentifiedImageError:
        raise InputError(field, f"{field}: not an image file (PNG, JPEG, WebP, ...)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(field, f"{field}: the image is damaged or truncated ({exc})") from None
    return image


def _to_rgb(image: Image.Image, background) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grey: scale to 8 bits instead of clipping everything above 255 to white.
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray((np.clip(array / top, 0, 1) * 255).round().astype("uint8"), "L")
    if image.mode == "F":
        image = image.convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


def snap8(value: int) -> int:
    """The largest multiple of 8 not above `value` (at least 8)."""
    return max(8, int(value) // 8 * 8)


def target_size(image: Image.Image, width: int | None, height: int | None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """The output size: explicit sizes win; a missing one follows the init image's aspect ratio.

    Sizes are multiples of 8 (the VAE's factor) and at most `max_pixels` together; an explicit
    size over the limit is an error, an inherited one is scaled down.
    """
    if width and height:
        w, h = width, height
        if w * h > max_pixels:
            raise InputError(
                "width", f"width x height: {w}x{h} is more than the {max_pixels:,} pixels allowed"
            )
        return snap8(w), snap8(h)
    if width:
        w, h = width, width * image.height / image.width
    elif height:
        w, h = height * image.width / image.height, height
    else:
        w, h = image.width, image.height
    if min(w, h) < MIN_SIDE:
        # A tiny picture is scaled up (aspect kept) until its shorter side is MIN_SIDE.
        scale = MIN_SIDE / min(w, h)
        w, h = (w * scale, h * scale) if not (width or height) else (
            (w, max(h, MIN_SIDE)) if width else (max(w, MIN_SIDE), h))
    if w * h > max_pixels:
        scale = math.sqrt(max_pixels / (w * h))
        w, h = w * scale, h * scale
    # A sliver cannot keep its aspect within the sides: it is clamped to them.
    w, h = (min(MAX_SIDE, max(MIN_SIDE, snap8(round(side)))) for side in (w, h))
    # Rounding up can land the product just above the limit: take 8 px off the longer side.
    while w * h > max_pixels and max(w, h) > MIN_SIDE:
        w, h = (w - 8, h) if w >= h else (w, h - 8)
    return w, h


def fit(image: Image.Image, width: int, height: int, mode: str = "just resize",
        background=DEFAULT_BACKGROUND) -> Image.Image:
    """The init image at the output size, by one of RESIZE_MODES.

    just resize: stretch; crop and resize: fill the frame and crop the overflow (centred);
    resize and fill: fit inside and fill the borders by stretching the edge pixels.
    """
    if mode not in RESIZE_MODES:
        raise InputError("resize_mode", f"resize_mode must be one of: {', '.join(RESIZE_MODES)}")
    if image.size == (width, height):
        return image
    if mode == "just resize":
        return image.resize((width, height), Image.LANCZOS)
    if mode == "crop and resize":
        return ImageOps.fit(image, (width, height), Image.LANCZOS)
    inner = ImageOps.contain(image, (width, height), Image.LANCZOS)
    canvas = Image.new("RGB", (width, height), background)
    left, top = (width - inner.width) // 2, (height - inner.height) // 2
    canvas.paste(inner, (left, top))
    # Smear the edges outwards: a flat colour band would be read by the model as a frame.
    right, bottom = width - left - inner.width, height - top - inner.height
    strips = [
        ((0, 0, 1, inner.height), (left, inner.height), (0, top)),
        ((inner.width - 1, 0, inner.width, inner.height), (right, inner.height), (left + inner.width, top)),
        ((0, 0, inner.width, 1), (inner.width, top), (left, 0)),
        ((0, inner.height - 1, inner.width, inner.height), (inner.width, bottom), (left, top + inner.height)),
    ]
    for box, size, where in strips:
        if size[0] > 0 and size[1] > 0:
            canvas.paste(inner.crop(box).resize(size), where)
    return canvas
