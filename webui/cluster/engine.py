"""RayEngine: the engine interface (webui.engine.EngineAPI) over Ray Serve diffusion replicas.

The studio, the REST API and the CLI hold it exactly as they hold the in-process Engine. What
it keeps here, in the front door's process:

- names and listings: a local Engine over the same models folder answers them and makes the
  same checks before a job leaves (the path policy); it never loads a pipeline for a job;
- the queue bound: at most `replicas` running plus `queue_size` waiting, refused up front
  with the same "busy" message (Serve's own queue bound is a second line behind it);
- files: results come back as pictures and are written here, atomically, into the outputs
  folder, so replicas need no shared disk.

Each job is one streaming request to the replicas (replica.py); a thread per job follows it
and turns what it yields into the same Progress items and Result (or error) the in-process
engine gives.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import logging
import threading
import time
import uuid
from pathlib import Path

from ..engine.handles import JobEvents
from ..engine.interface import JobRequest, Progress, QueueFull, QueueStatus, Result
from ..params import GenerationParams
from ..errors import Cancelled, InputError, ModelError, OutOfMemory, TimedOut, WorkerLost

log = logging.getLogger(__name__)

WORKER_LOST = "the GPU worker stopped during this job; try again"
# A job still waiting while some replica has been free this long was left unassigned by
# Serve's routing (seen after a cancelled request: no request reached a replica again, and the
# job would wait for ever). It is sent again, once; stuck again, it fails with STALLED.
STALL_S = 20.0
STALLED = "no GPU worker took this job although one was free; try again"


def rebuild_error(kind: str, field: str, message: str) -> BaseException:
    """The studio's error a replica reported as parts (replica.error_parts)."""
    from ..engine.adapter_inputs import AdapterError
    from ..params import ParamsError

    if kind in ("InputError", "AdapterError", "ParamsError"):
        return {"InputError": InputError, "AdapterError": AdapterError,
                "ParamsError": ParamsError}[kind](field, message)
    known = {"ModelError": ModelError, "OutOfMemory": OutOfMemory, "Cancelled": Cancelled,
             "TimedOut": TimedOut, "QueueFull": QueueFull, "WorkerLost": WorkerLost}
    if kind in known:
        return known[kind](message)
    return RuntimeError(f"{kind}: {message}")


class RayJob(JobEvents):
    """A job on the cluster (interface.JobHandle; its progress and outcome: handles.JobEvents).
    `state` is 'queued' until a replica starts it."""

    _ids = itertools.count(1)

    def __init__(self, engine: "RayEngine", request: JobRequest, save: bool):
        JobEvents.__init__(self)
        self.id = next(self._ids)
        self.key = uuid.uuid4().hex
        self.owner = request.owner
        self.params = request.params
        self.created = time.time()
        self.worker = ""  # the replica it runs on, once started
        self._engine = engine
        self._request = request
        self._save = save
        self._response = None
        self.cancel_asked = False

    @property
    def started(self) -> bool:
        return self.state != "queued"

    def cancel(self) -> None:
        """Stop the job: a waiting one leaves Serve's queue at once, a running one stops
        within a step (the replica reads the board between steps)."""
        self.cancel_asked = True
        self._engine.board.flag.remote(self.key, "cancel")
        if not self.started and self._response is not None:
            self._response.cancel()

    def skip(self) -> None:
        self._engine.board.flag.remote(self.key, "skip")

    def position(self) -> int:
        return self._engine._position(self)

    # -- following the request ----------------------------------------------------------------
    def _follow(self) -> None:
        from ray.exceptions import ActorUnavailableError, RayActorError
        from ray.serve.exceptions import BackPressureError, RequestCancelledError

        result, error = None, None
        started = time.monotonic()
        model = self._request.params.model or self._engine.model
        for attempt in range(2):
            stalled, followed = threading.Event(), threading.Event()
            try:
                self._response = self._engine._streaming(model).run.remote(self.key,
                                                                          self._request)
                threading.Thread(target=self._watch, args=(self._response, stalled, followed),
                                 name=f"ray-job-{self.id}-watch", daemon=True).start()
                for item in self._response:
                    kind = item[0]
                    if kind == "started":
                        self.state, self.worker = "running", item[1]
                    elif kind == "loaded":
                        self._engine._loaded = item[1] or None
                    elif kind == "progress":
                        self._emit(item[1])
                    elif kind == "result":
                        result = item[1]
                    elif kind == "error":
                        error = rebuild_error(*item[1:])
                if result is None and error is None:
                    error = WorkerLost(WORKER_LOST)
                if result is not None and self._save and not result.interrupted:
                    self._emit(Progress("saving", elapsed=time.monotonic() - started))
                    self._engine._write(result, self.owner)
            except BackPressureError:
                error = QueueFull("the studio is busy: every GPU worker has a full queue; try "
                                  "again in a moment")
            except RequestCancelledError:
                if stalled.is_set() and attempt == 0 and not self.cancel_asked:
                    log.warning("job %s: no replica took it although one was free for %.0f s; "
                                "sent again", self.id, STALL_S)
                    continue
                error = (WorkerLost(STALLED) if stalled.is_set() and not self.cancel_asked
                         else Cancelled("cancelled while waiting in the queue"))
            except (RayActorError, ActorUnavailableError) as exc:
                log.warning("job %s: its replica stopped (%s)", self.id, exc)
                error = WorkerLost(WORKER_LOST)
            except Exception as exc:  # noqa: BLE001 - a job's failure must reach its front door
                log.exception("job %s failed on the cluster", self.id)
                error = exc
            finally:
                followed.set()
            break
        # The job's controls are done with (a job cancelled before a replica took it never
        # had them cleared there).
        self._engine.board.forget.remote(self.key)
        self._end(result, error)
        self._engine._ended(self)

    def _watch(self, response, stalled: threading.Event, followed: threading.Event) -> None:
        """Cancel `response` (setting `stalled`) when this job is still waiting although a
        replica has been free for STALL_S seconds; ends when the job starts or is followed."""
        free_since = None
        while not followed.wait(1.0) and not self.started:
            try:
                free = self._engine._free_replicas()
            except Exception:  # noqa: BLE001 - no answer from the board is no evidence
                free = 0
            if not free:
                free_since = None
                continue
            free_since = free_since if free_since is not None else time.monotonic()
            if time.monotonic() - free_since >= STALL_S and not self.started:
                stalled.set()
                response.cancel()
                return


