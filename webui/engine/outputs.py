"""Output files: outputs/img2img/YYYY-MM-DD/NNNNN-SEED.png with the infotext inside (with a
login, outputs/img2img/<user folder>/YYYY-MM-DD/...).

Files are written under a temporary name and linked into place (webui.files), so a crash never
leaves a half-written PNG under a real name and two writers never overwrite each other's file.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path

from PIL import Image, PngImagePlugin

from ..files import safe_user_dir_name, staged

_NUMBERED = re.compile(r"^(\d{5,})-")


def png_bytes(image: Image.Image, infotext: str) -> bytes:
    """A PNG of `image` with `infotext` in its `parameters` text chunk."""
    import io

    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=meta)
    return buffer.getvalue()


def read_infotext(image: Image.Image) -> str:
    """The `parameters` text of a PNG (or the EXIF comment other tools put in JPEG/WebP)."""
    text = image.info.get("parameters")
    if text:
        return text
    exif = image.getexif().get_ifd(0x8769).get(0x9286)
    if isinstance(exif, bytes):
        # UserComment: an 8-byte charset prefix, then UTF-16 or ASCII.
        body = exif[8:]
        codec = "utf-16-be" if exif.startswith(b"UNICODE") else "utf-8"
        return body.decode(codec, errors="ignore").strip("\x00")
    return exif or ""


def _next_number(folder: Path) -> int:
    highest = -1
    for entry in os.scandir(folder):
        match = _NUMBERED.match(entry.name)
        if match:
            highest = max(highest, int(match[1]))
    return highest + 1


def day_folder(outputs_dir: str | os.PathLike, today: _dt.date | None = None,
               kind: str = "img2img", owner: str | None = None) -> Path:
    """outputs/<kind>/YYYY-MM-DD, created if needed (kind: img2img, img2img-grids, ...).

    owner: the logged-in user a result belongs to; their files go to
    outputs/<kind>/<user folder>/YYYY-MM-DD, so results of different people never share a
    folder (None or empty: the shared folder, for a studio without a login).
    """
    folder = Path(outputs_dir) / kind
    if owner:
        folder /= safe_user_dir_name(owner)
    folder /= (today or _dt.date.today()).isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_numbered(data: bytes, folder: Path, seed: int, suffix: str = ".png") -> Path:
    """Write `data` as the next NNNNN-SEED file in `folder`, never replacing an existing file
    (a PNG, or latents with suffix '.safetensors')."""
    with staged(folder, data, suffix) as tmp:
        number = _next_number(folder)
        while True:
            target = folder / f"{number:05d}-{seed}{suffix}"
            try:
                os.link(tmp, target)
                return target
            except FileExistsError:
                number += 1


def save_all(items, outputs_dir, owner: str | None, write_latents) -> str:
    """Write each result (an ImageResult: a PNG with its infotext, or latents through
    `write_latents(item, folder)`) into the day folder, setting its path. A full disk or an
    outputs folder that cannot be written does not lose the job: the images come back unsaved
    and the returned notice says so (with the system's reason, never the server's paths);
    "" when all were saved."""
    try:
        folder = day_folder(outputs_dir, owner=owner)
        for item in items:
            if item.latents is not None:
                item.path = write_latents(item, folder)
            else:
                item.path = write_numbered(png_bytes(item.image, item.infotext), folder,
                                           item.seed)
    except OSError as exc:
        saved = sum(item.path is not None for item in items)
        return (f"not saved: the outputs folder could not be written ({exc.strerror or exc}); "
                f"{saved} of {len(items)} images were saved, the others are only shown here")
    return ""
