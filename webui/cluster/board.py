"""The board: where the front door leaves job controls and the replicas leave their status.

A replica runs one job at a time (`max_ongoing_requests=1`), so a second request to it saying
"stop" would wait behind the job it is meant to stop. The replica instead reads this board
while its job runs (a few times a second: one small actor call each) and acts on what it finds.
Replicas also post their status here (node, GPU, loaded model, busy) with a heartbeat, so the
studio's cluster panel shows live replicas and drops one that stopped posting.

A plain class: deploy.py makes it a Ray actor; tests use it directly too.
"""

from __future__ import annotations

import time

# A replica posts at least this often (seconds); one silent for HEARTBEAT_LOST is gone.
HEARTBEAT = 1.0
HEARTBEAT_LOST = 5.0
# The Ray namespace the board is named in (replicas find it there).
NAMESPACE = "img2img"


class Board:
    def __init__(self):
        self._flags: dict[str, set[str]] = {}
        self._replicas: dict[str, dict] = {}

    # -- job controls -------------------------------------------------------------------------
    def flag(self, key: str, what: str) -> None:
        """Ask the job `key` to 'cancel' or 'skip' (kept until the job reads and clears it)."""
        self._flags.setdefault(key, set()).add(what)

    def take(self, key: str) -> list[str]:
        """The controls left for job `key` since the last call (each is given once)."""
        return sorted(self._flags.pop(key, ()))

    def cancelled(self, key: str) -> bool:
        """True when `key` was cancelled (read at a job's start; the flag stays)."""
        return "cancel" in self._flags.get(key, ())

    def forget(self, key: str) -> None:
        self._flags.pop(key, None)

    # -- replica status -----------------------------------------------------------------------
    def post(self, replica: str, status: dict) -> None:
        self._replicas[replica] = {**status, "seen": time.time()}

    def leave(self, replica: str) -> None:
        self._replicas.pop(replica, None)

    def replicas(self) -> list[dict]:
        """Live replicas' status, by replica id; a replica silent too long is dropped."""
        now = time.time()
        for name in [n for n, s in self._replicas.items() if now - s["seen"] > HEARTBEAT_LOST]:
            del self._replicas[name]
        return [{"replica": name, **status} for name, status in sorted(self._replicas.items())]
