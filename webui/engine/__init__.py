"""The engine's public face: everything a front door (the studio, the CLI, the bench, the REST
API) uses, importable without torch. Front doors import from here, never from the submodules.

- `EngineAPI` (interface.py): the typed protocol every engine implements; `Engine` (core.py) is
  the in-process one.
- `JobRequest`: one job's settings, pictures and files, as plain data, and its task (`TASKS`:
  img2img, or txt2img from the prompt alone); `submit` gives a `Job`
  (progress via `updates()`, `result()`, `cancel()`), which yields `Progress` and ends in a
  `Result` of `ImageResult`s.
- The listings (`ModelInfo`, `QueueStatus`), the error types, and the folder names under the
  models folder.
- Helpers a front door shares with the engine so both read inputs the same way: the LoRA tags of
  a prompt, an uploaded mask as the engine sees it, the infotext of a PNG, and the outputs
  folder's layout (day folders, numbered files) for what a front door saves itself (grids).
- The hub: the suggested checkpoints and their download into the hub cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import (Cancelled, InputError, ModelError, OutOfMemory, TimedOut,
                      WorkerLost)
from .adapter_inputs import (LORA_HOT_RANK, LORA_HOT_RANK_MAX, LORA_RANK_HELP, AdapterError,
                             check_lora_rank, lora_rank_flag, mask_to_l, parse_prompt_loras)
from .detectors import DETECTOR_SUBDIR
from .hub import (SUGGESTIONS, DownloadProgress, check_repo_id, download, is_offline,
                  offline_message)
from .interface import (TASKS, TXT2IMG_DEFAULT_SIZE, EngineAPI, ImageResult, Inputs, JobHandle,
                        JobRequest, ModelInfo, Progress, QueueFull, QueueStatus, Result)
from .limits import Limits
from .models import (CHECKPOINTS_SUBDIR, CONTROLNET_SUBDIR, IP_ADAPTER_SUBDIR, LORA_SUBDIR,
                     PREVIEW_DECODERS, TINY_VAE_NAMES, TINY_VAE_SUBDIR, is_hub_id)
from .outputs import day_folder, png_bytes, read_infotext, write_numbered

if TYPE_CHECKING:
    from .core import Engine, Job

# The in-process engine (core.py) imports torch and diffusers at its top, as library code does;
# it is loaded on first use of `Engine` or `Job`, so that importing this package (every front
# door does) stays torch-free and a front door pays for torch only when it builds an engine.
_LAZY = ("Engine", "Job")


def __getattr__(name: str):
    if name in _LAZY:
        from . import core

        value = getattr(core, name)
        globals()[name] = value  # later lookups find it without this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AdapterError", "CHECKPOINTS_SUBDIR", "CONTROLNET_SUBDIR", "Cancelled", "DETECTOR_SUBDIR",
    "DownloadProgress", "Engine", "EngineAPI", "IP_ADAPTER_SUBDIR", "ImageResult", "InputError",
    "Inputs", "Job", "JobHandle", "JobRequest", "LORA_HOT_RANK", "LORA_HOT_RANK_MAX",
    "LORA_RANK_HELP", "LORA_SUBDIR", "ModelError", "ModelInfo", "OutOfMemory",
    "PREVIEW_DECODERS", "Progress", "QueueFull", "QueueStatus", "Result", "SUGGESTIONS", "TASKS",
    "TINY_VAE_NAMES", "TINY_VAE_SUBDIR", "TXT2IMG_DEFAULT_SIZE", "Limits", "TimedOut",
    "WorkerLost",
    "check_lora_rank", "check_repo_id", "day_folder", "download", "is_hub_id", "is_offline", "lora_rank_flag",
    "mask_to_l",
    "offline_message", "parse_prompt_loras", "png_bytes", "read_infotext", "write_numbered",
]
