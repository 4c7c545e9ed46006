"""The engine's interface: what every front door (studio, CLI, bench, the REST API) may ask of
an engine, written down as a typed protocol, and the plain data a job request carries and a
job reports (its progress, its result, the queue being full).

The in-process engine (core.Engine) implements it; an engine in other processes or on other
machines implements the same protocol and passes the same engine tests. Nothing here imports
torch: a front door can hold these types without loading the pipeline stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, runtime_checkable

from ..params import GenerationParams


@dataclass
class JobRequest:
    """One job: the settings plus the pictures and files it uses. Plain data (PIL images, bytes,
    strings): picklable, no open files or device tensors, so it can cross a process boundary.

    params: the settings (validated GenerationParams).
    task: what the job does (one of TASKS). "img2img" transforms init_image (a mask makes it
        inpainting); "txt2img" makes a picture from the prompt alone: no init image, mask or
        latents (ControlNet units take uploaded control images); width and height default to
        512 when unset; strength is not used (the job reports strength 1).
    init_image: the picture to transform (PIL); None only when `latents` are given.
    mask: inpaint mask, white = repaint (PIL); switches the job to inpainting.
    ip_image: the IP-Adapter reference picture (used when params.ip_adapter is set).
    control_images: one entry per ControlNet unit: its uploaded control picture, or None for a
        unit whose source is the init image.
    latents: a .safetensors latent file to start from instead of the init image: its bytes, or
        (in-process callers) its path.
    color_reference: the picture colour correction matches (default: the init image).
    infotext_extra: `key: value` pairs added to each result's infotext as they are.
    save: write the results to the outputs folder.
    owner: the user the job belongs to (their own outputs folder); None without a login.
    allow_paths: let model, LoRA, IP-Adapter and ControlNet names be explicit file paths
        anywhere on the machine. Only a command line run by the machine's own user sets it;
        otherwise the engine confines every name to its folder under the models folder.
    """

    params: GenerationParams
    init_image: Any = None
    mask: Any = None
    ip_image: Any = None
    control_images: list | None = None
    latents: bytes | Path | None = None
    color_reference: Any = None
    infotext_extra: dict[str, str] | None = None
    save: bool = True
    owner: str | None = None
    allow_paths: bool = False
    # Last, so that requests built by position before it existed keep their meaning.
    task: str = "img2img"


# What a job can be asked to do (JobRequest.task).
TASKS = ("img2img", "txt2img")
# The size of a text-to-image job whose width or height is unset.
TXT2IMG_DEFAULT_SIZE = 512


@dataclass(frozen=True)
class ModelInfo:
    """A checkpoint the engine can load. kind: 'tiny', 'file', 'folder' or 'hub'; family: 'sd1',
    'sd2' or 'sdxl' when known without loading the model (else None); hash: the first 10 hex
    digits of a single file's sha256 once the engine has computed it (it does on first use),
    else ''; sha256: the whole of that hash, likewise; licence: as the file or its model card
    states it, else ''."""

    name: str
    kind: str
    family: str | None = None
    hash: str = ""
    licence: str = ""
    sha256: str = ""


@dataclass(frozen=True)
class QueueStatus:
    """running: the id of the running job (None when idle); waiting: jobs queued behind it;
    capacity: how many may wait before a submit is refused as busy."""

    running: int | None
    waiting: int
    capacity: int


@dataclass
class Progress:
    """A job's state: stage is 'queued', 'loading', 'sampling' or 'saving'."""

    stage: str
    step: int = 0
    total: int = 0
    batch_index: int = 0  # the batch being sampled, from 0
    batch_count: int = 1  # batches in the job
    position: int = 0  # jobs ahead in the queue
    elapsed: float = 0.0
    eta: float | None = None
    preview: Any = None  # a PIL image, when one is ready


@dataclass
class ImageResult:
    image: Any  # PIL image (for latent output: a preview of the latents)
    seed: int
    infotext: str
    path: Path | None = None
    latents: Any = None  # the latent tensor, for latent output


@dataclass
class Result:
    images: list[ImageResult]
    params: GenerationParams
    seed: int  # the job's first seed (the one a -1 turned into)
    width: int
    height: int
    effective_steps: int
    model: str
    elapsed: float
    interrupted: bool = False
    notice: str = ""
    init: Any = None  # the init image as the job used it (resized and fitted), if any
    # Where the job ran when that is not this process: a cluster replica, by node and GPU.
    worker: str = ""


@dataclass
class Inputs:
    """The pictures and files a job uses beside its settings (they are not settings: they never
    go into infotext or presets).

    ip_image: the IP-Adapter reference image (used when params.ip_adapter is set).
    mask: inpaint mask, white = repaint (switches the job to inpainting).
    control_images: one per ControlNet unit whose source is 'upload' (None for the others).
    latents: a (1, 4, h/8, w/8) tensor or a .safetensors latent file to start from instead of
        the init image.
    color_reference: the picture colour correction (params.color_correction) matches, fitted
        to the output size like the init image; default None = the init image itself. Loopback
        passes the first pass's init so that the colours of later passes do not drift with
        each pass's own input.
    infotext_extra: `key: value` pairs added to each image's infotext as they are (loopback's
        "Loopback: pass 2/8"); default None = none. The infotext parser keeps such keys as
        extras, so they never change a setting read back.
    """

    ip_image: Any = None
    mask: Any = None
    control_images: list | None = None
    latents: Any = None
    color_reference: Any = None
    infotext_extra: dict[str, str] | None = None


