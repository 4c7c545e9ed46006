"""What every adapter module shares about the inputs a job hands it: `AdapterError` (an input
that cannot be used, naming its field), the small readers of given pictures and files, an
uploaded mask as the engine sees it (`mask_to_l`) and the LoRA tags of a prompt
(`parse_prompt_loras`).

Torch-free on import: the front doors catch AdapterError, read masks and check prompt tags
through the engine's public face without loading torch, the way the engine itself reads them.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError
from ..params import LoraWeight, field_range

# LoRA weights, from the picker or from a <lora:name:weight> tag: the one range params.py sets.
LORA_MIN, LORA_MAX = field_range("weight", LoraWeight)
# The LoRA rank reserved in the compiled UNet's hot slot (lora.py): the default, and the most
# a --lora-rank may reserve (every hot LoRA job costs a LoRA of the reserved rank).
LORA_HOT_RANK, LORA_HOT_RANK_MAX = 64, 1024
LORA_RANK_HELP = (f"LoRA rank reserved for hotswapping one LoRA at a time into the compiled UNet "
                  f"(0 to {LORA_HOT_RANK_MAX}; 0: LoRA jobs run eager; default {LORA_HOT_RANK})")


def check_lora_rank(value) -> int:
    """A reserved LoRA rank as given on a command line, checked (ValueError says the range)."""
    try:
        rank = int(str(value).strip())
    except ValueError:
        rank = -1
    if not 0 <= rank <= LORA_HOT_RANK_MAX:
        raise ValueError(f"must be a whole number from 0 to {LORA_HOT_RANK_MAX} (got {value!r})")
    return rank


def lora_rank_flag(text: str) -> int:
    """check_lora_rank as an argparse type (argparse names the flag in its error)."""
    import argparse

    try:
        return check_lora_rank(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
# `[^<>]*`: a tag never holds another '<', so a prompt of many unclosed tags is scanned once
# (with `[^>]*` every '<lora:' rescanned the rest of the prompt).
_LORA_TAG = re.compile(r"<\s*lora\s*:([^<>]*)>", re.IGNORECASE)


class AdapterError(InputError):
    """An adapter could not be used; `field` names the input ('lora', 'ip_adapter', 'mask', ...).

    An input error, not a model error: the LoRA name, file, mask or setting the artist gave is
    what has to change.
    """

    def __init__(self, message: str, field: str = "adapters"):
        super().__init__(field, message)


def short(exc: BaseException) -> str:
    """The first line of a library error, cut to fit into a sentence for the artist."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def stamp(path: Path) -> tuple[int, int]:
    """(mtime, size): a file replaced on disk under the same name is read again."""
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def as_rgb(image, field: str):
    """A given picture (PIL, array or file path) as RGB; AdapterError naming `field` otherwise."""
    import numpy as np
    from PIL import Image

    if isinstance(image, (str, Path)):
        image = Image.open(image)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8))
    if not isinstance(image, Image.Image):
        raise AdapterError(f"the {field.replace('_', ' ')} image must be a picture", field)
    return image.convert("RGB")


# -- masks -----------------------------------------------------------------------------------


def mask_to_l(mask):
    """A mask as a PIL 'L' image, white = repaint.

    RGBA / LA masks with any transparency use their alpha (a brush layer: painted = repaint,
    whatever its colour); opaque ones use their brightness. Arrays: bool or 0-1 floats or 0-255.
    """
    import numpy as np
    from PIL import Image

    if isinstance(mask, (str, Path)):
        mask = Image.open(mask)
    if isinstance(mask, np.ndarray):
        array = mask
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        elif array.dtype.kind == "f":
            array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
        if array.ndim == 3:
            array = array[..., 0]
        mask = Image.fromarray(array.astype(np.uint8), "L")
    if not isinstance(mask, Image.Image):
        raise AdapterError("the mask must be an image (white = repaint)", "mask")
    if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        alpha = mask.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha
    return mask.convert("L")


# -- prompt syntax ---------------------------------------------------------------------------


def parse_prompt_loras(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """Split `<lora:name:weight>` tags out of a prompt: (clean prompt, [(name, weight), ...]).

    The weight is optional (default 1.0) and may be negative; spaces around the parts are
    ignored. A name given twice keeps its first place and its last weight. The tags are removed
    from the prompt so the text encoder never sees them.
    """
    found: dict[str, float] = {}
    for match in _LORA_TAG.finditer(prompt):
        name, sep, weight_text = match.group(1).partition(":")
        name = name.strip()
        if not name:
            raise AdapterError(f"{match.group(0)!r} names no LoRA: write <lora:name> or "
                               "<lora:name:0.8>", "prompt")
        weight = 1.0
        if sep and weight_text.strip():
            if not _is_number(weight_text):
                raise AdapterError(f"{match.group(0)!r}: the weight must be a number, as in "
                                   f"<lora:{name}:0.8>", "prompt")
            weight = float(weight_text)
            if not LORA_MIN <= weight <= LORA_MAX:
                raise AdapterError(f"{match.group(0)!r}: the weight must be from {LORA_MIN:g} to "
                                   f"{LORA_MAX:g}, as in the LoRA picker", "prompt")
        found[name] = weight
    if not found:
        return prompt, []
    # Tidy the gaps the tags leave: runs of spaces, and commas left with nothing between them.
    # String operations rather than patterns like r"\s+,", which backtrack quadratically on
    # long runs of whitespace.
    clean = re.sub(r"[ \t]{2,}", " ", _LORA_TAG.sub(" ", prompt))
    parts = [part.strip() for part in clean.split(",")]
    return ", ".join(part for part in parts if part), list(found.items())


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip() != "" and text.strip().lower() not in ("nan", "inf", "-inf", "+inf")
