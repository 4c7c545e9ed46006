"""Control images for ControlNet: canny edges made without any model weights, and the dispatch
to the depth and pose detectors (detectors.py), which need the artist's models.

Canny is OpenCV's `cv2.Canny` with its defaults (3x3 Sobel aperture, the L1 gradient norm
|gx| + |gy|), run on the RGB picture as the ControlNet canny models' training data was made:
the L2 variant finds several times fewer edges at the same thresholds, so the models would see
sparser maps than they learned from. The usual 100 / 200 pair is the default; lower them for
more edges.
"""

from __future__ import annotations

import numpy as np

CANNY_LOW = 100
CANNY_HIGH = 200


def _rgb(image) -> np.ndarray:
    from PIL import Image

    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[2] == 4:
            array = array[..., :3]
        return np.ascontiguousarray(array.astype(np.uint8))
    if not isinstance(image, Image.Image):
        raise TypeError("the control image must be a PIL image or a NumPy array")
    if image.mode in ("RGBA", "LA", "P"):
        # Transparent pixels count as black, as they show in a mask editor.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def canny_edges(image, low: float = CANNY_LOW, high: float = CANNY_HIGH,
                sigma: float = 0.0) -> np.ndarray:
    """A boolean edge map (H, W): cv2.Canny with its defaults. sigma > 0 blurs first, which
    drops edges from fine noise."""
    import cv2

    if low < 0 or high < 0:
        raise ValueError("Canny thresholds must be 0 or more")
    if low > high:
        raise ValueError(f"the low Canny threshold ({low:g}) must not exceed the high one ({high:g})")
    pixels = _rgb(image)
    if sigma > 0:
        pixels = cv2.GaussianBlur(pixels, (0, 0), sigma)
    return cv2.Canny(pixels, float(low), float(high)) > 0


def canny(image, low: float = CANNY_LOW, high: float = CANNY_HIGH, sigma: float = 0.0):
    """The Canny edge map as an RGB PIL image: white edges on black, the ControlNet convention."""
    from PIL import Image

    edges = canny_edges(image, low, high, sigma).astype(np.uint8) * 255
    return Image.fromarray(np.stack([edges] * 3, axis=-1), "RGB")


PREPROCESSORS = ("none", "canny", "depth", "pose")
# Preprocessors that need a detector model (see detectors.py).
DETECTED = ("depth", "pose")


def control_image(image, preprocessor: str = "none", size: tuple[int, int] | None = None,
                  low: float = CANNY_LOW, high: float = CANNY_HIGH, detect=None):
    """The image a ControlNet sees: optionally preprocessed, RGB, resized to `size` (w, h).

    detect: for 'depth' and 'pose', a callable (kind, picture) -> map, the detector model that
    draws it (Detectors.control_map bound to a model folder).
    """
    from PIL import Image

    if preprocessor not in PREPROCESSORS:
        raise ValueError(f"unknown ControlNet preprocessor {preprocessor!r}; use one of "
                         + ", ".join(PREPROCESSORS))
    if preprocessor in DETECTED and detect is None:
        raise ValueError(f"preprocessor {preprocessor!r} needs a detector model")
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8))
    image = image.convert("RGB")
    if size is not None and image.size != tuple(size):
        # Resize before edge detection, so the edges are one pixel thin at the size the model sees.
        image = image.resize(tuple(size), Image.BICUBIC)
    if preprocessor == "canny":
        image = canny(image, low, high)
    elif preprocessor in DETECTED:
        image = detect(preprocessor, image)
    return image
