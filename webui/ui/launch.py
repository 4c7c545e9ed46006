"""`python -m webui`: the studio's launch options and start-up.

A studio reachable from other machines is an open door to the GPU and to the files it serves, so
a public link (--share) or a network-facing address (--listen, a non-loopback --host) needs a
login, unless --insecure says, explicitly, that it should stay open. Bad options exit with
status 2 and one line saying what is wrong and how to fix it, before anything heavy is imported.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..engine import LORA_HOT_RANK, LORA_RANK_HELP, PREVIEW_DECODERS, Limits, lora_rank_flag
from .upload_space import DEFAULT_CACHE_MB

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_QUEUE_SIZE = 16
DEFAULT_USER_PRESETS = "user-presets"
# Big enough for any photo an artist uploads, small enough that uploads cannot fill the disk
# (--max-upload-mb; the REST API's bodies carry pictures as base64, a third larger).
DEFAULT_UPLOAD_MB = 64.0
ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"


class LaunchError(ValueError):
    """An unusable launch option; the message says which and how to fix it."""


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("studio", "options of the browser studio (no sub-command)")
    group.add_argument("--host", default=DEFAULT_HOST,
                       help=f"address to serve on (default {DEFAULT_HOST}: this machine only)")
    group.add_argument("--port", type=int, default=DEFAULT_PORT,
                       help=f"port to serve on (default {DEFAULT_PORT})")
    group.add_argument("--listen", action="store_true",
                       help="serve on 0.0.0.0, reachable from the network (needs --auth)")
    group.add_argument("--share", action="store_true",
                       help="also make a public link through a tunnel (needs --auth)")
    group.add_argument("--auth", metavar="USER:PASS[,USER2:PASS2]",
                       help="require a login; several users separated by commas (shown in the "
                       "process list: prefer --auth-file or $IMG2IMG_AUTH)")
    group.add_argument("--auth-file", metavar="FILE",
                       help="require a login; one user:pass per line (# comments allowed)")
    group.add_argument("--insecure", action="store_true",
                       help="allow --share/--listen without a login (anyone can use the GPU)")
    group.add_argument("--allow-downloads", action="store_true",
                       help="let the studio's visitors download models from the hub (the Get a "
                       "model panel, hub IP-Adapter ids); on by default only when the studio is "
                       "served on this machine alone (not with --listen, --share or another "
                       "--host)")
    group.add_argument("--model", default=None,
                       help="model to start with: a name from the models folder, a .safetensors "
                       "file, a diffusers folder or a hub id (default: the first one found)")
    group.add_argument("--models-dir", default="models",
                       help="models folder, with Stable-diffusion/ and Lora/ (default: models)")
    group.add_argument("--outputs-dir", default="outputs",
                       help="where results are written and served from (default: outputs)")
    group.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                       help="compiled UNet and VAE, built per size in the background while "
                       "jobs run eager: auto is on for CUDA, off on the CPU (default auto)")
    group.add_argument("--lora-rank", type=lora_rank_flag, default=LORA_HOT_RANK,
                       help=LORA_RANK_HELP + "; not with --cluster")
    group.add_argument("--preview-decoder", choices=PREVIEW_DECODERS, default="approx",
                       help="step previews: approx, a colour matrix (free), or tiny, the tiny "
                       "VAE in models/VAE-approx/taesd or taesdxl, which shows the picture's "
                       "detail, costly on the CPU (default approx; not with --cluster)")
    group.add_argument("--queue-size", type=int, default=DEFAULT_QUEUE_SIZE,
                       help=f"jobs that may wait for the GPU (default {DEFAULT_QUEUE_SIZE})")
    limits = parser.add_argument_group(
        "limits", "what one job or one user may ask for, so that nobody holds the GPU for long "
        "(a job over a limit is refused with the limit named)")
    defaults = Limits()
    limits.add_argument("--max-pixels", type=int, default=defaults.max_pixels,
                        help="largest output, width x height (default "
                        f"{defaults.max_pixels:,} = 2048x2048; a larger init image is scaled "
                        "down to it)")
    limits.add_argument("--max-steps", type=int, default=defaults.max_steps,
                        help=f"most sampling steps per job (default {defaults.max_steps})")
    limits.add_argument("--max-batch", type=int, default=defaults.max_batch,
                        help="most images per job, batch size x batch count (default "
                        f"{defaults.max_batch})")
    limits.add_argument("--max-queued-per-user", type=int,
                        default=defaults.max_queued_per_user,
                        help="jobs one logged-in user may have waiting or running (default "
                        f"{defaults.max_queued_per_user}; 0: no limit)")
    limits.add_argument("--job-timeout", type=float, default=defaults.job_timeout,
                        help="seconds a job may run before it is stopped like an Interrupt "
                        f"(default {defaults.job_timeout:g}; 0: no limit)")
    limits.add_argument("--max-upload-mb", type=float, default=DEFAULT_UPLOAD_MB,
                        help="largest file a client may upload, and largest REST API request "
                        f"(default {DEFAULT_UPLOAD_MB:g})")
    limits.add_argument("--max-upload-cache-mb", type=float, default=DEFAULT_CACHE_MB,
                        help="disk the page's uploads may take together; the oldest are "
                        f"deleted to make room (default {DEFAULT_CACHE_MB:g})")
    group.add_argument("--preset", metavar="NAME", default=None,
                       help="start the page with this preset's settings (shipped or from "
                       "--user-presets)")
    group.add_argument("--user-presets", metavar="DIR", default=DEFAULT_USER_PRESETS,
                       help="folder of saved presets; with a login, each user gets a folder "
                       f"inside it (default: {DEFAULT_USER_PRESETS})")
    cluster = parser.add_argument_group(
        "cluster", "serve jobs from Ray Serve replicas, one GPU each (needs the cluster extra: "
        "pip install 'img2img-webui[cluster]')")
    cluster.add_argument("--cluster", metavar="local|ADDRESS", default=None,
                         help="'local' starts Ray on this machine; a Ray address "
                         "(ray://HOST:10001 or HOST:6379) joins a running cluster")
    cluster.add_argument("--replicas", type=int, default=1,
                         help="diffusion replicas, one GPU each (default 1)")
    cluster.add_argument("--min-replicas", type=int, default=None,
                         help="with --max-replicas: scale between the two on queued jobs")
    cluster.add_argument("--max-replicas", type=int, default=None,
                         help="the most replicas autoscaling may start")
    cluster.add_argument("--replica-gpus", type=float, default=None,
                         help="GPUs per replica (default: 1 when the cluster has GPUs, else 0)")
    api = parser.add_argument_group("REST API", "the /sdapi/v1 API the established Stable "
                                    "Diffusion clients speak")
    api.add_argument("--api", action="store_true",
                     help="also serve the REST API on the studio's host and port (docs: /docs)")
    api.add_argument("--nowebui", action="store_true",
                     help="serve the REST API alone, without the studio page")
    api.add_argument("--api-auth", metavar="USER:PASS[,USER2:PASS2]",
                     help="require HTTP Basic for every API route (or --api-auth-file)")
    api.add_argument("--api-auth-file", metavar="FILE",
                     help="API users, one user:pass per line (# comments allowed)")
    api.add_argument("--api-admin", metavar="USER[,USER2]",
                     help="API users who may stop and watch any job, not only their own")
    api.add_argument("--cors-allow-origins", metavar="ORIGIN[,ORIGIN2]",
                     help="browser origins allowed to call the API (default: none)")
    api.add_argument("--cors-allow-origins-regex", metavar="REGEX",
                     help="browser origins allowed to call the API, as a regular expression")


def _pair(text: str, where: str, exact_password: bool = False) -> tuple[str, str]:
    """(user, password) of 'user:pass': the first colon splits; the name is trimmed. A file's
    line keeps its password exactly (spaces, commas, '#', more colons: any character), since
    the file is the documented way to hold passwords the command line cannot."""
    user, sep, password = (text if exact_password else text.strip()).partition(":")
    if not sep or not user.strip() or not password:
        raise LaunchError(f"{where}: expected user:pass, got {text.strip()!r}")
    return user.strip(), password


# Logins from the environment instead of --auth / --api-auth: unlike a flag, an environment
# variable is not shown in the machine's process list.
AUTH_ENV = {"--auth": "IMG2IMG_AUTH", "--api-auth": "IMG2IMG_API_AUTH"}


def parse_auth(auth: str | None, auth_file: str | None, flag: str = "--auth",
               use_env: bool = True) -> list[tuple[str, str]]:
    """The (user, password) pairs of --auth and --auth-file (or --api-auth and
    --api-auth-file with flag="--api-auth"); without the flag (and with use_env), its
    environment variable (AUTH_ENV) in the flag's form. LaunchError on bad syntax."""
    import os

    users: list[tuple[str, str]] = []
    where = flag
    if use_env and auth is None and os.environ.get(AUTH_ENV[flag], "").strip():
        auth, where = os.environ[AUTH_ENV[flag]], f"${AUTH_ENV[flag]}"
    if auth is not None:
        entries = [entry for entry in auth.split(",") if entry.strip()]
        if not entries:
            raise LaunchError(f"{where}: expected user:pass[,user2:pass2], got nothing")
        users += [_pair(entry, where) for entry in entries]
    if auth_file is not None:
        path = Path(auth_file).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise LaunchError(f"{flag}-file: no such file: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise LaunchError(f"{flag}-file: {path} could not be read ({exc})") from None
        found = 0
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            users.append(_pair(line, f"{flag}-file {path}, line {number}",
                               exact_password=True))
            found += 1
        if not found:
            raise LaunchError(f"{flag}-file: {path} has no user:pass lines")
    return users


def check_limits(args: argparse.Namespace) -> Limits:
    """The limits flags as Limits; LaunchError naming the flag when one is unusable."""
    defaults = Limits()
    values = {name: getattr(args, name, getattr(defaults, name)) for name in
              ("max_pixels", "max_steps", "max_batch", "max_queued_per_user", "job_timeout")}
    for name in ("max_pixels", "max_steps", "max_batch"):
        if values[name] < 1:
            raise LaunchError(f"--{name.replace('_', '-')} must be at least 1 (got "
                              f"{values[name]})")
    for name in ("max_queued_per_user", "job_timeout"):
        if not values[name] >= 0 or values[name] == float("inf"):
            raise LaunchError(f"--{name.replace('_', '-')} must be 0 (no limit) or more (got "
                              f"{values[name]:g})")
    for name, default in (("max_upload_mb", DEFAULT_UPLOAD_MB),
                          ("max_upload_cache_mb", DEFAULT_CACHE_MB)):
        value = getattr(args, name, default)
        if not 0 < value < float("inf"):
            raise LaunchError(f"--{name.replace('_', '-')} must be more than 0 (got {value:g})")
    return Limits(**values)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume the network can reach it


def check(args: argparse.Namespace) -> tuple[str, list[tuple[str, str]]]:
    """(host to serve on, users) from the options; LaunchError for anything unusable (the
    REST API's options included)."""
    host, users, _ = check_all(args)
    return host, users


def downloads_allowed(args: argparse.Namespace) -> bool:
    """Whether visitors may have the server download from the hub: --allow-downloads, or a
    studio that only this machine can reach."""
    host = "0.0.0.0" if args.listen else args.host
    return bool(getattr(args, "allow_downloads", False)) or not (
        args.share or not _is_loopback(host))


def check_all(args: argparse.Namespace) -> tuple[str, list[tuple[str, str]], "ApiSetup"]:
    """check() and the REST API's setup, each option (and auth file) read once."""
    users = parse_auth(args.auth, args.auth_file)
    host = "0.0.0.0" if args.listen else args.host
    if not 1 <= args.port <= 65535:
        raise LaunchError(f"--port must be from 1 to 65535 (got {args.port})")
    if args.queue_size < 1:
        raise LaunchError(f"--queue-size must be at least 1 (got {args.queue_size})")
    exposed = args.share or not _is_loopback(host)
    page = not getattr(args, "nowebui", False)
    if page and exposed and not users and not args.insecure:
        what = ("--share makes a public link" if args.share else
                f"serving on {host} opens the studio to the network")
        raise LaunchError(
            f"{what}, and without a login anyone who finds it can use your GPU and read the "
            "results. Add --auth user:pass (or --auth-file FILE), or pass --insecure to open it "
            "anyway.")
    return host, users, check_api(args, exposed)


@dataclass
class ApiSetup:
    """The REST API's options, checked: served at all, its users and admins, CORS."""

    enabled: bool = False
    alone: bool = False
    users: list[tuple[str, str]] = field(default_factory=list)
    admins: frozenset[str] = frozenset()
    cors_origins: list[str] = field(default_factory=list)
    cors_regex: str | None = None


def check_api(args: argparse.Namespace, exposed: bool) -> ApiSetup:
    """The API's options; LaunchError for anything unusable (an exposed API needs its own
    login, as the page does)."""
    alone = bool(getattr(args, "nowebui", False))
    enabled = alone or bool(getattr(args, "api", False))
    # $IMG2IMG_API_AUTH counts only when the API is served (it may be set for every launch).
    users = parse_auth(getattr(args, "api_auth", None), getattr(args, "api_auth_file", None),
                       "--api-auth", use_env=enabled)
    admins = frozenset(name.strip() for name in (getattr(args, "api_admin", None) or "")
                       .split(",") if name.strip())
    unknown = sorted(admins - {user for user, _ in users})
    if unknown:
        raise LaunchError(f"--api-admin: {', '.join(unknown)} is not a user of --api-auth")
    origins = [o.strip() for o in (getattr(args, "cors_allow_origins", None) or "").split(",")
               if o.strip()]
    regex = getattr(args, "cors_allow_origins_regex", None) or None
    if regex:
        try:
            re.compile(regex)
        except re.error as exc:
            raise LaunchError(f"--cors-allow-origins-regex: not a regular expression ({exc})"
                              ) from None
    if not enabled and (users or origins or regex or admins):
        raise LaunchError("--api-auth, --api-admin and --cors-* configure the REST API: add "
                          "--api (or --nowebui)")
    if alone and getattr(args, "share", False):
        raise LaunchError("--share makes a public link to the studio page, and --nowebui "
                          "serves no page; drop one of them")
    if enabled and exposed and not users and not args.insecure:
        raise LaunchError(
            "the REST API would be reachable from the network without a login: anyone could "
            "run jobs on your GPU. Add --api-auth user:pass (or --api-auth-file FILE), or pass "
            "--insecure to open it anyway.")
    return ApiSetup(enabled, alone, users, admins, origins, regex)


def preset_setup(args: argparse.Namespace):
    """(store, start-up preset, its start-up params) from --user-presets and --preset (the last
    two None without --preset); LaunchError when the folder is unusable or the preset is unknown
    or broken, so the studio never starts with settings other than the ones asked for."""
    from .. import presets

    folder = Path(getattr(args, "user_presets", None) or DEFAULT_USER_PRESETS).expanduser()
    if folder.exists() and not folder.is_dir():
        raise LaunchError(f"--user-presets: {folder} is a file, not a folder")
    store = presets.PresetStore(folder.resolve())
    name = getattr(args, "preset", None)
    if name is None:
        return store, None, None
    try:
        return store, store.get(name), presets.startup_params(name, store)
    except presets.PresetError as exc:
        raise LaunchError(f"--preset: {exc}") from None


def _warn_open(host: str, share: bool, page: bool, api: bool) -> None:
    """The --insecure warning, naming what is open (the page, the REST API or both) and the
    flag that closes each: --auth closes only the page, --api-auth only the API."""
    where = "a public link" if share else f"{host} (reachable from the network)"
    what = " and ".join(name for name, is_open in (("the studio", page), ("the REST API", api))
                        if is_open)
    close = " and ".join(flag for flag, is_open in (("--auth user:pass", page),
                                                   ("--api-auth user:pass", api)) if is_open)
    bar = "!" * 78
    verb = "are" if page and api else "is"
    print(f"\n{bar}\n!! WARNING: --insecure: {what} {verb} served on {where} WITHOUT a login.\n"
          "!! Anyone who finds it can run jobs on this GPU and see every result.\n"
          f"!! Use {close} to close it.\n{bar}\n", file=sys.stderr, flush=True)


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def queue_studio(demo, queue_size: int, places: int = 1) -> None:
    """Gradio's queue in front of the engine's. The page's GPU events may run one handler more
    than the engine holds (app.build), so a click beyond the engine's queue reaches a handler
    at once and gets the studio's "busy" answer; Gradio's own queue holds a burst of such
    clicks (twice the engine's room), so its "Queue is full!" comes only under a flood."""
    demo.queue(max_size=2 * (queue_size + places) + 1)


def upload_bytes(megabytes: float) -> int:
    return int(megabytes * 2 ** 20)


def launch_options(users: list[tuple[str, str]], throttle=None,
                   max_upload_mb: float = DEFAULT_UPLOAD_MB,
                   upload_cache_mb: float = DEFAULT_CACHE_MB, api=None) -> dict:
    """The keyword arguments of Blocks.launch() that make the studio safe to share (all but
    where it serves): the login, throttled (see logins.py), which files are served, the
    largest upload and the disk all uploads may take (upload_space.py). throttle: a
    logins.Throttle (default: a new one with the default policy). api: the REST API app
    (api_app) to serve on the studio's port, or None."""
    import contextlib

    from starlette.middleware import Middleware

    from .app import CSS, KEYS_JS
    from .logins import LoginThrottle
    from .upload_space import UploadSpace

    app_kwargs: dict = {"middleware": [
        Middleware(LoginThrottle, throttle=throttle),
        Middleware(UploadSpace, max_bytes=upload_bytes(upload_cache_mb))]}
    if api is not None:
        from ..api import mount

        @contextlib.asynccontextmanager
        async def serve_api(app):
            # The API joins the studio's app as the server starts, before it takes its first
            # connection: mounted after launch() returned, a client polling the API from the
            # start could be answered 404 by the page in between.
            mount(app, api)
            yield

        app_kwargs["lifespan"] = serve_api
    return dict(
        auth=users or None, auth_message="img2img studio: log in to continue.",
        # Only the project's assets are files a browser may fetch by path. Results reach the
        # page through gradio's cache, under names made from a hash of their content; the
        # outputs folder itself is never served, since it holds every user's results.
        allowed_paths=[str(ASSETS_DIR)],
        max_file_size=upload_bytes(max_upload_mb), show_error=False, ssr_mode=False, pwa=False,
        mcp_server=False, enable_monitoring=False, footer_links=["api"], css=CSS, js=KEYS_JS,
        prevent_thread_lock=True, app_kwargs=app_kwargs,
    )


def api_app(engine, store, setup: ApiSetup, args: argparse.Namespace, throttle=None):
    """The REST API application for `engine`, as the options ask."""
    from ..api import Access, ApiService, create_app
    from .logins import Throttle

    service = ApiService(engine, store, per_user_styles=bool(setup.users), flags=vars(args))
    access = Access(setup.users, setup.admins, throttle or Throttle())
    # Pictures travel as base64 in JSON: a third larger than the files themselves.
    upload_mb = getattr(args, "max_upload_mb", DEFAULT_UPLOAD_MB)
    return create_app(service, access, setup.cors_origins, setup.cors_regex,
                      max_body=upload_bytes(upload_mb * 4 / 3) + 2 ** 20)


def _serve_api_alone(app, host: str, port: int) -> int:
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning")
    server = uvicorn.Server(config)
    print(f"REST API on http://{host}:{port}/sdapi/v1 (docs: /docs)", file=sys.stderr,
          flush=True)
    try:
        server.run()
    except OSError as exc:
        return _fail(f"could not serve on {host}:{port} ({exc}); pick another --port",
                     EXIT_FAILED)
    return 0 if server.started else _fail(f"could not serve on {host}:{port}; pick another "
                                          "--port", EXIT_FAILED)


def _start_compiling(engine) -> None:
    """With the compiled path on (--compile; auto on CUDA), its default size compiles in the
    background from start-up; the studio serves meanwhile, its jobs eager until it is ready."""
    import threading

    def warm():
        try:
            size = engine.warm_compile()
        except Exception as exc:  # noqa: BLE001 - a failed warm-up leaves the studio eager
            print(f"note: the compiled UNet and VAE could not be prepared at start-up ({exc}); "
                  "jobs run eager", file=sys.stderr, flush=True)
            return
        if size:
            print(f"compiling the UNet and VAE for {size} in the background (eager until ready)",
                  file=sys.stderr, flush=True)
            if engine.wait_for_compiles(3600):
                print(f"compiled UNet and VAE ready for {size}", file=sys.stderr, flush=True)

    threading.Thread(target=warm, name="compile-warm-up", daemon=True).start()


def run(args: argparse.Namespace) -> int:
    """Start the studio and serve until interrupted; the exit status."""
    try:
        host, users, setup = check_all(args)
    except LaunchError as exc:
        return _fail(str(exc))
    try:
        store, preset, preset_params = preset_setup(args)
        limits = check_limits(args)
    except LaunchError as exc:
        return _fail(str(exc))
    exposed = args.share or not _is_loopback(host)
    page_open = not users and not setup.alone
    api_open = setup.enabled and not setup.users
    if args.insecure and exposed and (page_open or api_open):
        _warn_open(host, args.share, page_open, api_open)

    from ..engine import Engine, ModelError
    from .logins import Throttle

    outputs_dir = Path(args.outputs_dir).expanduser().resolve()
    try:
        outputs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return _fail(f"--outputs-dir: {outputs_dir} could not be created ({exc})")
    if getattr(args, "cluster", None):
        return _serve_on_cluster(args, host, users, setup, outputs_dir)
    engine = Engine(models_dir=args.models_dir, outputs_dir=outputs_dir, model=args.model or "",
                    queue_size=args.queue_size, compile=getattr(args, "compile", "auto"),
                    limits=limits, allow_downloads=downloads_allowed(args),
                    preview_decoder=getattr(args, "preview_decoder", "approx"),
                    lora_rank=getattr(args, "lora_rank", LORA_HOT_RANK))
    try:
        engine.check_model()
    except ModelError as exc:
        return _fail(f"--model: {exc}")
    # One record of failed logins for the page and the API: guesses cannot alternate.
    throttle = Throttle()
    _start_compiling(engine)
    if setup.alone:
        try:
            return _serve_api_alone(api_app(engine, store, setup, args, throttle), host,
                                    args.port)
        finally:
            _stop_engine(engine)

    from . import handlers, presets_panel
    from .app import build

    if engine.is_tiny():
        print(f"note: {handlers.tiny_notice(engine)}", file=sys.stderr, flush=True)
    startup = presets_panel.Startup(preset, preset_params) if preset is not None else None
    demo = build(handlers.Studio(engine), initial=startup, presets=store)
    queue_studio(demo, args.queue_size)
    api = api_app(engine, store, setup, args, throttle) if setup.enabled else None
    try:
        demo.launch(server_name=host, server_port=args.port, share=args.share,
                    **launch_options(users, throttle, args.max_upload_mb,
                                     args.max_upload_cache_mb, api=api))
    except OSError as exc:
        return _fail(f"could not serve on {host}:{args.port} ({exc}); pick another --port",
                     EXIT_FAILED)
    if setup.enabled:
        print(f"REST API on {demo.local_url.rstrip('/')}/sdapi/v1 (docs: /docs)",
              file=sys.stderr, flush=True)
    if args.share and not demo.share_url:
        # No tunnel (offline, or the tunnel helper is missing): keep serving locally.
        print("note: no public link could be made; the studio is served on "
              f"{demo.local_url} only.", file=sys.stderr, flush=True)
    # SIGTERM (a service manager's stop) ends the studio as Ctrl+C does, not mid-write.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        _stop_engine(engine)
    return 0


def _interrupt(*_):
    raise KeyboardInterrupt


def _stop_engine(engine, timeout: float = 60.0) -> None:
    """Cancel every job and wait (up to `timeout` s) until the running one has stopped, which
    it does within a step: the process then exits with nothing half-written (an interrupted
    job saves nothing)."""
    import time

    engine.cancel_all()
    deadline = time.monotonic() + timeout
    while engine.running_job() is not None and time.monotonic() < deadline:
        time.sleep(0.05)


def front_door(engine, args: argparse.Namespace, users: list[tuple[str, str]],
               setup: ApiSetup):
    """The studio page and (with --api) the REST API as one ASGI app, for a server other than
    the page's own launch(): the cluster's ingress deployment serves it. The same page, login,
    login throttle, served files, upload limit and API as run() serves; no --share tunnel."""
    import gradio as gr
    from fastapi import FastAPI

    from ..api import ApiDispatch
    from . import handlers, presets_panel
    from .app import build
    from .logins import Throttle

    store, preset, preset_params = preset_setup(args)
    throttle = Throttle()
    if setup.alone:
        return api_app(engine, store, setup, args, throttle)
    startup = presets_panel.Startup(preset, preset_params) if preset is not None else None
    demo = build(handlers.Studio(engine), initial=startup, presets=store)
    queue_studio(demo, args.queue_size, getattr(engine, "replicas", 1))
    options = launch_options(users, throttle, getattr(args, "max_upload_mb", DEFAULT_UPLOAD_MB),
                             getattr(args, "max_upload_cache_mb", DEFAULT_CACHE_MB))
    options.pop("prevent_thread_lock")
    page = gr.mount_gradio_app(FastAPI(), demo, path="", **options)
    if setup.enabled:
        return ApiDispatch(api_app(engine, store, setup, args, throttle), page)
    return page


def cluster_options(args: argparse.Namespace):
    """The --cluster options, checked (LaunchError naming the option), as ClusterOptions."""
    try:
        from ..cluster.deploy import ClusterError, ClusterOptions
    except ImportError:
        raise LaunchError("--cluster needs the cluster extra: pip install "
                          "'img2img-webui[cluster]' (Ray Serve)") from None
    if getattr(args, "preview_decoder", "approx") != "approx":
        raise LaunchError("--preview-decoder tiny is not available with --cluster (the "
                          "replicas make the rough previews)")
    if getattr(args, "lora_rank", LORA_HOT_RANK) != LORA_HOT_RANK:
        raise LaunchError(f"--lora-rank is not available with --cluster (the replicas reserve "
                          f"the default {LORA_HOT_RANK})")
    if args.share:
        raise LaunchError("--share is not available with --cluster (the cluster's HTTP proxy "
                          "serves the studio): use --listen with --auth, behind your own "
                          "tunnel or reverse proxy")
    if args.replicas < 1:
        raise LaunchError(f"--replicas must be at least 1 (got {args.replicas})")
    if args.replica_gpus is not None and args.replica_gpus < 0:
        raise LaunchError(f"--replica-gpus must be 0 or more (got {args.replica_gpus:g})")
    options = ClusterOptions(address=args.cluster, replicas=args.replicas,
                             min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                             gpus=args.replica_gpus)
    try:
        options.bounds()
    except ClusterError as exc:
        raise LaunchError(str(exc)) from None
    return options


def _serve_on_cluster(args: argparse.Namespace, host: str, users: list[tuple[str, str]],
                      setup: ApiSetup, outputs_dir: Path) -> int:
    """--cluster: the diffusion replicas and the studio's ingress deployment on Ray Serve,
    served by Serve's HTTP proxy on --host and --port, until Ctrl+C or SIGTERM (the running
    jobs are then cancelled, each stopping within a step, and everything is undeployed)."""
    import time

    from ..engine import Engine, ModelError

    try:
        options = cluster_options(args)
        preset_setup(args)  # refused here, before anything starts
    except LaunchError as exc:
        return _fail(str(exc))
    try:
        Engine(models_dir=args.models_dir, outputs_dir=outputs_dir, model=args.model or "",
               compile="off").check_model()
    except ModelError as exc:
        return _fail(f"--model: {exc}")
    from ..cluster.deploy import ClusterError, serve_studio

    print(f"starting {options.bounds()[0]} diffusion replica(s) and the studio on the Ray "
          f"cluster ({args.cluster}) ...", file=sys.stderr, flush=True)

    # SIGTERM stops it as Ctrl+C does, during start-up too (serve_studio then undeploys what
    # it had deployed before it gives up).
    signal.signal(signal.SIGTERM, _interrupt)
    served = None
    try:
        served = serve_studio(options, args, host, users, setup, outputs_dir)
        what = "REST API" if setup.alone else "studio"
        print(f"{what} on http://{host}:{args.port}/ (jobs on the cluster's replicas)",
              file=sys.stderr, flush=True)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    except ClusterError as exc:
        return _fail(str(exc), EXIT_FAILED)
    finally:
        if served is not None:
            print("stopping the studio and its replicas ...", file=sys.stderr, flush=True)
            served.shutdown()
    return 0
