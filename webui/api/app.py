"""The API's FastAPI application: routes, HTTP Basic on every one of them, CORS when asked
for, the clients' error shape, and how it is served (alone, or on the studio's own port).

Errors answer `{error, detail, body, errors}` (the shape the API's clients parse) plus `field`
for a refused input: 422 for a bad or unusable input naming the field, 401/429 for access,
503 when the queue is full or the GPU ran out of memory, never a traceback. Every route also
answers with a trailing slash, since clients build URLs both ways.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware

from ..engine import InputError, ModelError, OutOfMemory, QueueFull, WorkerLost
from ..params import ParamsError
from .access import Access, Caller, Denied
from .schema import (ImageResponse, Img2ImgBody, OptionsBody, PngInfoBody, PngInfoResponse,
                     Txt2ImgBody)
from .service import ApiService, ClientWatch

log = logging.getLogger(__name__)
TITLE = "img2img-webui API"
# Seconds between looks at a job route's connection (a gone client cancels its jobs).
WATCH_INTERVAL = 0.25
# Paths this application serves on the studio's port (everything else is the studio's).
PREFIXES = ("/sdapi/", "/internal/", "/controlnet/")
EXACT = ("/docs", "/docs/", "/openapi.json")


def _error(status: int, error: str, detail: str, field: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": error, "detail": detail, "body": "", "errors": detail}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers)


def _location(loc: tuple) -> str:
    parts = [p for p in loc if p not in ("body", "query")]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (("." if text else "") + str(part))
    return text or "body"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _validation(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {}
    field = _location(tuple(first.get("loc") or ()))
    kind = first.get("type", "")
    if kind == "json_invalid":
        detail = "the body is not valid JSON"
    elif kind == "missing":
        detail = f"{field} is required"
    else:
        message = str(first.get("msg", "is invalid"))
        # A validator's own sentence, without the framework's "Value error, " before it.
        message = message[len("Value error, "):] if message.startswith("Value error, ") else message
        detail = f"{field}: {message}"
        if "input" in first and kind not in ("model_attributes_type", "dict_type"):
            detail += f" (got {_short(first['input'])})"
    return _error(422, "ValidationError", detail, field)


def _named(field: str, message: str) -> str:
    return message if message.startswith(field.split("[")[0].split(".")[0]) else \
        f"{field}: {message}"


def handle(exc: Exception, redact: Callable[[str], str] = str) -> JSONResponse:
    """The answer for an exception a route raised; `redact` takes server paths out of the
    engine's messages (written for the artist at the machine, not for a remote client)."""
    if isinstance(exc, Denied):
        return _error(exc.status, "Unauthorized" if exc.status == 401 else "TooManyRequests",
                      str(exc), headers=exc.headers)
    if isinstance(exc, RequestValidationError):
        return _validation(exc)
    if isinstance(exc, HTTPException):
        # The framework's own refusals (unknown route, wrong method, an unreadable body such
        # as JSON nested thousands deep), in the same shape as every other error.
        detail = exc.detail if isinstance(exc.detail, str) else "the request was refused"
        if exc.status_code == 400 and "parsing the body" in detail:
            detail = "the body could not be read as JSON (malformed, or nested too deeply)"
        return _error(exc.status_code, "HTTPException", detail,
                      headers=getattr(exc, "headers", None))
    if isinstance(exc, (InputError, ParamsError)):
        return _error(422, type(exc).__name__, _named(exc.field, redact(str(exc))), exc.field)
    if isinstance(exc, ModelError):
        return _error(422, "ModelError", redact(str(exc)), "sd_model_checkpoint")
    if isinstance(exc, QueueFull):
        return _error(503, "Busy", redact(str(exc)), headers={"Retry-After": "5"})
    if isinstance(exc, OutOfMemory):
        return _error(503, "OutOfMemory", redact(str(exc)))
    if isinstance(exc, WorkerLost):
        return _error(503, "WorkerLost", redact(str(exc)), headers={"Retry-After": "5"})
    log.exception("API request failed", exc_info=exc)
    return _error(500, type(exc).__name__, "the server failed on this request; the details "
                  "are in its log")


