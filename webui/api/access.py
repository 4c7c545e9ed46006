"""Who may call the API: HTTP Basic over every route when --api-auth is set, nobody checked
when it is not (the launcher allows that only on this machine's own address, or with
--insecure), and which callers are API admins.

Passwords are compared in constant time (hmac.compare_digest) against every user, so a wrong
guess takes as long whichever user it names; failures are counted per client address by the
same throttle that guards the studio's login page: after a few failures each answer is held
back (`delay`), then the address is refused for a while, so a password cannot be guessed at
hundreds of tries a second. With auth off, a request carrying an empty `Authorization: Basic` header
(some chat front ends always send one) is served like any other.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass, field

from ..ui.logins import Throttle, client_address

REALM = "img2img-webui API"


@dataclass(frozen=True)
class Caller:
    """The caller of one request: its API user (None with auth off) and whether it is an
    admin (may stop and watch any job, not only its own)."""

    user: str | None
    admin: bool = False

    @property
    def owner(self) -> str | None:
        """The job owner its jobs run as (its own outputs folder with auth on)."""
        return self.user


class Denied(Exception):
    """401 or 429: `status`, the message, and the headers to send."""

    def __init__(self, status: int, message: str, headers: dict[str, str]):
        super().__init__(message)
        self.status = status
        self.headers = headers


@dataclass
class Access:
    users: list[tuple[str, str]] = field(default_factory=list)
    admins: frozenset[str] = frozenset()
    throttle: Throttle = field(default_factory=Throttle)

    @property
    def enabled(self) -> bool:
        return bool(self.users)

    def delay(self, scope: dict) -> float:
        """Seconds to hold this request's answer before check(): the throttle's slow-down for
        an address that has failed a few times (0 with auth off, or when locked, since check()
        then refuses at once)."""
        if not self.enabled:
            return 0.0
        locked, delay = self.throttle.check(client_address(scope))
        return 0.0 if locked else delay

    def check(self, scope: dict, authorization: str | None) -> Caller:
        """The caller of a request with this Authorization header; Denied when refused."""
        if not self.enabled:
            return Caller(None)
        address = client_address(scope)
        locked, _ = self.throttle.check(address)
        if locked:
            raise Denied(429, f"Too many failed logins from this address; try again in "
                         f"{max(1, int(locked + 0.999))} s.",
                         {"Retry-After": str(max(1, int(locked + 0.999)))})
        user, password = _credentials(authorization)
        matched = None
        for known, secret in self.users:
            # Every pair is compared, found or not: the time says nothing about the names.
            same_user = hmac.compare_digest(known.encode(), user.encode())
            same_password = hmac.compare_digest(secret.encode(), password.encode())
            if same_user and same_password:
                matched = known
        if matched is None:
            if authorization:
                self.throttle.failed(address)
            raise Denied(401, "Incorrect or missing API credentials (HTTP Basic)",
                         {"WWW-Authenticate": f'Basic realm="{REALM}"'})
        self.throttle.succeeded(address)
        return Caller(matched, admin=matched in self.admins)


def _credentials(header: str | None) -> tuple[str, str]:
    """(user, password) of a Basic Authorization header ('', '' when there is none)."""
    if not header:
        return "", ""
    scheme, _, value = header.strip().partition(" ")
    if scheme.casefold() != "basic" or not value.strip():
        return "", ""
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return "", ""
    user, _, password = decoded.partition(":")
    return user, password
