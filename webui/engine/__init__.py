"""The engine's public face: everything a front door (the studio, the CLI, the bench, the REST
API) uses, importable without torch. Front doors import from here, never from the submodules.

- `EngineAPI` (interface.py): the typed protocol every engine implements; `Engine` (core.py) is
  the in-process one.
- `JobRequest`: one job's settings, pictures and files, as plain data; `submit` gives a `Job`
  (progress via `updates()`, `result()`, `cancel()`), which yields `Progress` and ends in a
  `Result` of `ImageResult`s.
- The listings (`ModelInfo`, `QueueStatus`) and the error types.
"""

from .core import Engine, ImageResult, Inputs, Job, Progress, QueueFull, Result
from ..errors import Cancelled, InputError, ModelError, OutOfMemory
from .interface import EngineAPI, JobHandle, JobRequest, ModelInfo, QueueStatus

__all__ = [
    "Cancelled", "Engine", "EngineAPI", "ImageResult", "InputError", "Inputs", "Job", "JobHandle",
    "JobRequest", "ModelError", "ModelInfo", "OutOfMemory", "Progress", "QueueFull",
    "QueueStatus", "Result",
]
