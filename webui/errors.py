"""Errors with a message meant for the artist, never a traceback.

A top-level module, not part of the engine, because every layer raises or catches them: image
decoding, the engine, the CLI and the UI.
"""


class ModelError(RuntimeError):
    """A model could not be found, read or loaded; the message says what to do."""


class InputError(ValueError):
    """An input (image, file, option) is unusable; `field` names the input."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class Cancelled(RuntimeError):
    """The job was interrupted before it produced anything."""


class TimedOut(Cancelled):
    """The job ran out of its time budget (--job-timeout) before its first image; the message
    says so. A Cancelled: it was stopped as an Interrupt stops a job."""


class OutOfMemory(RuntimeError):
    """The GPU ran out of memory during a job; the message says what to change. Its own kind of
    error: no single setting is at fault, and the engine has given the memory back."""


class WorkerLost(RuntimeError):
    """The process running the job stopped mid-job (a cluster replica died); the job is failed,
    not run again, and the next one goes to a working replica."""
