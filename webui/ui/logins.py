"""Login throttling: repeated wrong passwords from one address are slowed down, then refused.

Gradio's login route answers every guess at once (hundreds a second), so a shared link's
password could be guessed. Gradio offers no hook that sees the caller's address, so this is a
small ASGI middleware in front of the app: it watches POST /login, counts the failures per
client address, delays the answers once an address has failed a few times, and then refuses
that address outright for a while. A success clears the address's record. After the wait the
right password works again.

The address is the connection's peer. Behind a proxy on this machine (the tunnel of --share
connects from loopback) the peer is always the loopback address, so there the last entry of
X-Forwarded-For, the one the proxy itself added, is used when present; from any other peer the
header is ignored, because a client can write anything in it.

The login form trims the name it is sent, so " alice" with alice's password would open alice's
session: here a name must be exactly a user's name, and any other is a wrong login.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

LOGIN_PATHS = ("/login", "/login/")
# A login form is a name and a password: anything longer is not read (and is refused).
MAX_LOGIN_BODY = 64 * 1024


@dataclass
class Policy:
    """slow_after failures are answered at once; each further one waits `delay` seconds; at
    lock_after failures the address is refused for `lock_seconds`. Failures older than
    `window` seconds are forgotten."""

    slow_after: int = 3
    delay: float = 1.0
    lock_after: int = 10
    lock_seconds: float = 300.0
    window: float = 900.0
    # Addresses remembered at most; the oldest records go first (an attacker with many
    # addresses must not be able to fill the memory).
    max_addresses: int = 10_000


@dataclass
class _Record:
    failures: list[float] = field(default_factory=list)
    locked_until: float = 0.0


class Throttle:
    """The failure records, shared by all requests (thread-safe; no I/O)."""

    def __init__(self, policy: Policy | None = None, clock: Callable[[], float] = time.monotonic):
        self.policy = policy or Policy()
        self.clock = clock
        self._records: dict[str, _Record] = {}
        self._lock = threading.Lock()

    def check(self, address: str) -> tuple[float, float]:
        """(seconds the address stays refused (0: not refused), seconds to wait before the
        attempt is answered)."""
        now = self.clock()
        with self._lock:
            record = self._records.get(address)
            if record is None:
                return 0.0, 0.0
            if record.locked_until > now:
                return record.locked_until - now, 0.0
            if record.locked_until:
                # The lock has run out: a clean slate, so the right password works again.
                del self._records[address]
                return 0.0, 0.0
            record.failures = [t for t in record.failures if now - t < self.policy.window]
            slow = len(record.failures) >= self.policy.slow_after
            return 0.0, self.policy.delay if slow else 0.0

    def failed(self, address: str) -> None:
        now = self.clock()
        with self._lock:
            record = self._records.pop(address, None) or _Record()
            record.failures = [t for t in record.failures if now - t < self.policy.window]
            record.failures.append(now)
            if len(record.failures) >= self.policy.lock_after:
                record.locked_until = now + self.policy.lock_seconds
                record.failures.clear()
            self._records[address] = record  # most recent last
            while len(self._records) > self.policy.max_addresses:
                del self._records[next(iter(self._records))]

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._records.pop(address, None)


def client_address(scope: dict) -> str:
    peer = (scope.get("client") or ("unknown", 0))[0]
    try:
        loopback = ipaddress.ip_address(peer).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        for name, value in scope.get("headers") or ():
            if name == b"x-forwarded-for":
                last = value.decode("latin-1").split(",")[-1].strip()
                if last:
                    return last
    return peer


class LoginThrottle:
    """ASGI middleware around the studio app (see the module docstring)."""

    def __init__(self, app, throttle: Throttle | None = None):
        self.app = app
        self.throttle = throttle or Throttle()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" \
                or scope.get("path") not in LOGIN_PATHS:
            await self.app(scope, receive, send)
            return
        address = client_address(scope)
        locked, delay = self.throttle.check(address)
        if locked:
            await _refuse(send, locked)
            return
        if delay:
            await asyncio.sleep(delay)
        body = await _read_body(receive)
        name = await _login_name(scope, body)
        if body is None or name is None or name != name.strip():
            # Answered as the form answers a wrong password, and counted as one.
            self.throttle.failed(address)
            await _answer(send, 400, {"detail": "Incorrect credentials."})
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def watch(message):
            if message["type"] == "http.response.start":
                # Recorded before the answer leaves, so the next attempt already counts it.
                code = message["status"]
                if code == 200:
                    self.throttle.succeeded(address)
                elif 400 <= code < 500:
                    self.throttle.failed(address)
            await send(message)

        await self.app(scope, replay, watch)


async def _read_body(receive) -> bytes | None:
    """The request's body, or None when it is longer than MAX_LOGIN_BODY."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None  # the client went away
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > MAX_LOGIN_BODY:
            return None
        if not message.get("more_body"):
            return b"".join(chunks)


async def _login_name(scope, body: bytes | None) -> str | None:
    """The form's username (url-encoded or multipart, as the form route reads either), or
    None when there is none."""
    if body is None:
        return None
    from starlette.requests import Request

    async def once():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, once).form()
    except Exception:  # noqa: BLE001 - a malformed form is a failed login, not a server error
        return None
    name = form.get("username")
    return name if isinstance(name, str) else None


async def _refuse(send, seconds: float) -> None:
    wait = max(1, int(seconds + 0.999))
    await _answer(send, 429, {"detail": f"Too many failed logins from this address; try again "
                                        f"in {wait} s."}, [(b"retry-after", str(wait).encode())])


async def _answer(send, status: int, payload: dict, headers=()) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})
