"""`python -m webui`: the studio's launch options and start-up.

A studio reachable from other machines is an open door to the GPU and to the files it serves, so
a public link (--share) or a network-facing address (--listen, a non-loopback --host) needs a
login, unless --insecure says, explicitly, that it should stay open. Bad options exit with
status 2 and one line saying what is wrong and how to fix it, before anything heavy is imported.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_QUEUE_SIZE = 16
DEFAULT_USER_PRESETS = "user-presets"
# Big enough for any photo an artist uploads, small enough that uploads cannot fill the disk.
MAX_UPLOAD = "64mb"
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
                       help="require a login; several users separated by commas")
    group.add_argument("--auth-file", metavar="FILE",
                       help="require a login; one user:pass per line (# comments allowed)")
    group.add_argument("--insecure", action="store_true",
                       help="allow --share/--listen without a login (anyone can use the GPU)")
    group.add_argument("--model", default=None,
                       help="model to start with: a name from the models folder, a .safetensors "
                       "file, a diffusers folder or a hub id (default: the first one found)")
    group.add_argument("--models-dir", default="models",
                       help="models folder, with Stable-diffusion/ and Lora/ (default: models)")
    group.add_argument("--outputs-dir", default="outputs",
                       help="where results are written and served from (default: outputs)")
    group.add_argument("--queue-size", type=int, default=DEFAULT_QUEUE_SIZE,
                       help=f"jobs that may wait for the GPU (default {DEFAULT_QUEUE_SIZE})")
    group.add_argument("--preset", metavar="NAME", default=None,
                       help="start the page with this preset's settings (shipped or from "
                       "--user-presets)")
    group.add_argument("--user-presets", metavar="DIR", default=DEFAULT_USER_PRESETS,
                       help="folder of saved presets; with a login, each user gets a folder "
                       f"inside it (default: {DEFAULT_USER_PRESETS})")


def _pair(text: str, where: str) -> tuple[str, str]:
    user, sep, password = text.strip().partition(":")
    if not sep or not user.strip() or not password:
        raise LaunchError(f"{where}: expected user:pass, got {text.strip()!r}")
    return user.strip(), password


def parse_auth(auth: str | None, auth_file: str | None) -> list[tuple[str, str]]:
    """The (user, password) pairs of --auth and --auth-file; LaunchError on bad syntax."""
    users: list[tuple[str, str]] = []
    if auth is not None:
        entries = [entry for entry in auth.split(",") if entry.strip()]
        if not entries:
            raise LaunchError("--auth: expected user:pass[,user2:pass2], got nothing")
        users += [_pair(entry, "--auth") for entry in entries]
    if auth_file is not None:
        path = Path(auth_file).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise LaunchError(f"--auth-file: no such file: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise LaunchError(f"--auth-file: {path} could not be read ({exc})") from None
        found = 0
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            users.append(_pair(line, f"--auth-file {path}, line {number}"))
            found += 1
        if not found:
            raise LaunchError(f"--auth-file: {path} has no user:pass lines")
    return users


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume the network can reach it


def check(args: argparse.Namespace) -> tuple[str, list[tuple[str, str]]]:
    """(host to serve on, users) from the options; LaunchError for anything unusable."""
    users = parse_auth(args.auth, args.auth_file)
    host = "0.0.0.0" if args.listen else args.host
    if not 1 <= args.port <= 65535:
        raise LaunchError(f"--port must be from 1 to 65535 (got {args.port})")
    if args.queue_size < 1:
        raise LaunchError(f"--queue-size must be at least 1 (got {args.queue_size})")
    exposed = args.share or not _is_loopback(host)
    if exposed and not users and not args.insecure:
        what = ("--share makes a public link" if args.share else
                f"serving on {host} opens the studio to the network")
        raise LaunchError(
            f"{what}, and without a login anyone who finds it can use your GPU and read the "
            "results. Add --auth user:pass (or --auth-file FILE), or pass --insecure to open it "
            "anyway.")
    return host, users


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


def _warn_open(host: str, share: bool) -> None:
    where = "a public link" if share else f"{host} (reachable from the network)"
    bar = "!" * 78
    print(f"\n{bar}\n!! WARNING: --insecure: the studio is served on {where} WITHOUT a login.\n"
          "!! Anyone who finds it can run jobs on this GPU and see every result.\n"
          f"!! Use --auth user:pass to close it.\n{bar}\n", file=sys.stderr, flush=True)


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def launch_options(users: list[tuple[str, str]], throttle=None) -> dict:
    """The keyword arguments of Blocks.launch() that make the studio safe to share (all but
    where it serves): the login, throttled (see logins.py), and which files are served.
    throttle: a logins.Throttle (default: a new one with the default policy)."""
    from starlette.middleware import Middleware

    from .app import CSS, KEYS_JS
    from .logins import LoginThrottle

    return dict(
        auth=users or None, auth_message="img2img studio: log in to continue.",
        # Only the project's assets are files a browser may fetch by path. Results reach the
        # page through gradio's cache, under names made from a hash of their content; the
        # outputs folder itself is never served, since it holds every user's results.
        allowed_paths=[str(ASSETS_DIR)],
        max_file_size=MAX_UPLOAD, show_error=False, ssr_mode=False, pwa=False,
        mcp_server=False, enable_monitoring=False, footer_links=["api"], css=CSS, js=KEYS_JS,
        prevent_thread_lock=True,
        app_kwargs={"middleware": [Middleware(LoginThrottle, throttle=throttle)]},
    )


def run(args: argparse.Namespace) -> int:
    """Start the studio and serve until interrupted; the exit status."""
    try:
        host, users = check(args)
    except LaunchError as exc:
        return _fail(str(exc))
    try:
        store, preset, preset_params = preset_setup(args)
    except LaunchError as exc:
        return _fail(str(exc))
    if args.insecure and not users and (args.share or not _is_loopback(host)):
        _warn_open(host, args.share)

    from ..engine import Engine, ModelError

    outputs_dir = Path(args.outputs_dir).expanduser().resolve()
    try:
        outputs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return _fail(f"--outputs-dir: {outputs_dir} could not be created ({exc})")
    engine = Engine(models_dir=args.models_dir, outputs_dir=outputs_dir, model=args.model or "",
                    queue_size=args.queue_size)
    try:
        engine.check_model()
    except ModelError as exc:
        return _fail(f"--model: {exc}")

    from . import handlers, presets_panel
    from .app import build

    if engine.is_tiny():
        print(f"note: {handlers.tiny_notice(engine)}", file=sys.stderr, flush=True)
    startup = presets_panel.Startup(preset, preset_params) if preset is not None else None
    demo = build(handlers.Studio(engine), initial=startup, presets=store)
    demo.queue(max_size=args.queue_size)
    try:
        demo.launch(server_name=host, server_port=args.port, share=args.share,
                    **launch_options(users))
    except OSError as exc:
        return _fail(f"could not serve on {host}:{args.port} ({exc}); pick another --port",
                     EXIT_FAILED)
    if args.share and not demo.share_url:
        # No tunnel (offline, or the tunnel helper is missing): keep serving locally.
        print("note: no public link could be made; the studio is served on "
              f"{demo.local_url} only.", file=sys.stderr, flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        engine.cancel_all()
    return 0
