"""Attacks on a shared studio, tried over HTTP against the studio as `python -m webui` serves it:
reading or probing server files through any picture input, reading other users' results, and
guessing passwords."""

from __future__ import annotations

import itertools
import os
import re
import threading
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from webui.engine.core import Engine
from webui.tiny import build_pipeline
from webui.ui import uploads
from webui.ui.handlers import Studio
from webui.ui.logins import Policy, Throttle

from serving import served
from tests.support.tiny_adapters import make_controlnet

USERS = (("alice", "alice-pw"), ("bob", "bob-pw"))
FAST = dict(steps=2, strength=0.5, pag_scale=0.0)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("security")
    make_controlnet(build_pipeline("tiny-random"), base / "models" / "ControlNet" / "tiny-canny",
                    seed=6)
    return base


@pytest.fixture(scope="module")
def studio(root):
    engine = Engine(models_dir=root / "models", outputs_dir=root / "outputs", device="cpu",
                    model="tiny-random")
    yield Studio(engine)
    engine.cancel_all()


@pytest.fixture(scope="module")
def url(studio):
    with served(studio, USERS) as address:
        yield address


@pytest.fixture(scope="module")
def targets(root):
    """Server files a client must never get at, each named by its path: a private picture
    (distinct colours, so a served copy would be recognisable), a missing file, a folder, an
    empty file, a text file, a file in gradio's upload folder that gradio never received, and a
    link in the upload folder pointing at the private picture."""
    private = root / "private"
    private.mkdir()
    secret = private / "secret.png"
    Image.new("RGB", (64, 64), (13, 171, 99)).save(secret)
    (private / "empty.png").write_bytes(b"")
    (private / "notes.png").write_text("not a picture")
    planted_dir = Path(uploads.get_upload_folder()) / f"planted-{uuid.uuid4().hex}"
    planted_dir.mkdir(parents=True)
    planted = planted_dir / "planted.png"
    Image.new("RGB", (64, 64), (13, 171, 99)).save(planted)
    link = planted_dir / "link.png"
    os.symlink(secret, link)
    paths = {"secret": secret, "missing": private / "missing.png", "folder": private,
             "empty": private / "empty.png", "text": private / "notes.png", "planted": planted,
             "link": link, "traversal": Path(f"{planted_dir}/../../{secret}")}
    yield {name: str(path) for name, path in paths.items()}
    for path in (planted, link):
        path.unlink()
    planted_dir.rmdir()


def client(url, user=USERS[0]):
    """A gradio_client of the served studio. It waits for its uploads and downloads as long
    as a job may take (the library's default gives up after a few seconds, which a busy
    machine running the whole suite can exceed)."""
    from gradio_client import Client

    return Client(url, auth=user, verbose=False, httpx_kwargs={"timeout": 120})


