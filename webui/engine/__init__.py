"""The engine's public face: everything a front door (the studio, the CLI, the bench, the REST
API) uses, importable without torch. Front doors import from here, never from the submodules.

- `EngineAPI` (interface.py): the typed protocol every engine implements; `Engine` (core.py) is
  the in-process one.
- `JobRequest`: one job's settings, pictures and files, as plain data; `submit` gives a `Job`
  (progress via `updates()`, `result()`, `cancel()`), which yields `Progress` and ends in a
  `Result` of `ImageResult`s.
- The listings (`ModelInfo`, `QueueStatus`), the error types, and the folder names under the
  models folder.
- Helpers a front door shares with the engine so both read inputs the same way: the LoRA tags of
  a prompt, an uploaded mask as the engine sees it, the infotext of a PNG, and the outputs
  folder's layout (day folders, numbered files) for what a front door saves itself (grids).
- The hub: the suggested checkpoints and their download into the hub cache.
"""

from ..errors import Cancelled, InputError, ModelError, OutOfMemory
from .adapter_inputs import AdapterError
from .core import Engine, ImageResult, Inputs, Job, Progress, QueueFull, Result
from .detectors import DETECTOR_SUBDIR
from .hub import (SUGGESTIONS, DownloadProgress, check_repo_id, download, is_offline,
                  offline_message)
from .inpaint import mask_to_l
from .interface import EngineAPI, JobHandle, JobRequest, ModelInfo, QueueStatus
from .lora import parse_prompt_loras
from .models import (CHECKPOINTS_SUBDIR, CONTROLNET_SUBDIR, IP_ADAPTER_SUBDIR, LORA_SUBDIR,
                     is_hub_id)
from .outputs import day_folder, png_bytes, read_infotext, write_numbered

__all__ = [
    "AdapterError", "CHECKPOINTS_SUBDIR", "CONTROLNET_SUBDIR", "Cancelled", "DETECTOR_SUBDIR",
    "DownloadProgress", "Engine", "EngineAPI", "IP_ADAPTER_SUBDIR", "ImageResult", "InputError",
    "Inputs", "Job", "JobHandle", "JobRequest", "LORA_SUBDIR", "ModelError", "ModelInfo",
    "OutOfMemory", "Progress", "QueueFull", "QueueStatus", "Result", "SUGGESTIONS",
    "check_repo_id", "day_folder", "download", "is_hub_id", "is_offline", "mask_to_l",
    "offline_message", "parse_prompt_loras", "png_bytes", "read_infotext", "write_numbered",
]
