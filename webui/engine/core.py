"""The Engine: owns the pipeline, runs one job at a time, reports progress, honours cancel.

Jobs go through one bounded queue served by one worker thread, because the GPU runs one
diffusion at a time anyway and a single owner thread means the pipeline object is never shared
between threads. The loaded pipeline stays resident; a job for the same model and precision
reuses it, and changing sampler swaps only the scheduler.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import os
import itertools
import logging
import queue
import random
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch
from PIL import Image

from .. import images as imaging
from .. import infotext, prompts, schedulers
from ..errors import Cancelled, InputError, ModelError, OutOfMemory, TimedOut
from ..params import MAX_SEED, GenerationParams
from . import compiled, draft, hub, memory, outputs, previews, stopping
from .adapter_inputs import LORA_HOT_RANK, LORA_HOT_RANK_MAX
from .adapters import Adapters, JobAdapters
from .colour import match_all
from .controlnet import ControlNetSpec, control_image
from .inpaint import overlay_original
from .ip_adapter import IPAdapterSpec
from .latents import latents_bytes, load_latents
from .limits import Limits
from .handles import JobEvents
from .detectors import (DETECTOR_SUBDIR, KINDS as DETECTOR_KINDS, Detectors, find_detector,
                        list_detectors)
from .interface import (TASKS, TXT2IMG_DEFAULT_SIZE, ImageResult, Inputs, JobRequest,
                        ModelInfo, Progress, QueueFull, QueueStatus, Result)
from .models import (CONTROLNET_SUBDIR, FAMILY_LABELS, IP_ADAPTER_SUBDIR, LORA_SUBDIR,
                     PREVIEW_DECODERS, TINY_VAE_NAMES, TINY_VAE_SUBDIR, ModelRegistry, load)
from .prompt_encoding import encode_prompts

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class BatchPlace:
    """Where one batch sits in its job, for the progress and ETA it reports."""

    index: int  # this batch, from 0
    count: int  # batches in the job
    job_started: float  # time.monotonic() when the job began: elapsed counts from there


@dataclass
class _StepClock:
    """What a batch's step callback keeps from one step to the next."""

    started: float  # time.monotonic() when this batch began sampling: the ETA's rate
    last_preview: float = 0.0  # time.monotonic() when the last preview was ready (0: none)
    preview_cost: float = 0.0  # seconds the last preview took to make
    stopped: bool = False  # a cancel arrived; the library stops before the next step


class Job(JobEvents):
    """A submitted job: iterate `updates()` for progress, call `result()` for the outcome
    (handles.JobEvents).

    created, last_progress, last_preview: see interface.JobHandle (what a front door shows of
    whatever job runs)."""

    _ids = itertools.count(1)

    def __init__(self, engine: "Engine", params: GenerationParams, init_image, save: bool,
                 inputs: "Inputs", owner: str | None = None, task: str = "img2img"):
        JobEvents.__init__(self)
        self.id = next(self._ids)
        self.owner = owner
        self.engine = engine
        self.params = params
        self.init_image = init_image
        self.inputs = inputs
        self.save = save
        self.task = task
        self.created = time.time()
        self.cancel_requested = threading.Event()
        self.timed_out = False  # its time budget (Limits.job_timeout) ran out
        # Ends the batch being sampled; cleared when the next batch starts, so that a second
        # click on the same batch does not skip the one after it too.
        self.skip_requested = threading.Event()
        self._temporary: list[Path] = []  # files made for this job alone, removed when it ends

    def cancel(self) -> None:
        """Stop this job: at once if queued, within one sampling step if running."""
        self.cancel_requested.set()
        self.engine._drop_queued(self)

    def _time_out(self) -> None:
        self.timed_out = True
        self.cancel()

    def skip(self) -> None:
        """End the batch being sampled within one step and go on with the next (see
        interface.JobHandle.skip); its images, decoded from where sampling stopped, are kept."""
        self.skip_requested.set()

    def position(self) -> int:
        """How many jobs run or wait before this one (0 when running or finished)."""
        return self.engine._position(self)

    def _finish(self, result: Result | None, error: BaseException | None) -> None:
        for path in self._temporary:
            path.unlink(missing_ok=True)
        self._end(result, error)


@dataclass
class _LoadTurn:
    """A model load waiting its turn in the job queue (see Engine.load_model). It is not a job:
    it counts for no queue position, limit or busy answer."""

    name: str
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    error: BaseException | None = None
    started: bool = False
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def cancel(self) -> None:
        """Give up the turn if it has not begun (cancel_all: the studio is stopping); the
        caller gets Cancelled. A load already under way finishes."""
        with self._lock:
            if self.started or self.done.is_set():
                return
            self.error = Cancelled("the model switch was cancelled: the studio is stopping")
            self.done.set()

    def run(self, engine: "Engine") -> None:
        with self._lock:
            if self.done.is_set():
                return  # cancelled while it waited
            self.started = True
        try:
            with engine._device_lock:  # a control-map preview may hold it
                engine.pipeline(self.name)
        except BaseException as exc:  # noqa: BLE001 - the caller raises it; the worker goes on
            self.error = exc
        finally:
            self.done.set()


INPAINT_NOTICE = ("Inpainted: only the painted area was repainted; outside it every pixel is "
                  "the original's")
# Seconds between step previews (each costs a GPU -> CPU read of the latents).
PREVIEW_INTERVAL = 0.25
# The most of a job's time previews may take: after a preview that took t seconds the next waits
# at least t x (1 / PREVIEW_SHARE - 1), so a slow preview decoder (the tiny VAE on a CPU) shows
# fewer previews instead of slowing the job down.
PREVIEW_SHARE = 0.05


