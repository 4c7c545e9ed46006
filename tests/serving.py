"""The studio served in-process, launched with the same options as `python -m webui`."""

from __future__ import annotations

import contextlib
import socket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def served(studio, users=(("user", "pass"),), throttle=None, queue_size: int = 4):
    """Yield the URL of `studio`'s page, served on a free loopback port with launch.py's
    options (login, throttle, served files), and close it afterwards."""
    from webui.ui import launch
    from webui.ui.app import build

    demo = build(studio)
    demo.queue(max_size=queue_size)
    port = free_port()
    options = launch.launch_options(list(users), throttle)
    demo.launch(server_name="127.0.0.1", server_port=port, quiet=True, **options)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
