"""What every job handle shares, in-process (core.Job) or on a cluster (cluster.engine.RayJob):
its progress items on a queue that ends with the job, its latest progress and preview, and its
outcome. No torch here."""

from __future__ import annotations

import queue
import threading
import time
from typing import Iterator

from ..errors import Cancelled
from .interface import Progress, Result


class JobEvents:
    """The progress and outcome half of a job handle (interface.JobHandle). A subclass calls
    JobEvents.__init__, keeps `state` ('queued' until the job runs), defines position(), emits
    with _emit() and ends the job once with _end()."""

    def __init__(self):
        self.state = "queued"
        self.last_progress: Progress | None = None
        self.last_preview = None
        self._done = threading.Event()
        self._events: "queue.Queue[Progress | None]" = queue.Queue()
        self._result: Result | None = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        """True once the job has a result or an error."""
        return self._done.is_set()

    def position(self) -> int:
        raise NotImplementedError

    def updates(self, timeout: float | None = None) -> Iterator[Progress]:
        """Progress until the job ends; then call result(). A queued job reports its position."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            try:
                event = self._events.get(timeout=wait)
            except queue.Empty:
                if self._done.is_set():
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    return
                if self.state == "queued":
                    yield Progress("queued", position=self.position())
                continue
            if event is None:
                return
            yield event

    def result(self, timeout: float | None = None) -> Result:
        """The Result; raises the job's error (InputError, ModelError, Cancelled, ...)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.id} still running")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _emit(self, progress: Progress) -> None:
        self.last_progress = progress
        if progress.preview is not None:
            self.last_preview = progress.preview
        self._events.put(progress)

    def _end(self, result: Result | None, error: BaseException | None) -> None:
        self._result, self._error = result, error
        self.state = "error" if error else ("cancelled" if result and result.interrupted else "done")
        if isinstance(error, Cancelled):
            self.state = "cancelled"
        self._done.set()
        self._events.put(None)
