"""A bound on the disk that uploads take: Gradio keeps every upload in its cache folder.

Gradio's own cleaning (launch's delete_cache) removes files a day old, once an hour; until then
a visitor could upload a new picture every second and fill the disk. Gradio has no size bound,
so this small ASGI middleware in front of its upload route keeps the folder under `max_bytes`:
when an upload would cross it, the oldest files (older than `keep_seconds`, so a picture just
uploaded for a job waiting in the queue stays) are deleted first, and when that is not enough
the upload is refused with a clear answer until older files age out.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

UPLOAD_PATHS = ("/upload", "/gradio_api/upload")
DEFAULT_CACHE_MB = 4096
# Files younger than this are never deleted for room: they may be a queued job's input.
KEEP_SECONDS = 600.0


def _files(folder: Path) -> list[tuple[float, int, str]]:
    """(modification time, size, path) of every file under `folder`."""
    found = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            try:
                stat = os.stat(path, follow_symlinks=False)
            except OSError:
                continue  # removed meanwhile
            found.append((stat.st_mtime, stat.st_size, path))
    return found


class UploadSpace:
    """ASGI middleware (see the module docstring). folder: Gradio's upload folder (default:
    gradio.utils.get_upload_folder(), read at each upload as Gradio reads it)."""

    def __init__(self, app, max_bytes: int, folder: str | os.PathLike | None = None,
                 keep_seconds: float = KEEP_SECONDS, clock=time.time):
        self.app = app
        self.max_bytes = max_bytes
        self.folder = folder
        self.keep_seconds = keep_seconds
        self.clock = clock
        self._lock = threading.Lock()  # one upload at a time makes room

    def _folder(self) -> Path:
        if self.folder is not None:
            return Path(self.folder)
        from gradio.utils import get_upload_folder

        return Path(get_upload_folder())

    def make_room(self, incoming: int) -> bool:
        """Delete the oldest files until `incoming` more bytes fit; False when they cannot."""
        with self._lock:
            files = _files(self._folder())
            used = sum(size for _, size, _ in files)
            if used + incoming <= self.max_bytes:
                return True
            cutoff = self.clock() - self.keep_seconds
            for mtime, size, path in sorted(files):
                if mtime > cutoff:
                    break
                try:
                    os.unlink(path)
                except OSError:
                    continue
                used -= size
                if used + incoming <= self.max_bytes:
                    return True
            return False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" \
                or scope.get("path") not in UPLOAD_PATHS:
            await self.app(scope, receive, send)
            return
        length = 0
        for name, value in scope.get("headers") or ():
            if name == b"content-length" and value.isdigit():
                length = int(value)
        import anyio

        if await anyio.to_thread.run_sync(self.make_room, length):
            await self.app(scope, receive, send)
            return
        megabytes = self.max_bytes / 2 ** 20
        body = json.dumps({"detail": f"The server's space for uploads is full ({megabytes:g} "
                                     "MB); try again in a few minutes."}).encode()
        await send({"type": "http.response.start", "status": 507,
                    "headers": [(b"content-type", b"application/json"),
                                (b"retry-after", str(int(self.keep_seconds)).encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
