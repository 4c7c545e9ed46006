"""Real-browser fixtures: the studio launched as `python -m webui` with a login, and a headless
chromium driven through Playwright's sync API.

A missing chromium is a failure, not a skip: CI installs it, and a silently skipped browser suite
would hide a broken page.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
USER, PASSWORD = "user", "pass"
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
START_TIMEOUT = 120


def chromium_path() -> str:
    for candidate in CHROMIUM_CANDIDATES:
        if os.path.exists(candidate):
            return candidate
    found = shutil.which("chromium")
    if found:
        return found
    pytest.fail("chromium is not installed: the browser tests need it. Install it "
                "(Debian/Ubuntu: `apt-get install chromium`) and run the tests again.",
                pytrace=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def studio_command(port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "webui", "--port", str(port), *extra]


def studio_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the studio exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"the studio did not open port {port} in {START_TIMEOUT} s:\n{log.read_text()}")


@contextlib.contextmanager
def running_studio(base: Path, *args: str, auth: str = f"{USER}:{PASSWORD}",
                   env: dict | None = None):
    """A studio subprocess on a free loopback port with its folders under `base`; yields its URL
    and stops it afterwards. env: the process environment (default: studio_env())."""
    port = free_port()
    log = base / "studio.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            studio_command(port, "--auth", auth, "--models-dir", str(base / "models"),
                           "--outputs-dir", str(base / "outputs"), "--model", "tiny-random",
                           *args),
            cwd=ROOT, env=env or studio_env(), stdout=handle, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, process, log)
        yield f"http://127.0.0.1:{port}/"
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen) -> None:
    """Stop a served studio: SIGTERM, then SIGKILL if it has not gone within 15 s."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


@pytest.fixture(scope="session")
def studio(tmp_path_factory):
    """The running studio: (url, outputs folder, log file)."""
    base = tmp_path_factory.mktemp("browser-studio")
    with running_studio(base) as url:
        yield {"url": url, "outputs": base / "outputs", "log": base / "studio.log", "base": base}


@pytest.fixture(scope="session")
def browser():
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser, studio):
    """A fresh browser session (its own cookies, so its own studio session), not logged in.

    Any request that leaves this machine fails the test: the studio must work offline."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    tab = context.new_page()
    outside: list[str] = []

    def check(request):
        url = request.url
        if not url.startswith(("http://127.0.0.1", "data:", "blob:", "about:")):
            outside.append(url)

    tab.on("request", check)
    yield tab
    context.close()
    assert not outside, f"the page fetched from outside: {outside}"


def log_in(page, url: str, password: str = PASSWORD) -> None:
    page.goto(url)
    page.fill("input[data-testid=textbox]", USER)
    page.fill("input[type=password]", password)
    page.click("button:has-text('Login')")


@pytest.fixture
def studio_page(page, studio):
    log_in(page, studio["url"])
    page.wait_for_selector("#generate", timeout=60_000)
    return page


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