class BodyLimit:
    """Refuses a request body over `limit` bytes with a 413 in the clients' error shape: at
    once when its Content-Length says so, else as soon as the body read so far passes the
    limit (a chunked body), so no body fills the memory. A body within the limit is read here
    and handed on whole (the routes read every body whole anyway)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    def _too_large(self, size: str) -> JSONResponse:
        return _error(413, "PayloadTooLarge", f"the request body is {size} bytes; this server "
                      f"takes at most {self.limit:,} (--max-upload-mb)")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._too_large(f"{int(length):,}")(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away mid-body: nobody to answer
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await self._too_large(f"more than {self.limit:,}")(scope, receive, send)
        whole = {"type": "http.request", "body": bytes(body), "more_body": False}

        async def replay():
            nonlocal whole
            if whole is not None:
                message, whole = whole, None
                return message
            return await receive()

        return await self.app(scope, replay, send)


def create_app(service: ApiService, access: Access | None = None,
               cors_origins: list[str] | None = None, cors_regex: str | None = None,
               max_body: int | None = None) -> FastAPI:
    """The API application for `service`. access: who may call it (default: anyone);
    cors_origins / cors_regex: browser origins allowed to call it (default: none); max_body:
    the largest request body in bytes (default: no limit)."""
    access = access or Access()
    app = FastAPI(title=TITLE, version="1", docs_url=None, redoc_url=None, openapi_url=None)
    if max_body:
        app.add_middleware(BodyLimit, limit=max_body)
    # Access and body errors arise before a route runs; a route's own errors are answered by
    # `guard` inside it, so that none reaches the server-error path (which logs a traceback).
    for kind in (Denied, RequestValidationError, HTTPException, Exception):
        app.add_exception_handler(kind, lambda request, exc: handle(exc, service.redact))
    if cors_origins or cors_regex:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins or []),
                           allow_origin_regex=cors_regex or None, allow_methods=["*"],
                           allow_headers=["*"], allow_credentials=True)

    async def caller(request: Request) -> Caller:
        # Awaited, not slept in a thread: held-back guesses must not use up the thread pool
        # that runs the routes.
        delay = access.delay(request.scope)
        if delay:
            await asyncio.sleep(delay)
        return access.check(request.scope, request.headers.get("authorization"))

    def add(path: str, endpoint: Callable, method: str = "GET", **options) -> None:
        for each, shown in ((path, True), (path + "/", False)):
            app.add_api_route(each, endpoint, methods=[method], include_in_schema=shown,
                              **options)

    def guard(function: Callable) -> Callable:
        """The route with its errors answered in the clients' shape."""
        @functools.wraps(function)
        def run(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - every failure gets the clients' shape
                return handle(exc, service.redact)
        return run

    async def watched(request: Request, work: Callable[[ClientWatch], Any]):
        """`work` in the thread pool while the connection is watched: a client that goes away
        (or a proxy in front that cancels the request) cancels the request's jobs, so a
        closed client never keeps the GPU."""
        watch = ClientWatch()
        task = asyncio.ensure_future(run_in_threadpool(guard(work), watch))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=WATCH_INTERVAL)
                if done:
                    return task.result()
                if await request.is_disconnected():
                    watch.leave()
                    return await task
        except asyncio.CancelledError:
            watch.leave()
            raise

    v1 = "/sdapi/v1"

    async def txt2img(request: Request, body: Txt2ImgBody, who: Caller = Depends(caller)):
        """Make pictures from a prompt (the resident model's text-to-image pipeline)."""
        return await watched(request, lambda watch: service.txt2img(body, who, watch))

    async def img2img(request: Request, body: Img2ImgBody, who: Caller = Depends(caller)):
        """Transform a picture (inpaint it with `mask`)."""
        return await watched(request, lambda watch: service.img2img(body, who, watch))

    @guard
    def progress(skip_current_image: bool = False, who: Caller = Depends(caller)) -> dict:
        """The running job's progress; idle: progress 0, job_count 0."""
        return service.progress(who, skip_current_image)

    @guard
    def interrupt(who: Caller = Depends(caller)) -> dict:
        """Stop your API jobs (an admin: also the running job, whoever's)."""
        return service.interrupt(who)

    @guard
    def skip(who: Caller = Depends(caller)) -> dict:
        """End the running batch of your job and go on with the next."""
        return service.skip(who)

    @guard
    def get_options(who: Caller = Depends(caller)) -> dict:
        return service.get_options()

    @guard
    def set_options(body: OptionsBody, who: Caller = Depends(caller)) -> dict:
        """Accepts the whole dict back or single keys; sd_model_checkpoint switches the API's
        model (loaded between jobs)."""
        return service.set_options(body.model_dump())

    @guard
    def png_info(body: PngInfoBody, who: Caller = Depends(caller)) -> dict:
        """The settings stored in a PNG."""
        return service.png_info(body.image)

    def listing(name: str, function: Callable, doc: str) -> Callable:
        def route(who: Caller = Depends(caller)):
            return function()
        route.__name__, route.__doc__ = name, doc
        return guard(route)

    add(f"{v1}/txt2img", txt2img, "POST", response_model=ImageResponse)
    add(f"{v1}/img2img", img2img, "POST", response_model=ImageResponse)
    add(f"{v1}/progress", progress)
    add(f"{v1}/interrupt", interrupt, "POST")
    add(f"{v1}/skip", skip, "POST")
    add(f"{v1}/options", get_options)
    add(f"{v1}/options", set_options, "POST")
    add(f"{v1}/png-info", png_info, "POST", response_model=PngInfoResponse)
    for path, method, function, doc in (
            ("samplers", "GET", service.samplers, "Samplers by name."),
            ("schedulers", "GET", service.schedulers, "Noise schedules."),
            ("sd-models", "GET", service.sd_models, "Checkpoints (title: 'name [hash]')."),
            ("sd-vae", "GET", lambda: [], "Separate VAEs (none: each model uses its own)."),
            ("loras", "GET", service.loras, "LoRAs in the models folder."),
            ("upscalers", "GET", service.upscalers, "Upscalers of the hires fix."),
            ("latent-upscale-modes", "GET", lambda: [], "Latent upscaling (none here)."),
            ("embeddings", "GET", lambda: {"loaded": {}, "skipped": {}},
             "Textual-inversion embeddings (none here)."),
            ("scripts", "GET", lambda: {"txt2img": [], "img2img": []}, "Scripts (none)."),
            ("memory", "GET", service.memory, "RAM and GPU memory."),
            ("cmd-flags", "GET", lambda: dict(service.flags), "Launch flags, without secrets."),
            ("refresh-checkpoints", "POST", service.refresh_checkpoints,
             "Scan the models folder again."),
    ):
        add(f"{v1}/{path}", listing(path.replace("-", "_"), function, doc), method)
    add("/sdapi/v1/prompt-styles", guard(_styles_route(service, caller)))
    add("/controlnet/model_list", listing("controlnet_models", service.controlnet_models,
                                          "ControlNet models, for the ControlNet units."))
    add("/controlnet/module_list", listing("controlnet_modules", service.controlnet_modules,
                                           "ControlNet preprocessors."))
    add("/internal/ping", listing("ping", dict, "Answers {} while the server runs."))

    def openapi(who: Caller = Depends(caller)) -> JSONResponse:
        return JSONResponse(app.openapi())

    def docs(who: Caller = Depends(caller)):
        return get_swagger_ui_html(openapi_url="/openapi.json", title=TITLE)

    app.add_api_route("/openapi.json", guard(openapi), methods=["GET"], include_in_schema=False)
    add("/docs", guard(docs))
    return app


def _styles_route(service: ApiService, caller: Callable) -> Callable:
    def prompt_styles(who: Caller = Depends(caller)) -> list:
        """The presets, as styles (prompt template and negative prompt)."""
        return service.prompt_styles(who)
    return prompt_styles


def is_api_path(path: str) -> bool:
    return path.startswith(PREFIXES) or path in EXACT


class ApiDispatch:
    """The studio's ASGI stack with the API in front of it: API paths go to the API app,
    everything else to the studio.

    Why not routes on the studio's app: Gradio builds that app inside launch() and puts its
    own CORS policy in front of every route (any origin is let in when the studio is served
    on a network address), and the API must have exactly the policy its flags set, its own
    error answers and its own login. So the API is its own application, dispatched to before
    the studio's middleware."""

    def __init__(self, api: Callable, studio: Callable):
        self.api, self.studio = api, studio

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and is_api_path(scope.get("path", "")):
            await self.api(scope, receive, send)
        else:
            await self.studio(scope, receive, send)


def mount(studio_app, api_app) -> None:
    """Serve `api_app` on the already-launched studio's app (same host and port)."""
    stack = studio_app.middleware_stack or studio_app.build_middleware_stack()
    studio_app.middleware_stack = ApiDispatch(api_app, stack)
