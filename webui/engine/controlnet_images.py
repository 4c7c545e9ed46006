"""Control images for ControlNet: canny edges made without any model weights, and the dispatch
to the depth and pose detectors (detectors.py), which need the artist's models.

`canny(image, low, high)` is the classic Canny edge detector in NumPy/SciPy: Sobel gradients,
non-maximum suppression (edges one pixel thin), then hysteresis (a weak edge survives only where it
connects to a strong one). Thresholds are on the Sobel magnitude of the 0-255 grey image, so the
usual 100 / 200 pair behaves about as artists expect from other Canny tools; lower them for more
edges. The gradient magnitude is the Euclidean one (sqrt(gx^2 + gy^2)), which is slightly smaller
than the |gx| + |gy| some tools use, so an edge sits a little lower against the same threshold.
"""

from __future__ import annotations

import numpy as np

CANNY_LOW = 100
CANNY_HIGH = 200


def _grey(image) -> np.ndarray:
    from PIL import Image

    if isinstance(image, np.ndarray):
        array = image.astype(np.float32)
        if array.ndim == 3:
            array = array[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return array
    if not isinstance(image, Image.Image):
        raise TypeError("the control image must be a PIL image or a NumPy array")
    if image.mode in ("RGBA", "LA", "P"):
        # Transparent pixels count as black, as they show in a mask editor.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("L"), dtype=np.float32)


def canny_edges(image, low: float = CANNY_LOW, high: float = CANNY_HIGH,
                sigma: float = 0.0) -> np.ndarray:
    """A boolean edge map (H, W). sigma > 0 blurs first, which drops edges from fine noise."""
    from scipy import ndimage

    if low < 0 or high < 0:
        raise ValueError("Canny thresholds must be 0 or more")
    if low > high:
        raise ValueError(f"the low Canny threshold ({low:g}) must not exceed the high one ({high:g})")
    grey = _grey(image)
    if sigma > 0:
        grey = ndimage.gaussian_filter(grey, sigma)
    # Sobel along axis 1 is the horizontal derivative; 'nearest' keeps the frame from being an edge.
    gx = ndimage.sobel(grey, axis=1, mode="nearest")
    gy = ndimage.sobel(grey, axis=0, mode="nearest")
    magnitude = np.hypot(gx, gy)

    # Non-maximum suppression: keep a pixel only if it is the peak across the edge, i.e. along the
    # gradient direction, quantised to 0, 45, 90 or 135 degrees.
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    padded = np.pad(magnitude, 1, mode="constant")
    h, w = magnitude.shape

    def shifted(dy: int, dx: int) -> np.ndarray:
        return padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    horizontal = (angle < 22.5) | (angle >= 157.5)
    diagonal = (angle >= 22.5) & (angle < 67.5)
    vertical = (angle >= 67.5) & (angle < 112.5)
    anti = (angle >= 112.5) & (angle < 157.5)
    # Ties (a two-pixel-wide ramp) keep the first pixel only, so edges stay one pixel thin.
    peak = np.zeros_like(magnitude, dtype=bool)
    peak |= horizontal & (magnitude >= shifted(0, -1)) & (magnitude > shifted(0, 1))
    peak |= vertical & (magnitude >= shifted(-1, 0)) & (magnitude > shifted(1, 0))
    # Image rows grow downwards, so a 45-degree gradient points to (+1 row, +1 column).
    peak |= diagonal & (magnitude >= shifted(-1, -1)) & (magnitude > shifted(1, 1))
    peak |= anti & (magnitude >= shifted(-1, 1)) & (magnitude > shifted(1, -1))
    thin = np.where(peak, magnitude, 0.0)

    strong = thin >= high
    weak = thin >= max(low, 1e-6)
    labels, count = ndimage.label(weak, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return np.zeros_like(weak)
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(labels[strong])] = True
    keep[0] = False
    return keep[labels]


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