class QueueFull(RuntimeError):
    """The job queue is full; the message is meant for the artist."""


@runtime_checkable
class JobHandle(Protocol):
    """A submitted job.

    What it shows while it runs, for a front door that reports on whatever job runs (its own or
    another door's): `created`, time.time() when it was submitted; `last_progress`, the latest
    Progress it emitted (None before the first); `last_preview`, the latest step preview it
    emitted (a PIL image, kept across the progress items that carry none; None before one).
    """

    id: int
    owner: str | None
    created: float
    last_progress: Progress | None
    last_preview: Any

    @property
    def done(self) -> bool:
        """True once the job has a result or an error."""

    def cancel(self) -> None:
        """Stop the job: at once while queued, within one sampling step while running."""

    def skip(self) -> None:
        """End the batch being sampled within one sampling step and go on with the next one.
        The skipped batch's images (decoded from where sampling stopped) stay in the result,
        which is not marked interrupted. Asked while the job waits, it ends the job's first
        batch; asked during the last batch, it ends that one and the job finishes as usual."""

    def position(self) -> int:
        """Jobs running or waiting before this one (0 when running or finished)."""

    def updates(self, timeout: float | None = None) -> Iterator[Any]:
        """Progress items until the job ends."""

    def result(self, timeout: float | None = None) -> Any:
        """The Result; raises the job's error (InputError, ModelError, Cancelled, ...)."""


@runtime_checkable
class EngineAPI(Protocol):
    """What a front door may ask of an engine. Names, not paths: the engine resolves model and
    adapter names inside its models folder (see JobRequest.allow_paths)."""

    model: str  # the model a job with an empty model setting uses
    queue_size: int
    outputs_dir: Path  # where results are saved (front doors save grids there too)
    device: str  # 'cuda', 'cpu', ... of the engine's pipeline
    # Whether a client may have the server download from the hub (off for a shared studio).
    allow_downloads: bool

    @property
    def models_dir(self) -> Path:
        """The models folder the engine's names are relative to."""

    # -- jobs ----------------------------------------------------------------------------------
    def submit(self, request: JobRequest) -> JobHandle:
        """Queue a job; QueueFull when the queue is full. Names are checked here (InputError)."""

    def generate(self, request: JobRequest) -> Any:
        """Submit and wait: the Result."""

    def cancel_all(self) -> None:
        """Cancel every queued and running job."""

    def queue_status(self) -> QueueStatus: ...

    def running_job(self) -> JobHandle | None:
        """The job running now (whoever submitted it), None when idle."""

    def memory_status(self) -> dict:
        """Memory now, in bytes: {"ram": {"free", "used", "total"} of this machine,
        "process_rss": the engine process's resident size, "cuda": None when the engine's device
        is not a CUDA GPU, else {"free", "used", "total", "allocated", "peak_allocated"}}."""

    # -- listings ------------------------------------------------------------------------------
    def models(self) -> list[str]:
        """The names of the checkpoints a job may name."""

    def list_models(self) -> list[ModelInfo]: ...

    def list_loras(self) -> list[str]: ...

    def list_controlnets(self) -> list[str]: ...

    def list_ip_adapters(self) -> list[str]: ...

    def list_detectors(self) -> dict[str, str]:
        """Detector name -> kind ('depth' or 'pose')."""

    def list_samplers(self) -> list[str]: ...

    def check_model(self, name: str = "") -> str:
        """Where `name` (default: the engine's model) would load from; ModelError if nowhere."""

    def check_adapter(self, kind: str, name: str, field: str, hub: bool = False) -> str:
        """The name a job may use for an IP-Adapter or ControlNet a client named (the path
        policy); InputError naming `field` when it is not this engine's."""

    # -- the resident model --------------------------------------------------------------------
    def loaded_model(self) -> str | None:
        """The resident model's location, or None."""

    def is_tiny(self, name: str = "") -> bool:
        """True for the built-in test models (they make noise, not pictures)."""

    def load_model(self, name: str = "") -> str:
        """Load `name` (default: the default model) now; its resolved name."""

    def unload(self) -> None: ...

    def control_preview(self, picture, preprocessor: str, detector: str = "", low: float = 100,
                        high: float = 200) -> Any:
        """The control map a ControlNet unit would get from `picture` (PIL)."""


__all__ = ["EngineAPI", "ImageResult", "Inputs", "JobHandle", "JobRequest", "ModelInfo",
           "Progress", "QueueFull", "QueueStatus", "Result", "TASKS", "TXT2IMG_DEFAULT_SIZE"]
