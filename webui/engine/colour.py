"""Colour correction: match a result's colours to a reference picture (the init image).

Repeated img2img passes (loopback) drift in colour, usually towards over-saturated or tinted
pictures; matching each result's histograms to the init image's, channel by channel in LAB,
pulls lightness and both colour axes back while keeping what the pass drew. LAB rather than RGB
because matching R, G and B separately shifts hues; in LAB lightness and colour move apart.

The colour maths is scikit-image's (`skimage.color`, `skimage.exposure.match_histograms`); this
module only converts between PIL and arrays. No torch here.
"""

from __future__ import annotations

import warnings
from typing import Iterable

import numpy as np
from PIL import Image


def match_colours(image: Image.Image, reference: Image.Image) -> Image.Image:
    """`image` (any mode; RGB out) with its LAB histograms matched to `reference`'s.

    The reference is resized to the image's size when they differ, so the histograms count
    pixels of the same picture area. Alpha, if any, is dropped (results are RGB).
    """
    from skimage import color, exposure  # about 0.1 s of imports: paid only when used

    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    ref = reference.convert("RGB")
    if ref.size != image.size:
        ref = ref.resize(image.size, Image.Resampling.LANCZOS)
    ref_rgb = np.asarray(ref, dtype=np.float64) / 255.0
    matched = exposure.match_histograms(color.rgb2lab(rgb), color.rgb2lab(ref_rgb),
                                        channel_axis=-1)
    with warnings.catch_warnings():
        # Matched channels can combine into LAB values outside sRGB; the library clips them
        # and warns, and clipping is what is wanted here.
        warnings.simplefilter("ignore", UserWarning)
        out = np.clip(color.lab2rgb(matched), 0.0, 1.0)
    return Image.fromarray(np.round(out * 255.0).astype(np.uint8), "RGB")


def match_all(images: Iterable[Image.Image], reference: Image.Image) -> list[Image.Image]:
    """Each of `images` colour-matched to `reference` (see match_colours)."""
    return [match_colours(image, reference) for image in images]