class Engine:
    """The img2img engine. Pass it explicitly to the UI, the API and the CLI.

    models_dir: the models folder (models/Stable-diffusion, models/Lora).
    outputs_dir: where PNGs are written (outputs/img2img/DATE/NNNNN-SEED.png).
    model: the model used when a job names none (else $IMG2IMG_MODEL, else the registry's
        default: a checkpoint in models/Stable-diffusion, else tiny-random).
    device: 'cuda', 'cpu', ... (default: CUDA when available, else the CPU).
    limits: what one job may ask for (limits.Limits: size, steps, images, jobs per user, time
        budget); default Limits().
    max_pixels: largest output (width x height), overriding limits.max_pixels; larger init
        images are scaled down, larger explicit sizes refused.
    queue_size: jobs that may wait; one more gets QueueFull.
    compile: the compiled UNet and VAE (compiled.py): 'auto' (on for CUDA), 'on' or 'off'.
    cache_dir: its on-disk cache (default: cache/compile beside the models folder).
    lora_rank: with the compiled UNet on, the LoRA rank reserved in its hot slot (lora.py):
        a job with one UNet LoRA of rank up to this runs compiled, any LoRA and any weight
        without recompiling; each such job costs a LoRA of this rank. 0 to 1024, default 64;
        0 runs every LoRA job eager.
    allow_downloads: whether a job may name a hub id (an IP-Adapter) that is not in the hub
        cache yet, and the studio's "Get a model" panel may download; off for a shared studio.
    preview_decoder: how step previews are made (previews.py): 'approx' (default; a colour
        matrix, free) or 'tiny' (the tiny VAE in models/VAE-approx/taesd or taesdxl: the
        picture's detail, at a cost the benchmark measures; the rough previews where it is
        absent).
    """

    def __init__(self, models_dir="models", outputs_dir="outputs", model: str = "",
                 device: str | None = None, max_pixels: int | None = None,
                 queue_size: int = 16, hub_ids: tuple[str, ...] = (), compile: str = "auto",
                 cache_dir=None, limits: Limits | None = None, allow_downloads: bool = True,
                 preview_decoder: str = "approx", lora_rank: int = LORA_HOT_RANK):
        if preview_decoder not in PREVIEW_DECODERS:
            raise ValueError(f"preview_decoder must be one of {', '.join(PREVIEW_DECODERS)} "
                             f"(got {preview_decoder!r})")
        self.preview_decoder = preview_decoder
        # family -> its TinyDecoder, or why it could not be loaded (loaded at a job's first
        # need; a missing folder is looked for again at each job, so one added is used).
        self._tiny_decoders: dict[str, object] = {}
        self.registry = ModelRegistry(models_dir, hub_ids, allow_downloads)
        compiled.resolve(compile, "cpu")  # refuses an unknown mode now, not at the first load
        self.compile_mode = compile
        if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or \
                not 0 <= lora_rank <= LORA_HOT_RANK_MAX:
            raise ValueError(f"lora_rank must be a whole number from 0 to {LORA_HOT_RANK_MAX} "
                             f"(got {lora_rank!r})")
        self.lora_rank = lora_rank
        self.cache_dir = Path(cache_dir) if cache_dir else \
            Path(models_dir).resolve().parent / "cache" / "compile"
        self._fast: compiled.FastPath | None = None
        self.outputs_dir = Path(outputs_dir)
        # The configured model: the argument, else the environment, else the registry's choice.
        self.model = model or os.environ.get("IMG2IMG_MODEL", "") or self.registry.default_name()
        self._device = device
        self.limits = limits or Limits()
        if max_pixels is not None:
            self.limits = dataclasses.replace(self.limits, max_pixels=max_pixels)
        self.queue_size = queue_size
        self._queue: "queue.Queue[Job]" = queue.Queue()
        self._waiting: list[Job] = []
        self._lock = threading.Lock()
        self._pipe = None
        self._pipe_key: tuple | None = None
        self._family: str | None = None
        self._pipe_source = None
        self._pipe_dtype = None
        self.adapters: Adapters | None = None
        self._base_scheduler_config = None
        self._worker: threading.Thread | None = None
        self._turns: list[_LoadTurn] = []  # model switches waiting their turn (load_model)
        self.current: Job | None = None
        self._detectors: Detectors | None = None
        self._detectors_lock = threading.Lock()
        # Held while a job runs and while a control-map preview runs a detector model: one user
        # at a time on the device, so a preview never competes with a job for GPU memory.
        self._device_lock = threading.Lock()

    # -- information -------------------------------------------------------------------------
    @property
    def max_pixels(self) -> int:
        return self.limits.max_pixels

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = "cuda" if torch.cuda.is_available() else "cpu"
        return self._device

    @property
    def detectors(self) -> Detectors:
        """The depth / pose detector models, loaded once for jobs and previews alike (the
        worker and a preview may ask at the same moment: built once, under a lock)."""
        with self._detectors_lock:
            if self._detectors is None:
                self._detectors = Detectors(self.device)
            return self._detectors

    @property
    def detectors_dir(self) -> Path:
        return self.registry.models_dir / DETECTOR_SUBDIR

    def control_preview(self, picture, preprocessor: str, detector: str = "", low: float = 100,
                        high: float = 200):
        """What a ControlNet unit with this preprocessor would see of `picture` (PIL), at the
        picture's size. InputError names the detector or the thresholds when they cannot be
        used."""
        detect = None
        if preprocessor in DETECTOR_KINDS:
            try:
                folder = find_detector(self.detectors_dir, preprocessor, detector)
            except ValueError as exc:
                raise InputError("detector", str(exc)) from None
            detect = functools.partial(self.detectors.control_map, folder)
        try:
            if detect is None:
                return control_image(picture, preprocessor, None, low, high)
            with self._device_lock:  # after the running job, never beside it
                return control_image(picture, preprocessor, None, low, high, detect)
        except ValueError as exc:
            raise InputError("detector" if detect else "low", str(exc)) from None

    def models(self) -> list[str]:
        """Names for the model picker (scanned checkpoints, hub ids, built-in models)."""
        return self.registry.names()

    def loaded_model(self) -> str | None:
        return self._pipe_key[0][1] if self._pipe_key else None

    def is_tiny(self, name: str = "") -> bool:
        try:
            return self.registry.resolve(name or self.model).kind == "tiny"
        except ModelError:
            return False

    # -- jobs --------------------------------------------------------------------------------
    def submit(self, request: JobRequest | GenerationParams, init_image=None, save: bool = True,
               inputs: Inputs | None = None, owner: str | None = None) -> Job:
        """Queue a job (the interface's form: one JobRequest). Raises QueueFull, and InputError
        when the request names a model or adapter outside the models folder (unless
        request.allow_paths).

        In-process code may pass the parts instead (params, init_image, save, inputs, owner):
        a request with allow_paths, since such a caller can open any file itself anyway.
        `init_image`: a PIL image, a path or bytes (None only with latents). owner: the
        logged-in user it runs for; their files are saved in a folder of their own (see
        outputs.day_folder)."""
        params = request.params if isinstance(request, JobRequest) else request
        if not isinstance(params, GenerationParams):
            raise TypeError("params must be a GenerationParams")
        task = "img2img"
        if isinstance(request, JobRequest):
            task = self.check_request(request)
            init_image, save, owner = request.init_image, request.save, request.owner
            inputs = Inputs(ip_image=request.ip_image, mask=request.mask,
                            control_images=request.control_images,
                            latents=self._latents_file(request.latents),
                            color_reference=request.color_reference,
                            infotext_extra=request.infotext_extra)
        job = Job(self, params, init_image, save, inputs or Inputs(), owner, task)
        if isinstance(request, JobRequest) and isinstance(request.latents, (bytes, bytearray)):
            job._temporary.append(inputs.latents)
        with self._lock:
            mine = [j for j in self._waiting + [self.current] if j is not None]
            refusal = (self.limits.user_refusal(owner, mine)
                       or (f"the studio is busy: {len(self._waiting)} jobs are waiting; try "
                           "again in a moment" if len(self._waiting) >= self.queue_size
                           else None))
            if refusal:
                for path in job._temporary:
                    path.unlink(missing_ok=True)
                raise QueueFull(refusal)
            self._waiting.append(job)
            self._queue.put(job)
            self._ensure_worker()
        return job

    def _ensure_worker(self) -> None:
        """Start the worker thread if it is not running (call holding self._lock)."""
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._serve, name="img2img-engine",
                                            daemon=True)
            self._worker.start()

    def check_request(self, request: JobRequest) -> str:
        """The checks submit makes before queueing: the task (InputError naming the field when
        it is unknown or carries what it cannot use) and, unless request.allow_paths, the path
        policy on every model, adapter and detector name. The request's task. Another engine
        that serves this engine's models folder (the cluster's) makes the same checks here.
        Also the limits (limits.Limits.check: InputError naming the field and the limit)."""
        task = _check_task(request)
        self.limits.check(request.params)
        if not request.allow_paths:
            self.registry.confine(request.params, self.model,
                                  list_detectors(self.detectors_dir))
        return task

    def generate(self, request: JobRequest | GenerationParams, init_image=None,
                 save: bool = True, on_progress: Callable[[Progress], None] | None = None,
                 inputs: Inputs | None = None) -> Result:
        """Submit and wait: the simple synchronous call the CLI and tests use (the request, or
        its parts as for submit)."""
        job = (self.submit(request) if isinstance(request, JobRequest)
               else self.submit(request, init_image, save, inputs))
        for progress in job.updates():
            if on_progress:
                on_progress(progress)
        return job.result()

    @staticmethod
    def _latents_file(latents):
        """A request's latents as the worker reads them: bytes (from another process) go to a
        private temporary file, read once when the job starts."""
        if not isinstance(latents, (bytes, bytearray)):
            return latents
        handle, name = tempfile.mkstemp(prefix="img2img-latents-", suffix=".safetensors")
        with os.fdopen(handle, "wb") as out:
            out.write(latents)
        return Path(name)

    def load_model(self, name: str = "", listed_only: bool = True) -> str:
        """Load `name` (a listed model; default: the studio's model) in its turn in the job
        queue: after the running job and those queued before it, before those queued after
        (so a model switch neither waits for a queue that never empties nor pushes ahead of
        jobs that would load their own model back); returns once loaded, with the resolved
        model's location. ModelError when it cannot be loaded (the resident model stays),
        InputError for a name that is not listed. listed_only=False: any name a job may use
        (a cluster replica loads a job's model before the job; its front door has already
        applied the path policy)."""
        name = (name or "").strip()
        if listed_only and name and name not in self.models() and name != self.model:
            raise InputError("model", f"{name!r} is not one of this studio's models")
        if threading.current_thread() is self._worker:
            self.pipeline(name)  # asked from inside a job: its turn is now
            return self.loaded_model() or ""
        turn = _LoadTurn(name)
        with self._lock:
            self._turns.append(turn)
            self._queue.put(turn)
            self._ensure_worker()
        turn.done.wait()
        with self._lock:
            self._turns.remove(turn)
        if turn.error is not None:
            raise turn.error
        return self.loaded_model() or ""

    def queue_status(self) -> QueueStatus:
        with self._lock:
            running = self.current.id if self.current is not None else None
            return QueueStatus(running=running, waiting=len(self._waiting),
                               capacity=self.queue_size)

    def running_job(self) -> Job | None:
        """The job running now, whoever submitted it; None when idle."""
        with self._lock:
            return self.current

    def memory_status(self) -> dict:
        """Memory now, in bytes (see interface.EngineAPI.memory_status). Cheap: a few reads of
        /proc and of the CUDA allocator's counters, nothing that waits for the GPU's work."""
        cuda = None
        if self.device.startswith("cuda") and torch.cuda.is_available():
            device = torch.device(self.device)
            free, total = torch.cuda.mem_get_info(device)
            cuda = {"free": free, "used": total - free, "total": total,
                    "allocated": torch.cuda.memory_allocated(device),
                    "peak_allocated": torch.cuda.max_memory_allocated(device)}
        return {"ram": _ram(), "process_rss": _process_rss(), "cuda": cuda}

    # -- listings (the registry owns discovery) ----------------------------------------------
    def list_models(self) -> list[ModelInfo]:
        infos = []
        scanned = {source.name: source for source in self.registry.scan()}
        for name in self.models():
            # One scan for all names; resolve (a scan each) only the few others.
            try:
                source = scanned.get(name) or self.registry.resolve(name)
            except ModelError:
                continue
            family = (self.family if self.loaded_model() == source.location
                      else self.registry.file_family(source))
            digest = self.registry.known_hash(source, full=True)
            infos.append(ModelInfo(name=name, kind=source.kind, family=family,
                                   hash=digest[:10], sha256=digest,
                                   licence=hub.licence(source)))
        return infos

    @property
    def models_dir(self) -> Path:
        return self.registry.models_dir

    def check_model(self, name: str = "") -> str:
        """Where `name` (default: the studio's model) would load from; ModelError when it is
        not a model this engine can load (checked at start-up, before any job)."""
        return self.registry.resolve(name or self.model).location

    @property
    def allow_downloads(self) -> bool:
        """See the class's allow_downloads."""
        return self.registry.allow_downloads

    def check_adapter(self, kind: str, name: str, field: str, hub: bool = False) -> str:
        """The name a job may use for the adapter `name` of `kind` (IP_ADAPTER_SUBDIR or
        CONTROLNET_SUBDIR): listed, a path inside its folder (given back as its name) or, with
        `hub`, a hub id; InputError naming `field` otherwise."""
        return self.registry.confine_adapter(kind, name, field, hub=hub)

    def list_loras(self) -> list[str]:
        return self.registry.loras()

    def list_controlnets(self) -> list[str]:
        return self.registry.adapters(CONTROLNET_SUBDIR)

    def list_ip_adapters(self) -> list[str]:
        return self.registry.adapters(IP_ADAPTER_SUBDIR)

    def list_detectors(self) -> dict[str, str]:
        return {name: kind for name, (kind, _) in list_detectors(self.detectors_dir).items()}

    @staticmethod
    def list_samplers() -> list[str]:
        return schedulers.all_names()

    def cancel_all(self) -> None:
        """Cancel every waiting job and the running one (it stops within one step), and every
        model switch waiting its turn."""
        with self._lock:
            jobs = list(self._waiting) + ([self.current] if self.current is not None else [])
            for turn in self._turns:
                turn.cancel()
        for job in jobs:  # outside the lock: cancel() takes it to drop a waiting job
            job.cancel()

    def _position(self, job: Job) -> int:
        with self._lock:
            if job in self._waiting:
                return self._waiting.index(job) + (1 if self.current is not None else 0)
        return 0

    def _drop_queued(self, job: Job) -> None:
        """Finish a cancelled job that is still waiting, without waiting for the running one."""
        with self._lock:
            if job not in self._waiting:
                return
            self._waiting.remove(job)
            job._finish(None, Cancelled("cancelled while waiting in the queue"))

    def _serve(self) -> None:
        while True:
            job = self._queue.get()
            if isinstance(job, _LoadTurn):
                job.run(self)
                continue
            with self._lock:
                if job._done.is_set():
                    continue  # cancelled while it waited: already finished
                if job in self._waiting:
                    self._waiting.remove(job)
                self.current = job
            try:
                if job.cancel_requested.is_set():
                    raise Cancelled("cancelled while waiting in the queue")
                job.state = "running"
                budget = None
                if self.limits.job_timeout:
                    # The time budget: stopped as an Interrupt stops it (within a step).
                    budget = threading.Timer(self.limits.job_timeout, job._time_out)
                    budget.daemon = True
                    budget.start()
                try:
                    with self._device_lock:
                        result = self._run(job)
                finally:
                    if budget is not None:
                        budget.cancel()
                if job.timed_out and result.interrupted:
                    result.notice = "; ".join(filter(None, [self.limits.timeout_notice(),
                                                            result.notice]))
            except BaseException as exc:  # noqa: BLE001 - the worker must survive any job
                if job.timed_out and isinstance(exc, Cancelled):
                    exc = TimedOut(self.limits.timeout_notice().replace(
                        "; the images finished by then are kept", " before its first image"))
                job._finish(None, self._explain_failure(exc))
            else:
                job._finish(result, None)
            finally:
                with self._lock:
                    self.current = None

    def _explain_failure(self, exc: BaseException) -> BaseException:
        """Out-of-memory becomes advice, with the memory given back for the next job."""
        if type(exc).__name__ != "OutOfMemoryError":
            return exc
        gc.collect()
        try:
            torch.cuda.empty_cache()
        except RuntimeError:
            pass
        return OutOfMemory("out of GPU memory: use a smaller size or batch size, or turn on "
                           "attention slicing, VAE tiling or CPU offload (or the Low VRAM preset)")

    # -- the pipeline ------------------------------------------------------------------------
    def _torch_dtype(self, dtype: str):
        if dtype == "auto":
            dtype = "fp16" if self.device.startswith("cuda") else "fp32"
        if dtype == "fp16" and self.device == "cpu":
            raise InputError("dtype", "dtype fp16 needs a CUDA GPU; on the CPU use fp32 or bf16")
        if dtype == "bf16" and self.device.startswith("cuda") and not torch.cuda.is_bf16_supported():
            raise InputError("dtype", "dtype bf16 is not supported by this GPU; use fp16 or fp32")
        return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]

    def pipeline(self, model: str = "", dtype: str = "auto", cpu_offload: str = "auto"):
        """The resident pipeline for (model, dtype), loading it (and dropping the old one) if
        needed; cpu_offload (auto / on / off) decides where a newly loaded model goes (see
        memory.place). Call only from the worker thread, or when no job can run."""
        source = self.registry.resolve(model or self.model)
        torch_dtype = self._torch_dtype(dtype)
        key = (source.key, str(torch_dtype))
        if self._pipe_key != key:
            previous = (self._pipe_source, self._pipe_dtype) if self._pipe is not None else None
            # Read the new model (on the CPU) before dropping the working one: a file that
            # fails to load must not leave the studio without a model.
            try:
                pipe, family = load(source, torch_dtype)
            except ModelError as exc:
                if previous is None:
                    raise
                raise ModelError(f"{exc} (still loaded, and used when no model is named: "
                                 f"{previous[0].name})") from exc
            self.unload()
            try:
                self._install(source, torch_dtype, pipe, family, cpu_offload)
            except Exception as exc:
                del pipe
                self.unload()
                if previous is None:
                    raise
                # Placing it failed (out of memory, most likely): the previous model comes back.
                self._install(*previous, *load(*previous), cpu_offload)
                raise ModelError(f"{source.name} could not be placed on {self.device} "
                                 f"({type(exc).__name__}: {exc}); {previous[0].name} was loaded "
                                 "again") from exc
        return self._pipe

    def _install(self, source, torch_dtype, pipe, family: str, cpu_offload: str) -> None:
        """Place a loaded pipeline on the device and make it the resident one."""
        pipe = memory.place(pipe, self.device, cpu_offload)
        pipe.set_progress_bar_config(disable=True)
        self._pipe, self._family, self._pipe_source = pipe, family, source
        self._pipe_key, self._pipe_dtype = (source.key, str(torch_dtype)), torch_dtype
        self._base_scheduler_config = dict(pipe.scheduler.config)
        self._close_fast_path()
        if compiled.resolve(self.compile_mode, self.device):
            try:
                self._fast = compiled.FastPath(
                    pipe.unet, self.device, self.cache_dir,
                    compiled.cache_name(source.key, self.device, torch_dtype),
                    vae=compiled.vae_to_compile(pipe, family))
            except Exception as exc:  # noqa: BLE001 - no compiled path is no failure
                log.warning("the compiled UNet and VAE are off (%s: %s); jobs run eager",
                            type(exc).__name__, exc)
        # The LoRA hot slot serves the compiled graphs only: without them, named adapters.
        self.adapters = Adapters(pipe, lora_dir=self.registry.models_dir / LORA_SUBDIR,
                                 detectors=self.detectors, device=self.device, family=family,
                                 lora_hot_rank=self.lora_rank if self._fast is not None else 0)

    def _close_fast_path(self) -> None:
        if self._fast is not None:
            self._fast.close()
            self._fast = None

    def warm_compile(self, width: int | None = None, height: int | None = None) -> str:
        """Start compiling the UNet and VAE for the default job at start-up, so the first
        clicks at that size find it ready: loads the model, then queues one 1-step job at
        `width` x `height` (default: the model's native size) with the page's default
        settings, which runs eager at once and hands the size to the background compiler.
        Returns the size ('' when the compiled path is off). Call from a thread: the model
        load takes a while."""
        if not compiled.resolve(self.compile_mode, self.device):
            return ""
        self.load_model()
        pipe = self._pipe
        native = pipe.unet.config.sample_size * getattr(pipe, "vae_scale_factor", 8)
        width, height = width or native, height or native
        defaults = GenerationParams()
        request = JobRequest(defaults.replace(steps=1, strength=1.0, width=width, height=height,
                                              seed=0), Image.new("RGB", (width, height), "gray"),
                             save=False)
        self.submit(request).result()
        return f"{width}x{height}"

    def wait_for_compiles(self, timeout: float) -> bool:
        """Wait until the compiled path has nothing left to compile (the benchmark does, so
        that its timed jobs run compiled); whether it got there in time."""
        fast = self._fast
        return fast.wait_idle(timeout) if fast is not None else True

    def compile_status(self) -> dict | None:
        """The compiled sizes of the UNet and VAE (ready, compiling, failed); None when the
        compiled path is off."""
        fast = self._fast
        return fast.status() if fast is not None else None

    def unload(self) -> None:
        """Drop the resident pipeline and give its memory back."""
        if self._pipe is None:
            return
        self._close_fast_path()
        self._pipe = self._pipe_key = self.adapters = None
        self._tiny_decoders.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @property
    def family(self) -> str | None:
        """The loaded model's family ('sd1', 'sd2' or 'sdxl'; None before one is loaded), read
        once from the model source when it was loaded."""
        return self._family if self._pipe is not None else None

    def step_previewer(self, family: str | None = None, dtype=None):
        """(make, notice): `make(latents)` turns a step's latents into preview pictures, with
        the preview decoder asked for; notice says why the rough previews stand in for the
        tiny VAE's ('' when nothing is missing). family: default the loaded model's."""
        family = family or self.family or "sd1"
        rough = functools.partial(previews.latents_to_rgb, family=family)
        if self.preview_decoder != "tiny":
            return rough, ""
        decoder = self._tiny_decoders.get(family)
        if decoder is None:
            folder = previews.tiny_vae_folder(self.models_dir, family)
            if folder is None:
                return rough, (f"previews are the rough ones: no tiny VAE for "
                               f"{FAMILY_LABELS.get(family, family)} in models/"
                               f"{TINY_VAE_SUBDIR}/{TINY_VAE_NAMES[family]}")
            try:
                decoder = previews.TinyDecoder(folder, self.device, dtype or torch.float32)
            except Exception as exc:  # noqa: BLE001 - previews must never fail a job
                decoder = (f"previews are the rough ones: the tiny VAE in models/"
                           f"{TINY_VAE_SUBDIR}/{folder.name} could not be loaded "
                           f"({type(exc).__name__})")
                log.warning("preview decoder: %s", decoder)
            self._tiny_decoders[family] = decoder
        if isinstance(decoder, str):
            return rough, decoder

        def make(latents):
            try:
                return decoder(latents)
            except Exception as exc:  # noqa: BLE001 - a preview never fails the job
                log.warning("tiny-VAE preview failed (%s); a rough one is shown", exc)
                return rough(latents)
        return make, ""

    # -- one job -----------------------------------------------------------------------------
    def _run(self, job: Job) -> Result:
        started = time.monotonic()
        params, inputs = job.params, job.inputs
        for field in ("prompt", "negative_prompt"):
            try:
                prompts.parse(getattr(params, field))
            except prompts.PromptSyntaxError as exc:
                raise InputError(field, f"{field}: {exc}") from None
        latents = self._latent_input(inputs.latents)
        init = None
        text_job = job.task == "txt2img"
        first_frame = ""  # an animated init image: only its first frame is used
        if text_job:
            # Nothing is denoised part-way: every step runs, and the infotext says strength 1.
            params = params.replace(strength=1.0)
            width, height = text_size(params.width, params.height, self.max_pixels)
        elif latents is not None:
            # Latents fix the size; an init image, if any, is only the inpaint/ControlNet source.
            height, width = latents.shape[-2] * 8, latents.shape[-1] * 8
            if job.init_image is not None:
                init = imaging.fit(imaging.load_image(job.init_image, "init_image"), width, height,
                                   params.resize_mode)
        else:
            init = imaging.load_image(job.init_image, "init_image")
            first_frame = imaging.frames_notice(init)
            width, height = imaging.target_size(init, params.width, params.height,
                                                self.max_pixels)
            init = imaging.fit(init, width, height, params.resize_mode)
        mask = None
        if inputs.mask is not None and not text_job:
            # A mask painted over the uploaded picture follows it through the resize.
            mask = imaging.load_image(inputs.mask, "mask", keep_alpha=True)
            if mask.size != (width, height):
                mask = imaging.fit(mask, width, height, params.resize_mode)
        seed = params.seed if params.seed >= 0 else random.randint(0, MAX_SEED)
        source = self.registry.resolve(params.model or self.model)
        model_hash = self.registry.model_hash(source)
        batches = params.batch_count
        n = params.batch_size

        def text_for(image_seed: int) -> str:
            return infotext.format(params, seed=image_seed, width=width, height=height,
                                   model_name=source.name, model_hash=model_hash,
                                   inpaint=mask is not None, extra=inputs.infotext_extra)

        results: list[ImageResult] = []
        notices: dict[str, None] = dict.fromkeys(filter(None, [first_frame]))  # ordered, once
        notice = ""
        interrupted = False
        if params.effective_steps < 1:
            if init is None:
                raise InputError("strength", "with latents as input, steps x strength must be at "
                                 "least one step (the latents are not a picture yet)")
            # Nothing to denoise: the library would fail deep inside the VAE; the guide says
            # strength 0 returns the original, so every image is the resized init image.
            notice = ("strength 0 returns the original image" if params.strength == 0 else
                      f"steps x strength = {params.steps} x {params.strength:g} is below one step: "
                      "the original image is returned")
            for k in range(batches * n):
                image_seed = (seed + k) % (MAX_SEED + 1)
                results.append(ImageResult(init.copy(), image_seed, text_for(image_seed)))
        else:
            job._emit(Progress("loading", elapsed=time.monotonic() - started))
            pipe = self.pipeline(params.model or self.model, params.dtype, params.cpu_offload)
            params = self._name_detectors(self._name_adapters(params))
            limit = params.pag_scale > 0 and self.adapters.pag_limit(
                _pipeline_mode(job.task, mask),
                controlnets=bool(params.controlnets), latent_input=latents is not None)
            if limit:
                # The job runs without PAG rather than failing on the default PAG scale; the
                # notice and the infotext say so.
                params = params.replace(pag_scale=0.0)
                notices[f"PAG was off for this job: {limit}"] = None
            for b in range(batches):
                if job.cancel_requested.is_set():
                    interrupted = True
                    break
                if b > 0:
                    # A skip ends one batch; one asked while the job waited ends its first.
                    job.skip_requested.clear()
                seeds = [(seed + b * n + i) % (MAX_SEED + 1) for i in range(n)]
                images, stopped = self._sample(pipe, job, params, latents, init, mask, seeds,
                                               BatchPlace(b, batches, started), notices,
                                               (width, height))
                for img, s in zip(images, seeds):
                    if params.output_type == "latent":
                        preview = previews.latents_to_rgb(img[None], self.family)[0]
                        results.append(ImageResult(preview, s, text_for(s), latents=img.cpu()))
                    else:
                        results.append(ImageResult(img, s, text_for(s)))
                if stopped:
                    interrupted = True
                    break
        if job.cancel_requested.is_set() and not results:
            raise Cancelled("interrupted before the first image was ready")
        if not results:
            # Every batch was skipped inside its first step (see stopping.py).
            raise Cancelled("skipped before the first image was ready")
        notice = "; ".join(filter(None, [notice, *notices]))
        if job.save and not interrupted:
            job._emit(Progress("saving", elapsed=time.monotonic() - started))
            unsaved = outputs.save_all(results, self.outputs_dir, job.owner, self.write_latents)
            notice = "; ".join(filter(None, [notice, unsaved]))
        return Result(images=results, params=params, seed=seed, width=width, height=height,
                      effective_steps=params.effective_steps, model=source.name,
                      elapsed=time.monotonic() - started, interrupted=interrupted, notice=notice,
                      init=init)

    @staticmethod
    def _latent_input(latents):
        if latents is None:
            return None
        tensor = load_latents(latents)[0] if isinstance(latents, (str, Path)) else latents
        if getattr(tensor, "ndim", 0) == 3:
            tensor = tensor[None]
        if getattr(tensor, "ndim", 0) != 4 or tensor.shape[0] != 1:
            raise InputError("latents", "latents must be one (1, 4, h/8, w/8) tensor")
        return tensor

    @staticmethod
    def write_latents(item: ImageResult, folder: Path) -> Path:
        """A latent result as a numbered .safetensors file in `folder` (its infotext inside)."""
        data = latents_bytes(item.latents[None], {"infotext": item.infotext})
        return outputs.write_numbered(data, folder, item.seed, ".safetensors")

    def _sample(self, pipe, job: Job, params: GenerationParams, latents, init, mask,
                seeds: list[int], place: BatchPlace, notices: dict[str, None],
                size: tuple[int, int]):
        """One batch of `size` (width, height): (images or latents, cancelled). A skipped batch
        is not cancelled: its images are decoded from where sampling stopped."""
        # One Brownian tree per image (DPM++ SDE), so image k reproduces alone with its seed.
        noise_seed = seeds if len(seeds) > 1 else seeds[0]
        pipe.scheduler = schedulers.build(params.scheduler, self._base_scheduler_config, noise_seed)
        width, height = size
        family = self.family
        generator_device = "cpu" if self.device == "mps" else self.device
        generators = [torch.Generator(generator_device).manual_seed(s) for s in seeds]
        mode = _pipeline_mode(job.task, mask)
        if mode == "txt2img":
            image = None
        elif latents is not None and mode == "img2img":
            image = latents.to(self.device, pipe.vae.dtype).repeat(len(seeds), 1, 1, 1)
        elif mode == "img2img":
            image = [init] * len(seeds)
        else:
            image = init
        prompt, prompt_loras = self.adapters.parse_prompt(params.prompt)
        loras = {lora.name: lora.weight for lora in params.loras}
        loras.update(dict(prompt_loras))
        ip = None
        if params.ip_adapter and job.inputs.ip_image is not None:
            ip = IPAdapterSpec(
                self.registry.adapter_location(IP_ADAPTER_SUBDIR, params.ip_adapter),
                image=imaging.load_image(job.inputs.ip_image, "ip_adapter_image"),
                scale=params.ip_adapter_scale)
        elif params.ip_adapter:
            notices["IP-Adapter not applied: no reference image"] = None
        call, kwargs = self.adapters.prepare(JobAdapters(
            mode, image=image, size=(width, height), loras=list(loras.items()), ip_adapter=ip,
            pag_scale=params.pag_scale,
            controlnets=self._controlnet_specs(params, init, job.inputs.control_images),
            mask=mask, mask_blur=params.mask_blur,
            inpaint_full_res=params.inpaint_area == "only masked",
            padding=params.inpaint_padding, masked_content=params.masked_content, seed=seeds[0],
            output_type="latent" if params.output_type == "latent" else "pil",
            strength=None if mode == "txt2img" else params.strength,
        ))
        # The text-to-image pipelines have no strength: they always start from pure noise.
        strength = {} if mode == "txt2img" else {"strength": params.strength}
        notices.update(dict.fromkeys(self.adapters.notices))
        # Memory modes after the adapters: an IP-Adapter loaded or removed just now replaced the
        # attention processors, and slicing is set from the ones installed.
        notices.update(dict.fromkeys(memory.apply(pipe, params, self.device, width * height)))
        make_preview, why_rough = self.step_previewer(family, pipe.unet.dtype)
        if why_rough:
            notices[why_rough] = None
        clock = _StepClock(started=time.monotonic())
        on_cuda = self.device.startswith("cuda")
        fast = self._fast
        # An Interrupt, a Skip or the time budget stops the eager UNet inside a step (see
        # stopping.py); the compiled one stops between steps.
        stop = None if fast is not None else stopping.InStepStop(
            pipe.unet, lambda: job.cancel_requested.is_set() or job.skip_requested.is_set())

        def on_step(pipeline, step, timestep, kwargs):
            if stop is not None:
                kwargs["latents"] = stop.step_end(kwargs["latents"])
                if stop.abandoned:
                    # The step was left half done: the pipeline decodes the last finished one.
                    pipeline._interrupt = True
                    clock.stopped = job.cancel_requested.is_set()
                    return kwargs
            total = pipeline.num_timesteps
            now = time.monotonic()
            done = step + 1
            rate = (now - clock.started) / done
            remaining = rate * (total - done) + rate * total * (place.count - place.index - 1)
            preview = None
            wait = max(PREVIEW_INTERVAL, clock.preview_cost * (1 / PREVIEW_SHARE - 1))
            # The last step's preview shows where sampling ended; the result follows at once,
            # so a costly preview is not made for it.
            last = done == total and wait == PREVIEW_INTERVAL
            if now - clock.last_preview >= wait or last:
                # Reading latents back waits for the GPU; a few previews a second is live enough
                # and keeps the other steps free of that stall.
                if on_cuda:
                    torch.cuda.synchronize()  # the wait for the step is not the preview's cost
                made = time.monotonic()
                preview = make_preview(kwargs["latents"])[0]
                clock.last_preview = time.monotonic()
                clock.preview_cost = clock.last_preview - made
            job._emit(Progress("sampling", step=done, total=total, batch_index=place.index,
                               batch_count=place.count, elapsed=now - place.job_started,
                               eta=remaining, preview=preview))
            if job.cancel_requested.is_set():
                # The library checks this flag before the next step and still decodes what it has.
                pipeline._interrupt = True
                clock.stopped = True
            elif job.skip_requested.is_set():
                # The same stop for this batch alone: the job goes on with the next one.
                pipeline._interrupt = True
            return kwargs

        # Embeddings rather than text: the prompt syntax (weights, BREAK, any length) is read
        # here, the same for every pipeline (prompt_encoding.py).
        embeddings = encode_prompts(self._pipe, prompt, params.negative_prompt, len(seeds))
        reuse = draft.FeatureReuse(pipe.unet, params.draft)
        if fast is not None:
            why_eager = self._eager_reason(pipe, bool(loras), ip is not None, params.draft)
            if why_eager:
                notices[f"compiled UNet not used: {why_eager}"] = None
            fast.start_job()
            if not memory.offloaded(pipe):
                # Offload moves each weight alone, splitting the q/k/v views of the compiled
                # UNet's joined projections (compiled.py); they are joined again once it ends.
                fast.fuse()
            fast.lora = self.adapters.loras.hot_generation
            fast.allowed = not why_eager
            # Tiling decodes tiles of other shapes, in the mode for too little memory: eager.
            fast.vae_allowed = not (memory.offloaded(pipe) or getattr(pipe.vae, "use_tiling",
                                                                      False))
        try:
            with stop if stop is not None else contextlib.nullcontext(), reuse:
                output = call(
                    **embeddings,
                    **strength,
                    num_inference_steps=params.steps,
                    guidance_scale=params.guidance_scale,
                    generator=generators,
                    callback_on_step_end=on_step,
                    callback_on_step_end_tensor_inputs=["latents"],
                    **kwargs,
                )
        except stopping.NothingSampled:
            # Stopped inside the batch's first step: no image from it (an Interrupt keeps the
            # batches done before; a Skip goes on with the next).
            return [], job.cancel_requested.is_set()
        finally:
            if fast is not None:
                fast.allowed = fast.vae_allowed = False
        compile_notice = fast.job_notice() if fast is not None else ""
        if compile_notice:
            notices[compile_notice] = None
        drafted = draft.notice(reuse)
        if drafted:
            notices[drafted] = None
        images = output.images
        if params.color_correction:
            images = self._color_correct(images, params, init, job.inputs, notices)
        if mask is not None and params.output_type == "image":
            # Outside the mask the result is the original picture, pixel for pixel.
            images = overlay_original(images, init, mask, params.mask_blur)
            notices[INPAINT_NOTICE] = None
        return images, clock.stopped

    def _eager_reason(self, pipe, loras: bool, ip_adapter: bool, drafting: int = 0) -> str:
        """Why this job cannot use the compiled UNet ('' when it can)."""
        if drafting:
            return "draft mode runs eager (it skips blocks inside the UNet)"
        lora_state = self.adapters.loras
        if loras and not lora_state.hot_generation:
            return lora_state.why_eager or "LoRA hotswap is off (--lora-rank 0), so LoRA jobs run eager"
        if ip_adapter:
            return "IP-Adapter jobs run eager"
        if memory.offloaded(pipe):
            return "CPU offload moves the weights during the call; it runs eager"
        return ""

    @staticmethod
    def _color_correct(images, params: GenerationParams, init, inputs: Inputs,
                       notices: dict[str, None]):
        """The decoded pictures with colours matched to the reference (params.color_correction).

        Runs before the inpaint overlay, so the pixels outside the mask are still the original's
        exactly afterwards. Latent output is left alone (the latents are not colours yet), and
        so is a job started from latents without a picture to match: a notice says so."""
        if params.output_type != "image":
            notices["Colour correction not applied: it works on pictures, not on latent "
                    "output"] = None
            return images
        reference = inputs.color_reference
        if reference is not None:
            reference = imaging.load_image(reference, "color_reference")
            if init is not None and reference.size != init.size:
                reference = imaging.fit(reference, *init.size, params.resize_mode)
        else:
            reference = init
        if reference is None:
            notices["Colour correction not applied: no init image to match the colours to"] = None
            return images
        return match_all(images, reference)

    def _detector_folder(self, index: int, unit) -> Path | None:
        if unit.preprocessor not in DETECTOR_KINDS:
            return None
        try:
            return find_detector(self.detectors_dir, unit.preprocessor, unit.detector)
        except ValueError as exc:
            raise InputError(f"controlnets[{index}].detector",
                             f"ControlNet {index + 1}: {exc}") from None

    def _name_adapters(self, params: GenerationParams) -> GenerationParams:
        """The settings with ControlNet and IP-Adapter models inside the models folder named
        relative to it, as LoRAs are, so the infotext holds no server paths."""
        ip = self.registry.adapter_name(IP_ADAPTER_SUBDIR, params.ip_adapter)
        units = [unit.model_copy(update={
                     "model": self.registry.adapter_name(CONTROLNET_SUBDIR, unit.model)})
                 for unit in params.controlnets]
        if ip == params.ip_adapter and units == params.controlnets:
            return params
        return params.replace(ip_adapter=ip, controlnets=[u.model_dump() for u in units])

    def _name_detectors(self, params: GenerationParams) -> GenerationParams:
        """The settings with each unit's detector named as it will be used (the one an empty
        name picks, none for preprocessors without one), so the infotext can reproduce it."""
        units = []
        for index, unit in enumerate(params.controlnets):
            folder = self._detector_folder(index, unit)
            name = ""
            if folder is not None:
                try:
                    name = folder.resolve().relative_to(self.detectors_dir.resolve()).as_posix()
                except ValueError:
                    name = str(folder)
            units.append(unit.model_copy(update={"detector": name}))
        if [u.detector for u in units] == [u.detector for u in params.controlnets]:
            return params
        return params.replace(controlnets=[u.model_dump() for u in units])

    def _controlnet_specs(self, params: GenerationParams, init, uploads) -> list[ControlNetSpec]:
        specs = []
        uploads = list(uploads or [])
        for index, unit in enumerate(params.controlnets):
            field = f"controlnets[{index}]"
            if unit.source == "init image":
                if init is None:
                    raise InputError(field, f"ControlNet {index + 1}: its source is the init "
                                     "image, but there is none (only latents, or a txt2img "
                                     "job): upload a control image")
                picture = init
            else:
                upload = uploads[index] if index < len(uploads) else None
                if upload is None:
                    raise InputError(field, f"ControlNet {index + 1}: no control image uploaded "
                                     "(or set its source to the init image)")
                picture = imaging.load_image(upload, f"control image {index + 1}")
            folder = self._detector_folder(index, unit)
            specs.append(ControlNetSpec(self.registry.adapter_location(CONTROLNET_SUBDIR,
                                                                       unit.model),
                                        image=picture, scale=unit.scale,
                                        start=unit.start, end=unit.end,
                                        preprocessor=unit.preprocessor, low=unit.low,
                                        high=unit.high, detector=str(folder or "")))
        return specs


