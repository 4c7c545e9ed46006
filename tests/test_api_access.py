"""Who may reach the REST API, and from where: the launcher's checks of the API's options, HTTP
Basic on every route (with the login throttle), CORS exactly as the flags set it (also on the
studio's own port, where gradio's permissive policy must not leak onto the API), no secrets in
the listings, and `python -m webui --api` / `--nowebui` served for real."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from webui.__main__ import build_parser
from webui.api import Access, ApiService, create_app
from webui.presets import PresetStore
from webui.ui import launch
from webui.ui.launch import LaunchError
from webui.ui.logins import Policy, Throttle

from browser.conftest import (_wait_for_port, free_port, stop_process, studio_command,
                              studio_env)

USERS = [("ann", "pw1"), ("bob", "pw2")]
ERROR_KEYS = {"error", "detail", "body", "errors"}
V1 = "/sdapi/v1"


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def basic(user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# -- launch checks ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ("--listen", "--api", "--auth", "a:b"),
    ("--host", "192.168.1.5", "--api", "--auth", "a:b"),
    ("--share", "--api", "--auth", "a:b"),
    ("--nowebui", "--listen"),
])
def test_an_exposed_api_needs_api_auth(argv):
    with pytest.raises(LaunchError) as refused:
        launch.check(parse(*argv))
    assert "--api-auth" in str(refused.value) and "--insecure" in str(refused.value)
    # --insecure opens it, explicitly.
    args = parse(*argv, "--insecure")
    launch.check(args)
    assert launch.check_api(args, True).enabled


def test_the_api_check_applies_even_without_a_page_login():
    """check_api on its own (as run() calls it): exposed and no --api-auth is refused."""
    with pytest.raises(LaunchError, match="--api-auth"):
        launch.check_api(parse("--listen", "--api"), exposed=True)
    setup = launch.check_api(parse("--listen", "--api", "--api-auth", "ann:pw1"), exposed=True)
    assert setup.enabled and not setup.alone and setup.users == [("ann", "pw1")]


@pytest.mark.parametrize("argv", [("--api",), ("--api", "--host", "localhost"),
                                  ("--api", "--host", "::1"), ("--nowebui",)])
def test_a_loopback_api_needs_no_login(argv):
    args = parse(*argv)
    host, users = launch.check(args)
    assert users == []
    setup = launch.check_api(args, exposed=False)
    assert setup.enabled and setup.users == [] and setup.alone == ("--nowebui" in argv)
    assert host == args.host


def test_nowebui_on_the_network_needs_only_the_api_login():
    args = parse("--nowebui", "--listen", "--api-auth", "ann:pw1,bob:pw2")
    host, users = launch.check(args)  # no --auth: there is no page to protect
    assert host == "0.0.0.0" and users == []
    setup = launch.check_api(args, exposed=True)
    assert setup.alone and setup.enabled and setup.users == USERS


def test_nowebui_with_share_is_refused():
    with pytest.raises(LaunchError, match="--nowebui") as refused:
        launch.check(parse("--nowebui", "--share", "--api-auth", "ann:pw1", "--auth", "a:b"))
    assert "--share" in str(refused.value)


def test_api_admin_must_be_an_api_user():
    with pytest.raises(LaunchError, match="--api-admin") as refused:
        launch.check(parse("--api", "--api-auth", "ann:pw1", "--api-admin", "ann,carol"))
    assert "carol" in str(refused.value) and "ann," not in str(refused.value)
    # A page user is not an API user either.
    with pytest.raises(LaunchError, match="--api-admin"):
        launch.check(parse("--api", "--auth", "carol:x", "--api-admin", "carol"))
    setup = launch.check_api(parse("--api", "--api-auth", "ann:pw1,bob:pw2", "--api-admin",
                                   " bob ,"), exposed=False)
    assert setup.admins == frozenset({"bob"})


def test_cors_options_are_checked_and_kept():
    with pytest.raises(LaunchError, match="--cors-allow-origins-regex"):
        launch.check(parse("--api", "--cors-allow-origins-regex", "https?://(localhost"))
    setup = launch.check_api(parse("--api", "--cors-allow-origins",
                                   "http://a.example, http://b.example,",
                                   "--cors-allow-origins-regex", r"https?://localhost:\d+"),
                             exposed=False)
    assert setup.cors_origins == ["http://a.example", "http://b.example"]
    assert setup.cors_regex == r"https?://localhost:\d+"


@pytest.mark.parametrize("argv", [
    ("--api-auth", "ann:pw1"),
    ("--api-auth", "ann:pw1", "--api-admin", "ann"),
    ("--cors-allow-origins", "http://a.example"),
    ("--cors-allow-origins-regex", "http://.*"),
])
def test_api_options_without_the_api_are_refused(argv):
    with pytest.raises(LaunchError, match="--api") as refused:
        launch.check(parse(*argv))
    assert "--nowebui" in str(refused.value)
    launch.check(parse(*argv, "--api"))  # accepted with it


def test_api_auth_file(tmp_path):
    users = tmp_path / "api-users.txt"
    users.write_text("# the API's users\n\nann:pw1\n   # indented comment\n\n"
                     "bob:pw:with:colons\n", encoding="utf-8")
    setup = launch.check_api(parse("--api", "--api-auth-file", str(users)), exposed=True)
    assert setup.users == [("ann", "pw1"), ("bob", "pw:with:colons")]
    both = launch.check_api(parse("--api", "--api-auth", "carol:pw3", "--api-auth-file",
                                  str(users)), exposed=True)
    assert [user for user, _ in both.users] == ["carol", "ann", "bob"]
    missing = tmp_path / "nowhere" / "users.txt"
    with pytest.raises(LaunchError, match="--api-auth-file") as refused:
        launch.check(parse("--api", "--api-auth-file", str(missing)))
    assert str(missing) in str(refused.value)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nobody yet\n\n")
    with pytest.raises(LaunchError, match="no user:pass lines") as refused:
        launch.check(parse("--api", "--api-auth-file", str(empty)))
    assert str(empty) in str(refused.value)
    bad = tmp_path / "bad.txt"
    bad.write_text("ann:pw1\nbob\n")
    with pytest.raises(LaunchError, match="line 2"):
        launch.check(parse("--api", "--api-auth-file", str(bad)))


def test_bad_api_options_exit_2_with_one_line_before_the_heavy_imports(tmp_path):
    """`python -m webui` refuses at once: status 2, one 'error:' line. Stand-ins for torch and
    gradio that end the process with another status prove neither was imported."""
    poison = tmp_path / "poison"
    for name in ("torch", "gradio", "diffusers"):
        (poison / name).mkdir(parents=True)
        (poison / name / "__init__.py").write_text("import os\nos._exit(99)\n")
    env = {**studio_env(), "PYTHONPATH": os.pathsep.join(
        filter(None, [str(poison), os.environ.get("PYTHONPATH")]))}
    for extra, named in ((("--listen", "--api"), "--auth"),
                         (("--listen", "--api", "--auth", "a:b"), "--api-auth"),
                         (("--api", "--api-admin", "zed"), "--api-admin")):
        out = subprocess.run(studio_command(free_port(), *extra), cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 2, (extra, out.returncode, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
        assert named in lines[0], (extra, lines)
        assert out.stdout == ""
    assert not (tmp_path / "outputs").exists()  # refused before anything was made


def run_until_the_engine(tmp_path, capsys, *argv: str) -> tuple[int, str]:
    """launch.run() in-process with a model that does not exist: everything before the engine
    (checks, the --insecure warning) runs, nothing is served. (exit status, stderr)."""
    code = launch.run(parse(*argv, "--model", "no-such-model", "--models-dir",
                            str(tmp_path / "models"), "--outputs-dir", str(tmp_path / "out"),
                            "--user-presets", str(tmp_path / "presets")))
    return code, capsys.readouterr().err


def test_insecure_warning_for_an_open_page_names_auth(tmp_path, capsys):
    code, err = run_until_the_engine(tmp_path, capsys, "--listen", "--insecure", "--api",
                                     "--api-auth", "ann:pw1")
    assert code == 2 and "error: --model" in err
    assert "WARNING: --insecure" in err and "--auth" in err


@pytest.mark.parametrize("argv", [("--listen", "--auth", "a:b", "--api", "--insecure"),
                                  ("--nowebui", "--listen", "--insecure")])
def test_insecure_warning_for_an_open_api_names_api_auth(tmp_path, capsys, argv):
    code, err = run_until_the_engine(tmp_path, capsys, *argv)
    assert code == 2 and "error: --model" in err
    warning = err.split("error:")[0]
    assert "WARNING: --insecure" in warning
    assert "--api-auth" in warning, (
        "BUG (launch.run/_warn_open): with the REST API open but the page closed or absent, "
        "the --insecure warning says the studio has no login and advises --auth, which does "
        f"not close the API; it should name the API and --api-auth. Got: {warning!r}")


# -- HTTP Basic on every route ----------------------------------------------------------------
@pytest.fixture(scope="module")
def api_engine(tmp_path_factory):
    from webui.engine import Engine

    root = tmp_path_factory.mktemp("api-access")
    engine = Engine(models_dir=root / "models", outputs_dir=root / "out", model="tiny-random",
                    device="cpu")
    yield engine
    engine.cancel_all()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return PresetStore(tmp_path_factory.mktemp("api-presets"))


def make_app(engine, store, access=None, **options):
    return create_app(ApiService(engine, store), access, **options)


@pytest.fixture(scope="module")
def guarded(api_engine, store):
    # A throttle that never slows or locks: these tests count answers, not guesses.
    never = Throttle(Policy(slow_after=10_000, delay=0, lock_after=10_000))
    return make_app(api_engine, store, Access(users=USERS, admins=frozenset({"bob"}),
                                              throttle=never))


def routes(app) -> list[tuple[str, str]]:
    found = [(method, route.path) for route in app.routes if isinstance(route, APIRoute)
             for method in sorted(route.methods)]
    return found


def test_the_route_list_covers_what_clients_call(guarded):
    paths = {path for _, path in routes(guarded)}
    for path in ("/docs", "/openapi.json", f"{V1}/txt2img", f"{V1}/txt2img/",
                 f"{V1}/options/", "/internal/ping", "/controlnet/model_list"):
        assert path in paths, path
    # Every route also answers with a trailing slash (clients build URLs both ways).
    for method, path in routes(guarded):
        if path != "/openapi.json":
            twin = path[:-1] if path.endswith("/") else path + "/"
            assert (method, twin) in routes(guarded), (method, path)


BAD_CREDENTIALS = {
    "none": {},
    "wrong password": basic("ann", "pw2"),
    "wrong user": basic("carol", "pw1"),
    "other user's password": basic("bob", "pw1"),
    "empty basic": {"Authorization": "Basic "},
    "bare basic": {"Authorization": "Basic"},
    "not base64": {"Authorization": "Basic %%%"},
    "no colon": {"Authorization": "Basic " + base64.b64encode(b"annpw1").decode()},
    "bearer": {"Authorization": "Bearer pw1"},
}


@pytest.mark.parametrize("case", list(BAD_CREDENTIALS))
def test_every_route_refuses_bad_credentials(guarded, case):
    client = TestClient(guarded, raise_server_exceptions=False)
    headers = BAD_CREDENTIALS[case]
    for method, path in routes(guarded):
        response = client.request(method, path, headers=headers,
                                  json={} if method == "POST" else None)
        assert response.status_code == 401, (case, method, path, response.status_code,
                                             response.text[:200])
        assert response.headers["www-authenticate"].startswith("Basic"), (method, path)
        body = response.json()
        assert ERROR_KEYS <= set(body), (method, path, body)
        assert "pw1" not in response.text and "pw2" not in response.text


def test_every_get_route_answers_the_right_credentials(guarded):
    client = TestClient(guarded, raise_server_exceptions=False)
    gets = [path for method, path in routes(guarded) if method == "GET"]
    for user, password in USERS:
        for path in gets:
            response = client.get(path, headers=basic(user, password))
            assert response.status_code == 200, (user, path, response.status_code,
                                                 response.text[:200])
    assert client.get("/internal/ping", auth=USERS[0]).json() == {}
    # The credentials as httpx's own auth sends them, and the scheme in any case.
    token = base64.b64encode(b"bob:pw2").decode()
    assert client.get(f"{V1}/options", headers={"Authorization": f"basic {token}"}
                      ).status_code == 200


class Clock:
    def __init__(self):
        self.now = 5000.0

    def __call__(self):
        return self.now


def test_repeated_failures_are_locked_out_then_the_password_works_again(api_engine, store):
    clock = Clock()
    policy = Policy(slow_after=1, delay=0, lock_after=3, lock_seconds=60)
    throttle = Throttle(policy, clock)
    app = make_app(api_engine, store, Access(users=USERS, throttle=throttle))
    client = TestClient(app, raise_server_exceptions=False)
    ping = "/internal/ping"
    for n in range(policy.lock_after):
        assert client.get(ping, headers=basic("ann", f"guess{n}")).status_code == 401, n
    refused = client.get(ping, headers=basic("ann", "pw1"))  # even the right one
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) == policy.lock_seconds
    assert ERROR_KEYS <= set(refused.json())
    assert f"{int(policy.lock_seconds)} s" in refused.json()["detail"]
    # Every route is locked for that address, not only the one guessed at.
    assert client.get(f"{V1}/options", headers=basic("bob", "pw2")).status_code == 429
    # Another address is not.
    other = TestClient(app, raise_server_exceptions=False, client=("192.0.2.7", 4000))
    assert other.get(ping, headers=basic("ann", "pw1")).status_code == 200
    clock.now += policy.lock_seconds / 2
    locked = client.get(ping, headers=basic("ann", "pw1"))
    assert locked.status_code == 429
    assert int(locked.headers["retry-after"]) == policy.lock_seconds / 2
    clock.now += policy.lock_seconds / 2 + 1
    assert client.get(ping, headers=basic("ann", "pw1")).status_code == 200
    # The success cleared the record: a new wrong guess is a plain 401 again.
    assert client.get(ping, headers=basic("ann", "nope")).status_code == 401
    assert client.get(ping, headers=basic("ann", "pw1")).status_code == 200


def test_answers_after_a_few_failures_are_held_back(api_engine, store, monkeypatch):
    """Past slow_after failures each answer waits the policy's delay (awaited, so the routes'
    threads stay free); a success clears it."""
    from webui.api import app as api_app_module

    held: list[float] = []

    async def record(seconds):
        held.append(seconds)

    monkeypatch.setattr(api_app_module.asyncio, "sleep", record)
    policy = Policy(slow_after=2, delay=0.7, lock_after=100)
    app = make_app(api_engine, store, Access(users=USERS, throttle=Throttle(policy, Clock())))
    client = TestClient(app, raise_server_exceptions=False)
    for n in range(4):
        assert client.get("/internal/ping", headers=basic("ann", f"guess{n}")).status_code == 401
    assert held == [0.7, 0.7]  # the third and fourth guesses
    assert client.get("/internal/ping", headers=basic("ann", "pw1")).status_code == 200
    assert held == [0.7, 0.7, 0.7]  # held too: the address had failed
    assert client.get("/internal/ping", headers=basic("ann", "pw1")).status_code == 200
    assert len(held) == 3  # the success cleared the record


def test_the_launchers_api_shares_the_page_logins_throttle(api_engine, store):
    """run() hands one Throttle to both front doors: launch.api_app counts the API's failures
    in it, and launch_options gives the very same one to the page's login middleware, so
    guesses cannot alternate between the two."""
    clock = Clock()
    throttle = Throttle(Policy(slow_after=1, delay=0, lock_after=2, lock_seconds=30), clock)
    args = parse("--api", "--api-auth", "ann:pw1")
    setup = launch.check_api(args, exposed=False)
    app = launch.api_app(api_engine, store, setup, args, throttle)
    client = TestClient(app, raise_server_exceptions=False)
    for guess in ("a", "b"):
        assert client.get("/internal/ping", headers=basic("ann", guess)).status_code == 401
    locked, _ = throttle.check("testclient")
    assert locked == 30
    options = launch.launch_options([("ann", "page-pw")], throttle)
    page_throttle = options["app_kwargs"]["middleware"][0].kwargs["throttle"]
    assert page_throttle is throttle


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic "}, {"Authorization": "Basic"},
                                     basic("anyone", "anything")])
def test_with_auth_off_every_request_is_served(api_engine, store, headers):
    client = TestClient(make_app(api_engine, store, Access()), raise_server_exceptions=False)
    for path in ("/internal/ping", f"{V1}/options", f"{V1}/sd-models", "/openapi.json"):
        response = client.get(path, headers=headers)
        assert response.status_code == 200, (headers, path, response.text[:200])
        assert "www-authenticate" not in response.headers


# -- CORS -----------------------------------------------------------------------------------
def preflight(client, origin: str, path: str = f"{V1}/txt2img"):
    return client.options(path, headers={"Origin": origin,
                                         "Access-Control-Request-Method": "POST",
                                         "Access-Control-Request-Headers":
                                             "authorization, content-type"})


def test_cors_allows_exactly_the_listed_origins(api_engine, store):
    allowed = "http://paint.example"
    client = TestClient(make_app(api_engine, store, Access(users=USERS),
                                 cors_origins=[allowed]), raise_server_exceptions=False)
    answer = preflight(client, allowed)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == allowed
    assert "POST" in answer.headers["access-control-allow-methods"]
    assert "authorization" in answer.headers["access-control-allow-headers"].lower()
    for other in ("http://evil.example", "http://paint.example.evil.example",
                  "https://paint.example", "null"):
        refused = preflight(client, other)
        assert "access-control-allow-origin" not in refused.headers, other
        simple = client.get(f"{V1}/options", headers={"Origin": other, **basic(*USERS[0])})
        assert "access-control-allow-origin" not in simple.headers, other
    simple = client.get(f"{V1}/options", headers={"Origin": allowed, **basic(*USERS[0])})
    assert simple.status_code == 200
    assert simple.headers["access-control-allow-origin"] == allowed
    # CORS does not replace the login.
    assert client.get(f"{V1}/options", headers={"Origin": allowed}).status_code == 401


def test_cors_regex_matches_whole_origins(api_engine, store):
    client = TestClient(make_app(api_engine, store, cors_regex=r"https?://localhost:\d+"),
                        raise_server_exceptions=False)
    for origin in ("http://localhost:5173", "https://localhost:8080"):
        assert preflight(client, origin).headers.get("access-control-allow-origin") == origin
    for origin in ("http://localhost:5173.evil.example", "http://evil.example",
                   "http://localhost"):
        assert "access-control-allow-origin" not in preflight(client, origin).headers, origin


def test_without_cors_options_no_origin_is_allowed(api_engine, store):
    app = make_app(api_engine, store)
    client = TestClient(app, raise_server_exceptions=False)
    for origin in ("http://evil.example", "http://localhost:7860", "http://127.0.0.1:7860",
                   "null"):
        assert "access-control-allow-origin" not in preflight(client, origin).headers, origin
        for method, path in routes(app):
            if method == "GET":
                response = client.get(path, headers={"Origin": origin})
                assert response.status_code == 200, path
                assert "access-control-allow-origin" not in response.headers, (origin, path)


@contextlib.contextmanager
def studio_with_api(engine, store, *argv: str):
    """The studio served in-process on a free loopback port as run() serves it (launch.py's
    options, no page login), with the API built by launch.api_app mounted on its port."""
    from webui.ui.app import build
    from webui.ui.handlers import Studio

    args = parse("--api", *argv)
    host, users = launch.check(args)
    setup = launch.check_api(args, exposed=False)
    demo = build(Studio(engine), presets=store)
    demo.queue(max_size=4)
    port = free_port()
    demo.launch(server_name=host, server_port=port, quiet=True, **launch.launch_options(
        users, api=launch.api_app(engine, store, setup, args)))
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        demo.close()


def test_the_api_answers_the_first_request_the_launched_studio_takes(api_engine, store):
    """The API is part of the studio's app from the moment its server starts (no window in
    which a client polling /sdapi finds only the page and its 404)."""
    with studio_with_api(api_engine, store) as (url, port):
        first = httpx.get(f"{url}/internal/ping", timeout=30)
        options = httpx.get(f"{url}{V1}/options", timeout=30)
        page = httpx.get(f"{url}/config", timeout=30)
    assert first.status_code == 200 and first.json() == {}
    assert options.status_code == 200 and "sd_model_checkpoint" in options.json()
    assert page.status_code == 200


def test_on_the_studios_port_the_api_keeps_its_own_cors_policy(api_engine, store):
    with studio_with_api(api_engine, store, "--api-auth", "ann:pw1") as (url, port), \
            httpx.Client(base_url=url, timeout=30) as http:
        spoofed = {"Origin": "http://evil.example", "Host": f"192.168.1.5:{port}"}
        # The control: for a request that seems to come over the network, gradio's own policy
        # lets any origin read the studio's answers ...
        page = http.get("/config", headers=spoofed)
        assert page.headers.get("access-control-allow-origin") == "http://evil.example", \
            "control: gradio no longer allows other origins for a network Host"
        # ... but the API's answers carry no CORS grant at all.
        for path in (f"{V1}/options", f"{V1}/options/", "/internal/ping", "/openapi.json"):
            answer = http.get(path, headers={**spoofed, **basic("ann", "pw1")})
            assert answer.status_code == 200, (path, answer.text[:200])
            assert "access-control-allow-origin" not in answer.headers, path
            assert "access-control-allow-credentials" not in answer.headers, path
        assert http.get(f"{V1}/options", headers={**spoofed, **basic("ann", "pw1")}
                        ).json()["sd_model_checkpoint"] == api_engine.model
        answer = preflight(http, "http://evil.example", f"{V1}/txt2img")
        assert "access-control-allow-origin" not in answer.headers
        refused = http.get(f"{V1}/options", headers=spoofed)
        assert refused.status_code == 401 and "access-control-allow-origin" not in \
            refused.headers
        assert ERROR_KEYS <= set(refused.json())
        # The studio itself is untouched by the API in front of it.
        home = http.get("/")
        assert home.status_code == 200 and "<html" in home.text.lower()


# -- secrets ----------------------------------------------------------------------------------
def test_cmd_flags_hold_no_secret_and_no_path(api_engine, store):
    args = parse("--api", "--api-auth", "ann:secret1", "--auth", "x:secret2", "--models-dir",
                 "/some/where", "--outputs-dir", "/other/place", "--auth-file", "/etc/users",
                 "--api-auth-file", "/etc/api-users", "--user-presets", "/srv/presets")
    service = ApiService(api_engine, store, flags=vars(args))
    client = TestClient(create_app(service, Access(users=[("ann", "secret1")])),
                        raise_server_exceptions=False)
    response = client.get(f"{V1}/cmd-flags", auth=("ann", "secret1"))
    assert response.status_code == 200
    flags = response.json()
    for secret in ("secret1", "secret2", "/some/where", "/other/place", "/etc/users",
                   "/etc/api-users", "/srv/presets"):
        assert secret not in response.text, secret
    assert not [key for key in flags if "auth" in key.lower()], flags
    assert not [key for key in flags if "dir" in key or "file" in key], flags
    # What it does report is what was launched with.
    assert flags["port"] == args.port and flags["api"] is True and flags["host"] == args.host


def test_listings_hold_no_server_path(tmp_path, store):
    from safetensors.torch import save_file
    import torch

    from webui.engine import Engine

    models = tmp_path / "models"
    weights = {"w": torch.zeros(1)}
    for place in ("Stable-diffusion/mine/painted.safetensors", "Lora/styles/ink.safetensors",
                  "ControlNet/edges.safetensors"):
        (models / place).parent.mkdir(parents=True, exist_ok=True)
        save_file(weights, models / place)
    engine = Engine(models_dir=models, outputs_dir=tmp_path / "out", model="tiny-random",
                    device="cpu")
    client = TestClient(make_app(engine, store), raise_server_exceptions=False)
    answers = {path: client.get(path) for path in (f"{V1}/sd-models", f"{V1}/loras",
                                                   "/controlnet/model_list", f"{V1}/options")}
    for path, answer in answers.items():
        assert answer.status_code == 200, (path, answer.text[:200])
        assert str(tmp_path) not in answer.text, path

    def strings(value):
        if isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)
        elif isinstance(value, str):
            yield value

    for path, answer in answers.items():
        absolute = [s for s in strings(answer.json()) if s.startswith("/") or ":\\" in s]
        assert absolute == [], (path, absolute)
    names = [entry["filename"] for entry in answers[f"{V1}/sd-models"].json()]
    assert engine.models()[0] in names and any("painted" in name for name in names)
    assert [entry["name"] for entry in answers[f"{V1}/loras"].json()] == engine.list_loras()
    assert engine.list_loras(), "the LoRA written above is listed"


# -- served for real ---------------------------------------------------------------------------
@contextlib.contextmanager
def studio_process(cwd: Path, *argv: str, ready: str | None = None):
    """`python -m webui ARGV` on a free loopback port in `cwd` (its default folders under it);
    yields its URL once the port is open (and `ready`, if given, is in its log); stops it
    afterwards."""
    port = free_port()
    log = cwd / "studio.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(studio_command(port, "--model", "tiny-random", *argv),
                                   cwd=cwd, env=studio_env(), stdout=handle,
                                   stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, process, log)
        deadline = time.monotonic() + 60
        while ready is not None and ready not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


def test_served_with_the_studio(tmp_path):
    # The first request, sent as soon as the port opens, already finds the API.
    with studio_process(tmp_path, "--api", "--api-auth", "ann:pw") as url, \
            httpx.Client(base_url=url, timeout=30) as http:
        ping = http.get("/internal/ping", auth=("ann", "pw"))
        assert ping.status_code == 200 and ping.json() == {}
        refused = http.get("/internal/ping")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith(
            "Basic")
        assert http.get("/internal/ping", auth=("ann", "nope")).status_code == 401
        page = http.get("/")  # the page has no login of its own (no --auth)
        assert page.status_code == 200 and "<html" in page.text.lower()
        options = http.get(f"{V1}/options/", auth=("ann", "pw"))
        assert options.status_code == 200 and options.json()["sd_model_checkpoint"] == \
            "tiny-random"
        assert (tmp_path / "outputs").is_dir()  # its folders in its working directory


def test_served_alone(tmp_path):
    with studio_process(tmp_path, "--nowebui", ready="REST API on") as url, \
            httpx.Client(base_url=url, timeout=30) as http:
        options = http.get(f"{V1}/options")
        assert options.status_code == 200
        assert options.json()["sd_model_checkpoint"] == "tiny-random"
        assert http.get("/internal/ping").json() == {}
        assert http.get("/").status_code == 404
        assert http.get("/config").status_code == 404
        assert json.loads(http.get("/openapi.json").text)["info"]["title"]
