"""Writing files safely: atomic writes and per-user folder names.

A top-level module, not part of the engine, because every layer writes files: the engine its
pictures, the preset store its presets, the CLI its outputs.

Files are written under a temporary name, synced, and renamed or linked into place, then the
folder is synced, so a crash never leaves a half-written file under a real name (nor loses a
finished one's name) and two writers never overwrite each other's file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path


def safe_user_dir_name(user: str) -> str:
    """A folder name per user (for presets and results): readable slug plus a hash, because
    slugs alone would merge users whose names differ only in case or punctuation (and
    case-insensitive disks would too)."""
    if not isinstance(user, str) or not user.strip():
        raise ValueError("user must be a non-empty name")
    stem = re.sub(r"[^a-z0-9]+", "-", user.casefold()).strip("-")[:40] or "user"
    return f"{stem}-{hashlib.sha256(user.encode()).hexdigest()[:12]}"


def _write_bytes(handle, data: bytes) -> None:
    handle.write(data)


@contextlib.contextmanager
def staged(folder: Path, data: bytes, suffix: str = ".tmp"):
    """A hidden, fully written and synced temp file in `folder` (same disk, so a rename or link
    into place is atomic); removed afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            _write_bytes(handle, data)
            handle.flush()
            os.fsync(handle.fileno())
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)
    # Reached only when the caller put the file in place: the folder's new entry is synced
    # too, or a power cut could lose the name while the data survived.
    sync_folder(folder)


def sync_folder(folder: Path) -> None:
    """fsync a folder (its entries); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself is still atomic
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, overwrite: bool) -> None:
    """Write `path` so that readers see the old file or the whole new one, never a part.

    Without `overwrite`, a hard link claims the name: it fails (FileExistsError) if another
    writer got there first, where a check-then-rename would let two simultaneous saves both
    "succeed".
    """
    path = Path(path)
    with staged(path.parent, data) as tmp:
        if overwrite:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError:
            # Disks without hard links: the best remaining guard is a check right before.
            if path.exists():
                raise FileExistsError(path) from None
            os.replace(tmp, path)