def _pipeline_mode(task: str, mask) -> str:
    """The adapters' mode of a job: txt2img, inpaint (a mask was given) or img2img."""
    return "txt2img" if task == "txt2img" else "inpaint" if mask is not None else "img2img"


def _check_task(request: JobRequest) -> str:
    """The request's task, refused (InputError naming the field) when it is unknown or when a
    text-to-image request carries what only img2img uses (its ControlNets take uploaded
    control images)."""
    task = request.task
    if task not in TASKS:
        raise InputError("task", f"task must be one of: {', '.join(TASKS)} (got {task!r})")
    if task == "txt2img":
        for field, value in (("init_image", request.init_image), ("mask", request.mask),
                             ("latents", request.latents)):
            if value is not None:
                raise InputError(field, f"{field}: a txt2img job makes its picture from the "
                                 "prompt alone; send no init image, mask or latents (or use "
                                 "img2img)")
        for index, unit in enumerate(request.params.controlnets):
            if unit.source == "init image":
                raise InputError(f"controlnets[{index}]", f"ControlNet {index + 1}: its source "
                                 "is the init image, but a txt2img job has none: upload a "
                                 "control image")
    return task


def text_size(width: int | None, height: int | None,
              max_pixels: int = imaging.DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """A text-to-image job's size: the given width and height, TXT2IMG_DEFAULT_SIZE for one
    unset, in multiples of 8. As for img2img, an explicit size over `max_pixels` is refused and
    a size not asked for is scaled down to fit."""
    # target_size reads only the picture's width and height: a default-sized frame stands in
    # for the init image that text-to-image does not have.
    frame = SimpleNamespace(width=width or TXT2IMG_DEFAULT_SIZE,
                            height=height or TXT2IMG_DEFAULT_SIZE)
    return imaging.target_size(frame, width, height, max_pixels)


def _ram() -> dict:
    """{"free", "used", "total"} of this machine's memory in bytes (None where unknown); free
    counts what programs can still get (the kernel's available estimate, caches included)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as lines:
            info = {k: int(v.split()[0]) * 1024 for k, v in
                    (line.split(":", 1) for line in lines if ":" in line)}
        total, free = info["MemTotal"], info.get("MemAvailable", info["MemFree"])
    except (OSError, KeyError, ValueError):
        try:
            page = os.sysconf("SC_PAGE_SIZE")
            total, free = os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
        except (AttributeError, OSError, ValueError):
            return {"free": None, "used": None, "total": None}
    return {"free": free, "used": total - free, "total": total}


def _process_rss() -> int | None:
    """This process's resident memory in bytes (None where the system does not say)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError, AttributeError):
        return None
