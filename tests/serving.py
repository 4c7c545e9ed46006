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
    launch.queue_studio(demo, queue_size)
    port = free_port()
    options = launch.launch_options(list(users), throttle)
    demo.launch(server_name="127.0.0.1", server_port=port, quiet=True, **options)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@contextlib.contextmanager
def served_api(app):
    """Yield the port of `app` (an ASGI app) served for real by uvicorn on a free loopback
    port, in a thread; stopped afterwards."""
    import threading
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the API server did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(15)


def wait_for_ping(process, base: str, timeout: float = 240) -> None:
    """Wait until the studio `process` answers GET base/internal/ping (fail if it exits or
    takes longer than `timeout` s). A cluster's HTTP proxy is up before the studio is: its
    early answers are errors or hang, and are waited through."""
    import time

    import requests

    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, process.stdout.read()
        try:
            if requests.get(f"{base}/internal/ping", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "the studio did not start"
        time.sleep(0.5)
