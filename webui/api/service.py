"""What each `/sdapi/v1` route does, on one engine through the engine interface only.

API jobs go into the engine's one queue beside the studio's, first come first served; a request
waits for its job in a worker thread of the server (FastAPI runs plain functions there), so the
server keeps answering other requests (progress, interrupt) meanwhile. The API keeps its own
small table of the jobs it submitted, to know which running job is whose: a caller may stop and
watch only its own jobs, an API admin any job; nobody can stop another user's studio job or see
its preview through the API.

The API's checkpoint (GET/POST /options `sd_model_checkpoint`) is the API's own setting: it names
the model of API jobs that do not override it, and leaves the studio's model picker alone.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import infotext, presets, schedulers
from ..engine import (LORA_SUBDIR, Cancelled, EngineAPI, InputError,
                      JobRequest, Result, png_bytes)
from . import convert
from .access import Caller
from .schema import GenerationBody, Img2ImgBody, Txt2ImgBody

# Options GET /options reports and POST /options keeps (any other key is ignored, so a client
# posting the whole dict back, or a hostile one, cannot grow the server's memory).
DEFAULT_OPTIONS: dict[str, Any] = {
    "sd_vae": "Automatic",
    "CLIP_stop_at_last_layers": 1,
    "samples_format": "png",
    "samples_save": True,
    "save_images_add_number": True,
    "enable_pnginfo": True,
    "eta_noise_seed_delta": 0,
    "img2img_fix_steps": False,
    "return_grid": False,
    "live_previews_enable": True,
    "sd_checkpoints_limit": 1,
    "sd_checkpoint_cache": 0,
    "show_progress_every_n_steps": 1,
}
# Launch flags /cmd-flags reports: never a password, never a server path.
CMD_FLAGS = ("host", "port", "listen", "share", "insecure", "queue_size", "api", "nowebui",
             "cors_allow_origins", "cors_allow_origins_regex", "preset")


@dataclass
class _ApiJob:
    handle: Any
    caller: Caller
    kind: str  # "txt2img" or "img2img"
    skipped: bool = False
    interrupted: bool = False


class ApiService:
    """The API's state and behaviour; the routes (app.py) are thin wrappers around it.

    engine: the engine (EngineAPI); styles: the preset store (/prompt-styles, `styles`);
    per_user_styles: with API auth, each API user sees their own user presets (as the studio's
    logged-in users do); flags: the launch options, for /cmd-flags.
    """

    def __init__(self, engine: EngineAPI, styles: presets.PresetStore,
                 per_user_styles: bool = False, flags: dict[str, Any] | None = None):
        self.engine = engine
        self.store = styles
        self.per_user_styles = per_user_styles
        self.flags = {key: value for key, value in (flags or {}).items() if key in CMD_FLAGS}
        self.checkpoint = engine.model
        self.options = dict(DEFAULT_OPTIONS)
        self._jobs: dict[int, _ApiJob] = {}
        self._lock = threading.Lock()
        self._switch = threading.Lock()  # one checkpoint switch at a time

    def redact(self, message: str) -> str:
        """`message` with the server's folders named as the models folder's own names
        ('models/ControlNet'), never as paths on this machine."""
        for folder, name in ((self.engine.models_dir, "models"),
                             (self.engine.outputs_dir, "outputs"), (self.store.root, "presets")):
            # Absolute forms only: a relative name ('out') also occurs inside words.
            forms = {str(Path(folder).resolve())} | ({str(folder)} if Path(folder).is_absolute()
                                                     else set())
            for form in sorted(forms, key=len, reverse=True):
                if form != "/":
                    message = message.replace(form, name)
        return message

    def styles(self, caller: Caller) -> presets.PresetStore:
        return self.store.for_user(caller.user) if self.per_user_styles else self.store

    # -- jobs ----------------------------------------------------------------------------
    def _run(self, request: JobRequest, caller: Caller, kind: str,
             watch: "ClientWatch | None" = None) -> Result:
        if watch is not None and watch.gone:
            raise Cancelled("the client went away before the job started")
        handle = self.engine.submit(request)  # QueueFull: the routes answer 503
        if watch is not None:
            watch.add(handle)
        with self._lock:
            self._jobs[handle.id] = _ApiJob(handle, caller, kind)
        try:
            for _ in handle.updates():
                pass  # drained, so the job's progress events never pile up
            return handle.result()
        finally:
            with self._lock:
                self._jobs.pop(handle.id, None)

    def img2img(self, body: Img2ImgBody, caller: Caller,
                watch: "ClientWatch | None" = None) -> dict:
        """watch: the request's ClientWatch (its jobs are cancelled if the client goes)."""
        started = time.time()
        request = convert.img2img_request(self.engine, body, self.checkpoint,
                                          self.styles(caller), caller.owner)
        result = self._finish(body, self._safe_run(request, caller, "img2img", watch))
        return self._respond(body, result, started)

    def txt2img(self, body: Txt2ImgBody, caller: Caller,
                watch: "ClientWatch | None" = None) -> dict:
        """watch: as for img2img (the hires pass too)."""
        started = time.time()
        request = convert.txt2img_request(self.engine, body, self.checkpoint,
                                          self.styles(caller), caller.owner)
        extra: dict[str, Any] = {}
        first = None
        if body.enable_hr:
            # Checked before the first pass, so a bad hires setting costs no sampling.
            convert.hires_requests(self.engine, body, _placeholder(request),
                                   self.styles(caller), caller.owner)
        result = self._safe_run(request, caller, "txt2img", watch)
        if body.enable_hr and result.images and not result.interrupted:
            passes = [self._safe_run(second, caller, "img2img", watch) for second in
                      convert.hires_requests(self.engine, body, result, self.styles(caller),
                                             caller.owner)]
            first, last = result, passes[-1]
            # As the second pass's infotext says it: the scale it really had (hr_resize_x/y
            # may set the size instead of hr_scale) and the steps asked for it.
            extra = {"Hires upscale": round(last.width / first.width, 6),
                     "Hires steps": body.hr_second_pass_steps or first.params.steps,
                     "Hires upscaler": "Lanczos",
                     "First pass size": f"{first.width}x{first.height}"}
            result = dataclasses.replace(
                last, images=[item for done in passes for item in done.images],
                seed=result.seed, interrupted=any(done.interrupted for done in passes),
                notice="; ".join(filter(None, [result.notice, last.notice])))
        result = self._finish(body, result)
        return self._respond(body, result, started, extra, first)

    def _safe_run(self, request: JobRequest, caller: Caller, kind: str,
                  watch: "ClientWatch | None" = None) -> Result:
        try:
            return self._run(request, caller, kind, watch)
        except Cancelled as exc:
            # Interrupted before any picture: an empty answer, as the clients expect.
            return Result(images=[], params=request.params, seed=request.params.seed,
                          width=request.params.width or 0, height=request.params.height or 0,
                          effective_steps=0, model=request.params.model, elapsed=0.0,
                          interrupted=True, notice=str(exc))

    def _finish(self, body: GenerationBody, result: Result) -> Result:
        if body.override_settings.get("sd_model_checkpoint") is not None and \
                not body.override_settings_restore_afterwards:
            self.checkpoint = result.params.model or self.checkpoint
        return result

    def _respond(self, body: GenerationBody, result: Result, started: float,
                 extra: dict[str, Any] | None = None, first_pass: Result | None = None) -> dict:
        """first_pass: a hires fix's first pass (its prompt and steps are the request's)."""
        images = [convert.encode_png(png_bytes(item.image, item.infotext))
                  for item in result.images] if body.send_images else []
        first = result.images[0].infotext if result.images else ""
        model_hash = infotext.fields(first).get("Model hash", "") if first else ""
        return {"images": images, "parameters": convert.parameters(body),
                "info": convert.info(body, result, model_hash, list(body.styles), started,
                                     extra, first_pass)}

    # -- progress, interrupt, skip --------------------------------------------------------
    def _mine(self, job, caller: Caller) -> _ApiJob | None:
        """The API's record of `job` when the caller may act on it (own job, or admin)."""
        with self._lock:
            record = self._jobs.get(job.id)
        if record is None:
            return None
        if caller.admin or record.caller.user == caller.user:
            return record
        return None

    def progress(self, caller: Caller, skip_current_image: bool = False) -> dict:
        job = self.engine.running_job()
        status = self.engine.queue_status()
        idle = {"progress": 0.0, "eta_relative": 0.0,
                "state": {"skipped": False, "interrupted": False, "job": "", "job_count": 0,
                          "job_timestamp": "0", "job_no": 0, "sampling_step": 0,
                          "sampling_steps": 0},
                "current_image": None, "textinfo": None}
        if job is None:
            if status.waiting:
                idle["state"]["job_count"] = status.waiting
                idle["textinfo"] = f"{status.waiting} job(s) waiting"
            return idle
        record = self._mine(job, caller)
        latest = job.last_progress
        fraction, step, total, index, count, eta, text = 0.0, 0, 0, 0, 1, 0.0, "Starting"
        if latest is not None:
            step, total, index = latest.step, latest.total, latest.batch_index
            count = max(1, latest.batch_count)
            eta = float(latest.eta or 0.0)
            if latest.stage == "sampling" and total:
                fraction = min(1.0, (index + step / total) / count)
                text = f"Sampling step {step}/{total}, batch {index + 1}/{count}"
            else:
                text = latest.stage.capitalize()
        image = None
        if record is not None and not skip_current_image and job.last_preview is not None:
            image = convert.encode_picture(job.last_preview)
        return {"progress": round(fraction, 4), "eta_relative": round(eta, 3),
                "state": {"skipped": bool(record and record.skipped),
                          "interrupted": bool(record and record.interrupted),
                          "job": record.kind if record else "studio",
                          "job_count": count + status.waiting,
                          "job_timestamp": time.strftime("%Y%m%d%H%M%S",
                                                         time.localtime(job.created)),
                          "job_no": index, "sampling_step": step, "sampling_steps": total},
                "current_image": image, "textinfo": text}

    def interrupt(self, caller: Caller) -> dict:
        """Stop the caller's API jobs (running and waiting); an admin stops the running job
        whoever's it is, too."""
        with self._lock:
            records = [r for r in self._jobs.values()
                       if caller.admin or r.caller.user == caller.user]
        for record in records:
            record.interrupted = True
            record.handle.cancel()
        running = self.engine.running_job()
        if caller.admin and running is not None:
            running.cancel()
        return {}

    def skip(self, caller: Caller) -> dict:
        """End the running batch of the caller's running job and go on with the next."""
        running = self.engine.running_job()
        if running is not None:
            record = self._mine(running, caller)
            if record is not None:
                record.skipped = True
                running.skip()
            elif caller.admin:
                running.skip()
        return {}

    # -- listings -------------------------------------------------------------------------
    def sd_models(self) -> list[dict]:
        return [{"title": convert.title(info.name, info.hash),
                 "model_name": convert.model_stem(info.name), "hash": info.hash or None,
                 "sha256": info.sha256 or None, "filename": info.name, "config": None}
                for info in self.engine.list_models()]

    def get_options(self) -> dict:
        info = next((info for info in self.engine.list_models()
                     if info.name == self.checkpoint), None)
        if info is None:
            return {**self.options, "sd_model_checkpoint": self.checkpoint,
                    "sd_checkpoint_hash": None}
        return {**self.options, "sd_model_checkpoint": convert.title(info.name, info.hash),
                "sd_checkpoint_hash": info.sha256 or None}

    def set_options(self, values: dict[str, Any]) -> dict:
        if not isinstance(values, dict):
            raise InputError("options", "the options must be a JSON object")
        checked: dict[str, Any] = {}
        for key, value in values.items():
            if key not in DEFAULT_OPTIONS:
                continue
            default = DEFAULT_OPTIONS[key]
            if type(value) is not type(default) and not (
                    isinstance(default, float) and isinstance(value, int)):
                raise InputError(key, f"{key} must be {type(default).__name__} (got "
                                 f"{type(value).__name__})")
            if key == "CLIP_stop_at_last_layers" and value != 1:
                raise InputError(key, f"{key}: clip skip is not available here; only 1 is")
            checked[key] = value
        wanted = values.get("sd_model_checkpoint")
        if wanted is not None:
            name = convert.checkpoint_name(self.engine, wanted, "sd_model_checkpoint")
            if name != self.checkpoint or self.engine.loaded_model() is None:
                with self._switch:
                    # Loaded now, between jobs (the engine waits for the running one), so the
                    # next API job starts at once; a model that fails leaves the old one.
                    self.engine.load_model(name)
                    self.checkpoint = name
        self.options.update(checked)
        return {}

    def samplers(self) -> list[dict]:
        aliases: dict[str, list[str]] = {}
        for cls, name in schedulers.CLASS_NAMES.items():
            aliases.setdefault(name, []).append(cls)
        return [{"name": name, "aliases": aliases.get(name, []), "options": {}}
                for name in schedulers.SCHEDULERS]

    @staticmethod
    def schedulers() -> list[dict]:
        rho = {"Karras": 7.0}  # the schedules' rho as A1111 lists it (-1: none)
        return [{"name": "automatic", "label": "Automatic", "aliases": None,
                 "default_rho": -1, "need_inner_model": False},
                *({"name": label.casefold(), "label": label, "aliases": None,
                   "default_rho": rho.get(label, -1), "need_inner_model": False}
                  for label in schedulers.SCHEDULE_FLAGS)]

    def loras(self) -> list[dict]:
        return [{"name": name, "alias": name, "path": f"{LORA_SUBDIR}/{name}.safetensors",
                 "metadata": {}} for name in self.engine.list_loras()]

    def prompt_styles(self, caller: Caller) -> list[dict]:
        return [{"name": preset.name, "prompt": preset.prompt_template or "",
                 "negative_prompt": preset.settings.get("negative_prompt", "")}
                for preset in self.styles(caller).list().presets]

    @staticmethod
    def upscalers() -> list[dict]:
        return [{"name": name, "model_name": None, "model_path": None, "model_url": None,
                 "scale": 4 if name != "None" else 1} for name in convert.UPSCALERS]

    def controlnet_models(self) -> dict:
        return {"model_list": self.engine.list_controlnets()}

    @staticmethod
    def controlnet_modules() -> dict:
        return {"module_list": list(convert.CONTROLNET_MODULES)}

    def memory(self) -> dict:
        status = self.engine.memory_status()
        out: dict[str, Any] = {"ram": dict(status.get("ram") or {})}
        cuda = status.get("cuda")
        if cuda:
            out["cuda"] = {"system": {k: cuda.get(k) for k in ("free", "used", "total")},
                           "active": {"current": cuda.get("allocated"),
                                      "peak": cuda.get("peak_allocated")}}
        else:
            out["cuda"] = {"error": f"the engine runs on {self.engine.device}, not CUDA"}
        return out

    def refresh_checkpoints(self) -> dict:
        self.engine.models()
        return {}

    def png_info(self, image: str) -> dict:
        return convert.png_info(convert.open_png(image, "image"))


def _placeholder(request: JobRequest) -> Result:
    """A stand-in first pass, to check the hires settings before sampling anything."""
    params = request.params
    width, height = params.width or 512, params.height or 512
    return Result(images=[], params=params, seed=params.seed, width=width, height=height,
                  effective_steps=0, model=params.model, elapsed=0.0)


class ClientWatch:
    """The jobs one API request started, so that a client that goes away (closed its
    connection) cancels them: the route watches the connection and calls leave(); a job the
    request would start after that is not started."""

    def __init__(self):
        self._lock = threading.Lock()
        self.gone = False
        self._jobs: list = []

    def add(self, handle) -> None:
        with self._lock:
            self._jobs.append(handle)
            gone = self.gone
        if gone:
            handle.cancel()

    def leave(self) -> None:
        with self._lock:
            self.gone = True
            jobs = list(self._jobs)
        for handle in jobs:
            handle.cancel()