@pytest.fixture(scope="module")
def alice(url):
    return client(url)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    rng = np.random.RandomState(3)
    Image.fromarray(rng.randint(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return str(path)


def _answer(call) -> str:
    """What the client gets: the error text, or the result as text."""
    try:
        return repr(call())
    except Exception as exc:  # noqa: BLE001 - the error text is what is compared
        return f"error: {exc}"


def _cn(payload):
    return dict(cn1_enabled=True, cn1_model="tiny-canny", cn1_source="upload",
                cn1_image=payload)


# Every picture (and file) input of the two GPU events, as keyword settings around a payload.
# The init image is the photo uploaded properly, except where it is the input under attack.
INPUTS = {
    "init_image": lambda bad, good: dict(init_image=bad),
    "reference_image": lambda bad, good: dict(init_image=good, reference_image=bad),
    "mask background": lambda bad, good: dict(
        init_image=None, mode="inpaint", mask={"background": bad, "layers": [], "composite": bad}),
    "mask layer": lambda bad, good: dict(
        init_image=good, mode="inpaint", mask={"background": good, "layers": [bad],
                                               "composite": good}),
    "mask_image": lambda bad, good: dict(init_image=good, mode="inpaint", mask_image=bad),
    "control image": lambda bad, good: dict(init_image=good, **_cn(bad)),
    "latents": lambda bad, good: dict(init_image=None, latents=bad),
}


# Inputs whose payloads gradio validates itself (the mask editor's and the file box's), so the
# handler never sees a payload gradio did not make.
GRADIO_CHECKS = ("mask background", "mask layer", "latents")


@pytest.mark.parametrize("api", ["/img2img", "/xy_plot"])
@pytest.mark.parametrize("field", list(INPUTS))
def test_picture_inputs_open_only_what_gradio_received(alice, targets, photo, api, field):
    from gradio_client import handle_file

    good = handle_file(photo)
    answers = {}
    for name, path in targets.items():
        settings = INPUTS[field]({"path": path}, good)
        settings.update(FAST)
        if api == "/xy_plot":
            settings.update(x_axis="Seed", x_values="1", y_axis="Seed", y_values="1")
        answers[name] = _answer(lambda: alice.predict(**settings, api_name=api))
    # One answer for every path: nothing tells which exist, and none was opened.
    assert len(set(answers.values())) == 1, answers
    text = next(iter(answers.values()))
    if field in GRADIO_CHECKS:
        # Gradio checks these payloads itself, before any handler runs.
        assert text.startswith("error: The upstream Gradio app has raised an exception")
    else:
        assert uploads.REFUSED in text
    for path in targets.values():
        assert path not in text and "private" not in text


def test_the_real_upload_still_works_for_every_input(alice, photo):
    """The attack test's control: the same inputs, sent as uploads, are used."""
    from gradio_client import handle_file

    good = handle_file(photo)
    for field in ("init_image", "reference_image", "mask background", "mask layer", "mask_image",
                  "control image"):
        settings = {**INPUTS[field](handle_file(photo), good), **FAST}
        if field == "mask background":
            settings["mask_image"] = good  # something to repaint
        status = alice.predict(**settings, api_name="/img2img")[0]
        assert status.startswith("**Done**"), (field, status)


def test_helpers_that_take_a_picture_refuse_server_paths(alice, targets, root):
    answers = {name: _answer(lambda: alice.predict({"path": path}, api_name="/png_info"))
               for name, path in targets.items()}
    assert len(set(answers.values())) == 1, answers
    assert "did not arrive" in next(iter(answers.values()))
    masks = {name: _answer(lambda: alice.predict({"path": path}, api_name="/mask_background"))
             for name, path in targets.items()}
    for answer in masks.values():
        # No mask editor built on the file: no served copy of it.
        assert "background" not in answer and "gradio_api/file" not in answer
    for name, path in targets.items():
        answer = _answer(lambda: alice.predict({"path": path}, "upload", None, "none", "", 100,
                                               200, api_name="/controlnet1_preview"))
        assert answer.startswith("error"), (name, answer)
        assert path not in answer and "private" not in answer
    (root / "private" / "preset.json").write_text('{"name": "stolen", "settings": {}}')
    answer = _answer(lambda: alice.predict({"path": str(root / "private" / "preset.json")},
                                           api_name="/preset_import"))
    assert answer.startswith("error") and "stolen" not in answer


def test_results_are_per_user_and_never_served_by_path(url, studio, photo):
    from gradio_client import handle_file

    mine = client(url, USERS[0])
    status, _, gallery, _, text, saved = mine.predict(handle_file(photo), seed=7, **FAST,
                                                      api_name="/img2img")
    assert status.startswith("**Done**")
    # The page names the file, not the server's folders.
    assert re.fullmatch(r"saved as \d{5}-7\.png", saved), saved
    outputs = studio.engine.outputs_dir
    files = list(outputs.rglob("*-7.png"))
    assert len(files) == 1
    assert files[0].parent.parent.name.startswith("alice-")  # outputs/img2img/<alice>/<day>/
    # Nobody, not even the owner, fetches the outputs folder by path ...
    with httpx.Client(base_url=url) as http:
        for user, password in USERS:
            http.cookies.clear()
            assert http.post("/login", data={"username": user, "password": password}
                             ).status_code == 200
            for form in (str(files[0]), files[0].relative_to(outputs.parent).as_posix()):
                response = http.get(f"/gradio_api/file={form}")
                assert response.status_code in (403, 404), (user, form, response.status_code)
    # ... while the result itself reaches its owner under a content-hash name.
    image = gallery[0]["image"]
    assert re.search(r"[0-9a-f]{64}", image) and Path(image).is_file()


def test_another_users_results_stay_in_their_folder(url, studio, photo):
    from gradio_client import handle_file

    theirs = client(url, USERS[1])
    status = theirs.predict(handle_file(photo), seed=8, **FAST, api_name="/img2img")[0]
    assert status.startswith("**Done**")
    folders = {p.parent.parent.name for p in studio.engine.outputs_dir.rglob("*-8.png")}
    assert len(folders) == 1 and next(iter(folders)).startswith("bob-")


# -- logins ----------------------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_login_guesses_are_slowed_then_refused_and_the_password_works_after_the_wait(studio):
    clock = Clock()
    policy = Policy(slow_after=2, delay=0.05, lock_after=4, lock_seconds=60)
    throttle = Throttle(policy, clock)
    with served(studio, USERS, throttle=throttle) as address, httpx.Client(base_url=address) as http:
        def login(password):
            http.cookies.clear()
            return http.post("/login", data={"username": "alice", "password": password})

        assert login("wrong1").status_code == 400
        assert throttle.check("127.0.0.1") == (0.0, 0.0)
        assert login("wrong2").status_code == 400
        # From now on every attempt waits before it is answered.
        assert throttle.check("127.0.0.1") == (0.0, policy.delay)
        assert login("wrong3").status_code == 400
        assert login("wrong4").status_code == 400
        # Locked: refused without looking at the password, even the right one.
        refused = login("alice-pw")
        assert refused.status_code == 429 and "try again in 60 s" in refused.json()["detail"]
        assert int(refused.headers["retry-after"]) == 60
        clock.now += 30
        assert login("alice-pw").status_code == 429
        clock.now += 31
        assert login("alice-pw").status_code == 200
        # A success clears the record.
        assert throttle.check("127.0.0.1") == (0.0, 0.0)


def test_a_login_name_must_be_the_users_exact_name(studio):
    # The login form trimmed the name, so " alice" with alice's password was alice's session.
    lenient = Throttle(Policy(slow_after=100, lock_after=100))
    with served(studio, USERS, throttle=lenient) as address, \
            httpx.Client(base_url=address) as http:
        for name, encoding in itertools.product([" alice", "alice ", "\talice", "ALICE"],
                                                ("form", "multipart")):
            # (the login page itself sends multipart)
            http.cookies.clear()
            fields = {"username": name, "password": "alice-pw"}
            response = (http.post("/login", data=fields) if encoding == "form" else
                        http.post("/login", files={k: (None, v) for k, v in fields.items()}))
            assert response.status_code == 400, (name, encoding)
            assert not any(c.startswith("access-token") for c in http.cookies), (name, encoding)
        assert len(lenient._records["127.0.0.1"].failures) == 8  # each counts as a wrong guess
        http.cookies.clear()
        # The exact name still logs in, by either encoding.
        assert http.post("/login", files={"username": (None, "alice"),
                                          "password": (None, "alice-pw")}).status_code == 200


def test_throttle_counts_each_address_apart_and_forgets():
    clock = Clock()
    throttle = Throttle(Policy(slow_after=1, delay=1, lock_after=2, lock_seconds=10,
                               window=100, max_addresses=3), clock)
    throttle.failed("10.0.0.1")
    assert throttle.check("10.0.0.1") == (0.0, 1)
    assert throttle.check("10.0.0.2") == (0.0, 0.0)
    clock.now += 101  # outside the window: forgotten
    assert throttle.check("10.0.0.1") == (0.0, 0.0)
    for n in range(10):
        throttle.failed(f"10.0.1.{n}")
    assert len(throttle._records) == 3  # bounded memory


def test_forwarded_address_is_trusted_only_from_a_local_proxy():
    from webui.ui.logins import client_address

    header = [(b"x-forwarded-for", b"203.0.113.9, 198.51.100.4")]
    assert client_address({"client": ("127.0.0.1", 5), "headers": header}) == "198.51.100.4"
    assert client_address({"client": ("192.0.2.1", 5), "headers": header}) == "192.0.2.1"
    assert client_address({"client": ("127.0.0.1", 5), "headers": []}) == "127.0.0.1"


def test_every_event_that_takes_a_picture_opens_it_itself(studio):
    """Gradio's own preprocessing of an image input opens a payload's path unchecked, so every
    event with a picture input runs with preprocess=False and opens pictures through uploads.py
    (the upload button's payload, a preset file, is checked by gradio itself)."""
    import gradio as gr

    from webui.ui.app import build

    demo = build(studio)
    pictures = (gr.Image, gr.ImageEditor, gr.File, gr.Gallery, gr.ImageSlider)
    taking = [fn for fn in demo.fns.values()
              if any(isinstance(block, pictures) for block in fn.inputs)]
    assert {"img2img", "xy_plot", "png_info", "mask_background", "controlnet1_preview"} <= {
        fn.api_name for fn in taking}
    assert [fn.api_name for fn in taking if fn.preprocess] == []


def test_a_click_beyond_the_queue_gets_the_studios_busy_answer(root, tmp_path):
    """With the engine's queue full, one more Generate is answered with the studio's "busy"
    message at once (not Gradio's "Queue is full!", not a silent wait)."""
    import time

    from gradio_client import handle_file

    photo = tmp_path / "big.png"
    Image.new("RGB", (192, 192), (200, 60, 30)).save(photo)
    engine = Engine(models_dir=root / "models", outputs_dir=tmp_path / "outputs", device="cpu",
                    model="tiny-random", queue_size=1)
    long = dict(steps=150, strength=1.0, pag_scale=0.0)
    # The running job is held in its first UNet call until the busy answer came: on a slow
    # machine the first job could otherwise end before the second reached the queue (seen in
    # a CI run), and the queue would never be full.
    hold = threading.Event()
    engine.pipeline("tiny-random").unet.register_forward_pre_hook(lambda *_: hold.wait(120))
    try:
        with served(Studio(engine), USERS, queue_size=1) as address:
            first, second, third = (client(address, user) for user in (*USERS, USERS[0]))
            jobs = []
            # One after the other: the second sent only once the first runs, since two sent
            # together can both find the queue's one place taken before the engine's worker
            # picked the first up (seen in a CI run: the second was answered busy).
            for each, reached in ((first, lambda: engine.running_job() is not None),
                                  (second, lambda: engine.queue_status().waiting >= 1)):
                jobs.append(each.submit(handle_file(str(photo)), **long, api_name="/img2img"))
                deadline = time.monotonic() + 60
                while not reached():
                    assert time.monotonic() < deadline, f"job {len(jobs)} did not reach the engine"
                    for job in jobs:
                        # Held or waiting, neither can end, except with an error: say which.
                        assert not job.done(), f"a job ended early: {_answer(job.result)}"
                    time.sleep(0.05)
            answer = _answer(lambda: third.predict(handle_file(str(photo)), **long,
                                                   api_name="/img2img"))
            assert "busy" in answer and "Queue is full" not in answer, answer
            engine.cancel_all()
            hold.set()
            for job in jobs:
                _answer(job.result)
    finally:
        engine.cancel_all()
        hold.set()
        engine.unload()


def test_fifty_wrong_passwords_are_slowed_then_refused_and_never_logged(studio, caplog, capfd):
    import logging
    import time

    caplog.set_level(logging.DEBUG)
    guesses = [f"guess-{n:02d}-zq" for n in range(50)]
    answers, seconds = [], []
    # The launcher's own throttle policy (a new Throttle per launch, as run() makes).
    with served(studio, USERS) as address, httpx.Client(base_url=address, timeout=30) as http:
        for guess in guesses:
            http.cookies.clear()
            t0 = time.monotonic()
            answers.append(http.post("/login", data={"username": "alice",
                                                     "password": guess}).status_code)
            seconds.append(time.monotonic() - t0)
        http.cookies.clear()
        locked_out = http.post("/login", data={"username": "alice", "password": "alice-pw"})
    policy = Policy()
    assert answers[:policy.lock_after] == [400] * policy.lock_after
    assert answers[policy.lock_after:] == [429] * (50 - policy.lock_after)
    # Slowed after the first few, then refused at once without looking at the password.
    assert all(s < policy.delay / 2 for s in seconds[:policy.slow_after])
    assert all(s >= policy.delay * 0.9 for s in seconds[policy.slow_after:policy.lock_after])
    assert all(s < policy.delay / 2 for s in seconds[policy.lock_after:])
    assert locked_out.status_code == 429, "the right password waits for the lock to end"
    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    assert not [g for g in guesses + ["alice-pw", "bob-pw"] if g in logged]


def test_no_file_route_reads_another_users_result_or_presets(url, studio, photo, root):
    """Bob's result and a preset file of his, asked for by a logged-in alice through Gradio's
    file routes: absolute paths, '..' forms, URL-encoded forms, and links placed in the outputs
    folder (by anyone who can write there) pointing at them."""
    from urllib.parse import quote

    from gradio_client import handle_file

    bob = client(url, USERS[1])
    assert bob.predict(handle_file(photo), seed=31, **FAST,
                       api_name="/img2img")[0].startswith("**Done**")
    outputs = studio.engine.outputs_dir
    [result] = [p for p in outputs.rglob("*-31.png") if p.parent.parent.name.startswith("bob-")]
    preset = root / "user-presets" / "bob" / "secret-look.json"
    preset.parent.mkdir(parents=True, exist_ok=True)
    preset.write_text('{"name": "secret look", "settings": {"steps": 9}}')
    link = outputs / "link-to-bob.png"
    link.symlink_to(result)
    (outputs / "link-to-presets").symlink_to(preset.parent, target_is_directory=True)
    cwd = Path.cwd()
    forms = set()
    for target in (result, preset, link, outputs / "link-to-presets" / preset.name):
        relative = os.path.relpath(target, cwd)
        dotted = str(outputs / ".." / target.relative_to(outputs.parent)) \
            if outputs.parent in target.parents else str(target)
        forms |= {str(target), relative, dotted, quote(str(target), safe=""),
                  quote(quote(str(target), safe=""), safe=""), "//" + str(target).lstrip("/"),
                  str(target).replace("/", "\\"), "../" * 12 + str(target).lstrip("/")}
    with httpx.Client(base_url=url) as http:
        assert http.post("/login", data={"username": "alice", "password": "alice-pw"}
                         ).status_code == 200
        for form in sorted(forms):
            for route in ("/gradio_api/file=", "/file=", "/gradio_api/file/", "/file/"):
                response = http.get(route + form)
                assert response.status_code in (400, 403, 404, 405), (route, form,
                                                                     response.status_code)
                assert b"secret look" not in response.content
                assert response.content[:8] != b"\x89PNG\r\n\x1a\n", (route, form)
        # The control: the same routes do serve what is meant to be served (assets/).
        from webui.ui.launch import ASSETS_DIR

        served_asset = http.get("/gradio_api/file=" + str(ASSETS_DIR / "example-init.png"))
        assert served_asset.status_code == 200
        assert served_asset.content[:8] == b"\x89PNG\r\n\x1a\n"
