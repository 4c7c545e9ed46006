"""The diffusion replica: a Ray Serve deployment whose replicas each own one GPU and one
in-process Engine (the studio's engine, unchanged) and run one job at a time.

A job is one streaming request: the replica yields ("started", where), ("loaded", model),
("progress", Progress) items while it runs and ends with ("result", Result) or ("error", kind,
field, message). Errors travel as plain parts rather than as exception objects because the
studio's errors carry a field (InputError(field, message)) that pickling would lose.

The checkpoint is Serve's multiplexed model id: Serve sends a job to a replica that already
holds its model when one is free, and otherwise to the least-loaded one, which loads it
(max_num_models_per_replica=1: an engine keeps one pipeline resident).

Interrupt and Skip come through the board (board.py), read a few times a second while the job
runs; a cancelled request (the front door went away) cancels the job too. Either way the
engine stops within one sampling step.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time

import ray
from ray import serve

from ..engine.interface import JobRequest
from .board import HEARTBEAT, NAMESPACE

# How often a running job's progress is relayed and the board read (seconds).
RELAY_INTERVAL = 0.1


def error_parts(exc: BaseException) -> tuple:
    """("error", kind, field, message) for `exc`: what the front door rebuilds it from."""
    return ("error", type(exc).__name__, getattr(exc, "field", "") or "", str(exc))


class DiffusionReplica:
    """One GPU, one Engine. models_dir: this machine's models folder (the same layout on every
    node); model: the default checkpoint; board: the board actor's name; device, compile,
    max_pixels and limits: as for the Engine."""

    def __init__(self, models_dir: str, model: str, board: str, device: str | None = None,
                 compile: str = "auto", max_pixels: int | None = None, limits=None):
        from ..engine.core import Engine

        extra = {} if max_pixels is None else {"max_pixels": max_pixels}
        # The front door checks a job against the limits before it leaves; here they give
        # each job its time budget.
        extra["limits"] = limits
        # Results go back to the front door, which writes them: nothing is saved here (the
        # folder only satisfies the Engine's constructor).
        self.engine = Engine(models_dir=models_dir, outputs_dir=tempfile.mkdtemp(
            prefix="img2img-replica-"), model=model, device=device, queue_size=1,
            compile=compile, **extra)
        self.board = ray.get_actor(board, namespace=NAMESPACE)
        context = ray.get_runtime_context()
        self.node = context.get_node_id()
        self.gpus = [str(gpu) for gpu in ray.get_gpu_ids()]
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside Serve (tests of the class itself)
            self.replica = f"pid-{os.getpid()}"
        self.busy = False
        self._stop = threading.Event()
        self.post()
        # A heartbeat keeps this replica on the studio's cluster panel; a replica that dies
        # stops posting and drops off.
        threading.Thread(target=self._heartbeat, name="replica-heartbeat", daemon=True).start()

    # -- status -------------------------------------------------------------------------------
    def where(self) -> str:
        """'node 1a2b3c4d, GPU 0' (or 'CPU' when no GPU was given to this replica)."""
        gpu = f"GPU {','.join(self.gpus)}" if self.gpus else "CPU"
        return f"replica {self.replica} on node {self.node[:8]}, {gpu}"

    def status(self) -> dict:
        return {"node": self.node, "gpu": ",".join(self.gpus), "pid": os.getpid(),
                "device": self.engine.device, "model": self.engine.loaded_model() or "",
                "busy": self.busy}

    def post(self) -> None:
        self.board.post.remote(self.replica, self.status())

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                self.post()
            except Exception:  # noqa: BLE001 - the board going away must not kill the replica
                pass

    def check_health(self) -> None:
        """Serve's health check: the device still answers (a lost GPU raises here, and Serve
        replaces the replica)."""
        if self.engine.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    def __del__(self):
        self._stop.set()
        try:
            self.board.leave.remote(self.replica)
        except Exception:  # noqa: BLE001 - at interpreter exit the board may be gone
            pass

    # -- models -------------------------------------------------------------------------------
    @serve.multiplexed(max_num_models_per_replica=1)
    async def _model(self, model_id: str) -> str:
        # The engine keeps its previous model when this one fails to load. Any name a job may
        # use: the front door applied the path policy before the job left it.
        return await asyncio.to_thread(self.engine.load_model, model_id, False)

    async def load(self):
        """Load the request's model now (the studio's model switch): ("loaded", location), or
        error_parts when it cannot be loaded (the resident model stays)."""
        # Busy while it loads, as for a job: the front door reads a free replica beside a
        # waiting job as a stuck request (engine.STALL_S).
        self.busy = True
        self.post()
        try:
            location = await self._model(serve.get_multiplexed_model_id() or self.engine.model)
        except Exception as exc:  # noqa: BLE001 - reported to the front door
            return error_parts(exc)
        finally:
            self.busy = False
            self.post()
        return ("loaded", location)

    # -- jobs ---------------------------------------------------------------------------------
    async def run(self, key: str, request: JobRequest):
        """Run one job (see the module's docstring for what it yields)."""
        if await self.board.cancelled.remote(key):
            yield ("error", "Cancelled", "", "cancelled while waiting in the queue")
            return
        self.busy = True
        self.post()
        yield ("started", self.where())
        job = None
        try:
            try:
                if request.task == "txt2img" or request.params.effective_steps >= 1:
                    # A job with nothing to denoise returns its init image and loads nothing,
                    # as in the in-process engine.
                    await self._model(serve.get_multiplexed_model_id() or self.engine.model)
                    yield ("loaded", self.engine.loaded_model() or "")
                job = self.engine.submit(request)
            except Exception as exc:  # noqa: BLE001 - reported to the front door; keep serving
                yield error_parts(exc)
                return
            while True:
                finished = job.done
                for progress in await asyncio.to_thread(_drain, job, RELAY_INTERVAL):
                    yield ("progress", progress)
                for what in await self.board.take.remote(key):
                    job.cancel() if what == "cancel" else job.skip()
                if finished:
                    break
            try:
                result = job.result()
            except Exception as exc:  # noqa: BLE001 - reported to the front door
                yield error_parts(exc)
                return
            result.worker = self.where()
            yield ("result", result)
        except (asyncio.CancelledError, GeneratorExit):
            # The front door cancelled the request (its client went away): stop the job
            # within a step and free the GPU before the next request comes in.
            if job is not None:
                job.cancel()
                await asyncio.to_thread(job._done.wait, 60)
            raise
        finally:
            self.busy = False
            self.board.forget.remote(key)
            self.post()


def _drain(job, wait: float) -> list:
    """The job's progress items that arrive within `wait` seconds (all of them once it ended)."""
    items, deadline = [], time.monotonic() + wait
    for progress in job.updates(timeout=wait):
        items.append(progress)
        if time.monotonic() >= deadline:
            break
    return items