class RayEngine:
    """The engine interface over the cluster's replicas.

    handle: the diffusion deployment's handle; board: the board actor; local: an in-process
    Engine over the front door's models folder (same layout as the replicas'), for names,
    listings and checks; replicas: the most replicas that may run (the queue bound counts
    them as running places); queue_size: jobs that may wait beyond those.
    """

    def __init__(self, handle, board, local, replicas: int, queue_size: int = 16):
        self.handle = handle
        self.board = board
        self.local = local
        self.replicas = replicas
        self.queue_size = queue_size
        self._jobs: list[RayJob] = []  # not yet ended, in submit order
        self._lock = threading.Lock()
        self._loaded: str | None = None
        self._per_model: dict[str, object] = {}
        self.shutdown = None  # set by deploy.connect: stops what it started

    def _streaming(self, model: str):
        """The handle that streams jobs for `model`, made once per model: handles made by
        .options() in many threads at once are routed, but their queued requests are not
        counted for autoscaling."""
        with self._lock:
            if model not in self._per_model:
                self._per_model[model] = self.handle.options(stream=True,
                                                             multiplexed_model_id=model)
            return self._per_model[model]

    # -- the local engine's settings ----------------------------------------------------------
    @property
    def model(self) -> str:
        return self.local.model

    @model.setter
    def model(self, value: str) -> None:
        self.local.model = value

    @property
    def outputs_dir(self) -> Path:
        return self.local.outputs_dir

    @outputs_dir.setter
    def outputs_dir(self, value) -> None:
        self.local.outputs_dir = Path(value)

    @property
    def models_dir(self) -> Path:
        return self.local.models_dir

    @property
    def allow_downloads(self) -> bool:
        return self.local.allow_downloads

    @property
    def device(self) -> str:
        """The replicas' device ('cuda' when any replica has a GPU, else theirs; 'cpu' before
        any has posted)."""
        import ray

        devices = {r.get("device", "") for r in ray.get(self.board.replicas.remote())}
        return next((d for d in sorted(devices) if d.startswith("cuda")),
                    next(iter(sorted(devices - {""})), "cpu"))

    # -- jobs ---------------------------------------------------------------------------------
    def submit(self, request: JobRequest) -> RayJob:
        if not isinstance(request, JobRequest):
            raise TypeError("submit takes a JobRequest")
        if not isinstance(request.params, GenerationParams):
            raise TypeError("params must be a GenerationParams")
        self.local.check_request(request)
        latents = request.latents
        if isinstance(latents, (str, Path)):
            # A path means nothing on another machine: the file travels as its bytes.
            try:
                latents = Path(latents).read_bytes()
            except OSError as exc:
                raise InputError("latents", f"latents: {latents} could not be read ({exc})") \
                    from None
        remote = dataclasses.replace(request, latents=latents, save=False)
        job = RayJob(self, remote, save=request.save)
        with self._lock:
            refusal = self.local.limits.user_refusal(request.owner, self._jobs)
            if refusal:
                raise QueueFull(refusal)
            if len(self._jobs) >= self.replicas + self.queue_size:
                waiting = len(self._jobs) - self.replicas
                raise QueueFull(f"the studio is busy: {max(waiting, 0)} jobs are waiting; "
                                "try again in a moment")
            self._jobs.append(job)
        threading.Thread(target=job._follow, name=f"ray-job-{job.id}", daemon=True).start()
        return job

    def generate(self, request: JobRequest) -> Result:
        job = self.submit(request)
        for _ in job.updates():
            pass
        return job.result()

    def _ended(self, job: RayJob) -> None:
        with self._lock:
            if job in self._jobs:
                self._jobs.remove(job)

    def _position(self, job: RayJob) -> int:
        with self._lock:
            if job not in self._jobs or job.started:
                return 0
            before = self._jobs[:self._jobs.index(job)]
        return len(before)

    def _write(self, result: Result, owner: str | None) -> None:
        from ..engine import outputs
        from ..engine.core import Engine

        unsaved = outputs.save_all(result.images, self.outputs_dir, owner, Engine.write_latents)
        result.notice = "; ".join(filter(None, [result.notice, unsaved]))

    def cancel_all(self) -> None:
        with self._lock:
            jobs = list(self._jobs)
        for job in jobs:
            job.cancel()

    def queue_status(self) -> QueueStatus:
        with self._lock:
            running = [job for job in self._jobs if job.started]
            waiting = len(self._jobs) - len(running)
        return QueueStatus(running=running[0].id if running else None, waiting=waiting,
                           capacity=self.queue_size)

    def running_job(self) -> RayJob | None:
        """The earliest-started job running now (several may run, one per replica)."""
        with self._lock:
            return next((job for job in self._jobs if job.started), None)

    def memory_status(self) -> dict:
        """The front door's machine (each replica's own memory is in cluster_status())."""
        return self.local.memory_status()

    def _free_replicas(self) -> int:
        """How many live replicas run no job and load no model now (from the board)."""
        import ray

        return sum(not r.get("busy") for r in ray.get(self.board.replicas.remote(),
                                                      timeout=5))

    def cluster_status(self) -> dict:
        """{"replicas": [{replica, node, gpu, pid, device, model, busy, seen}], "queue":
        QueueStatus}: what the studio's cluster panel shows."""
        import ray

        return {"replicas": ray.get(self.board.replicas.remote()),
                "queue": self.queue_status()}

    # -- listings and checks: the local engine over the same models folder --------------------
    def models(self) -> list[str]:
        return self.local.models()

    def list_models(self):
        return self.local.list_models()

    def list_loras(self) -> list[str]:
        return self.local.list_loras()

    def list_controlnets(self) -> list[str]:
        return self.local.list_controlnets()

    def list_ip_adapters(self) -> list[str]:
        return self.local.list_ip_adapters()

    def list_detectors(self) -> dict[str, str]:
        return self.local.list_detectors()

    def list_samplers(self) -> list[str]:
        return self.local.list_samplers()

    def check_model(self, name: str = "") -> str:
        return self.local.check_model(name)

    def check_adapter(self, kind: str, name: str, field: str, hub: bool = False) -> str:
        return self.local.check_adapter(kind, name, field, hub=hub)

    def is_tiny(self, name: str = "") -> bool:
        return self.local.is_tiny(name)

    # -- the resident model -------------------------------------------------------------------
    def loaded_model(self) -> str | None:
        """The model the latest job or load used, on whichever replica ran it."""
        return self._loaded

    def load_model(self, name: str = "") -> str:
        """Load `name` on a free replica now (it waits for one), so the next job for it starts
        there at once; its location."""
        name = (name or "").strip()
        if name and name not in self.models() and name != self.model:
            raise InputError("model", f"{name!r} is not one of this studio's models")
        call = self.handle.options(multiplexed_model_id=name or self.model).load.remote
        # Waited for in a thread of its own: Serve refuses a blocking wait in a thread that
        # runs an event loop (a caller inside async code, or a sync browser driver's thread).
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            answer = pool.submit(lambda: call().result()).result()
        if answer[0] == "error":
            raise rebuild_error(*answer[1:])
        self._loaded = answer[1]
        return answer[1]

    def unload(self) -> None:
        """Forget the loaded model here; replicas keep theirs until a job needs another (each
        holds one, and a job for it is sent there)."""
        self._loaded = None

    def control_preview(self, picture, preprocessor: str, detector: str = "", low: float = 100,
                        high: float = 200):
        """Runs on the front door's machine (a replica is kept for jobs)."""
        return self.local.control_preview(picture, preprocessor, detector, low, high)
