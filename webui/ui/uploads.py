"""Which server files a handler may open for a client: only the ones Gradio itself holds.

The GPU events run with `preprocess=False` (so that every setting is validated by
GenerationParams and fails naming its field), which also skips Gradio's own check on file
payloads. A client can then send `{"path": "/any/file.png"}`, and opening it would read, serve
or at least probe any file on the server. So a file payload is opened only when its file is one
Gradio received as an upload or wrote for one of this app's outputs (both are recorded in the
Blocks' `temp_file_sets`) and it lies in Gradio's upload folder, where every name carries a
hash of the content: a client can only name such a file when it already had the picture.
Anything else is refused with one message that says nothing about the path, so the answers
cannot tell which paths exist either.
"""

from __future__ import annotations

import os
from pathlib import Path

from gradio.context import LocalContext
from gradio.utils import get_upload_folder

# The one answer for any file that is not Gradio's: whether it exists, is a directory, is
# empty or is not an image stays unknown to the client.
REFUSED = "the upload did not arrive; upload it again"


def held_file(payload) -> Path | None:
    """The file behind a file payload ({"path": ...}) when Gradio holds it for this app (an
    upload it received or a file it made for an output); None for anything else."""
    if not isinstance(payload, dict):
        return None
    path = payload.get("path")
    if not isinstance(path, str) or not path or "\x00" in path:
        return None
    blocks = LocalContext.blocks.get(None)
    if blocks is None:
        return None  # not inside a Gradio request: no file is known to be the client's
    folder = os.path.realpath(get_upload_folder())
    real = os.path.realpath(path)
    try:
        inside = os.path.commonpath([real, folder]) == folder
    except ValueError:  # different drives
        inside = False
    if not inside:
        return None
    # A list copy: other requests add sets while this one looks.
    if not any(path in files or real in files for files in list(blocks.temp_file_sets)):
        return None
    if not os.path.isfile(real):
        return None  # cleaned from the cache since: the same answer as any other refusal
    return Path(real)
