"""What every adapter module shares about the inputs a job hands it: `AdapterError` (an input
that cannot be used, naming its field) and the small readers of given pictures and files.

Torch-free on import: the studio catches AdapterError without loading torch.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError


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
