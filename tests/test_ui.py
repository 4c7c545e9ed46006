"""The studio's handlers, called directly (no browser): generation with previews, interrupt,
PNG Info, validation messages, launch options, the API snippet and the rule that the UI
never imports torch."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image, PngImagePlugin

from webui import params as P
from webui.engine.core import Engine
from webui.ui import handlers, launch
from webui.ui.handlers import GenerateView, Session, Studio

from serving import served
from tests.support.testing import png_header

ROOT = Path(__file__).resolve().parents[1]
SNIPPET = ROOT / "webui" / "ui" / "CLIENT_SNIPPET.md"
# gr.Warning outside a request falls back to a Python warning; the handlers use it on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    base = tmp_path_factory.mktemp("studio")
    return Engine(models_dir=base / "models", outputs_dir=base / "outputs", model="tiny-random")


@pytest.fixture(scope="module")
def studio(engine):
    return Studio(engine)


def run(studio, session, init, **settings) -> list[GenerateView]:
    settings.setdefault("steps", 4)
    settings.setdefault("strength", 0.5)
    return list(studio.generate(session, init, **settings))


def is_skip(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1


# -- the no-torch rule ---------------------------------------------------------------------------
def test_ui_never_imports_torch(tmp_path):
    code = (
        "import sys\n"
        "import webui.ui, webui.ui.app, webui.ui.handlers, webui.ui.launch, webui.ui.xy\n"
        "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
        # The in-process engine itself loads torch; the studio's modules never do.
        "from webui.engine import Engine\n"
        "engine = Engine(models_dir=sys.argv[1], outputs_dir=sys.argv[1], model='tiny-random')\n"
        "demo = webui.ui.app.build(webui.ui.handlers.Studio(engine))\n"
        "import os; assert os.environ['GRADIO_ANALYTICS_ENABLED'] == 'False'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_the_upload_cache_is_cleaned(studio):
    from webui.ui.app import CACHE_CLEANING, build

    demo = build(studio)
    every, older_than = CACHE_CLEANING
    assert demo.delete_cache == (every, older_than) and 0 < every <= older_than <= 86400


# -- img2img -------------------------------------------------------------------------------------
def test_generate_yields_previews_then_results(studio, init):
    session = Session()
    views = run(studio, session, init, prompt="a red fox", guidance_scale=9.5, seed=7,
                scheduler="DPM++ 2M Karras")
    first, final = views[0], views[-1]
    assert "Starting" in first.status or "queue" in first.status
    previews = [v.preview for v in views[:-1] if isinstance(v.preview, Image.Image)]
    assert previews, "no live preview before the result"
    assert any(re.search(r"Step \d+/\d+", v.status) for v in views[:-1])
    assert "**Done**" in final.status and "seed 7" in final.status
    assert "effective steps 2 (4 × 0.5)" in final.status
    gallery = final.gallery
    assert len(gallery) == 1
    image, caption = gallery[0]
    assert caption == "seed 7"
    assert image.info["parameters"] == final.infotext  # the gallery's PNG keeps it
    for text in ("a red fox", "Seed: 7", "CFG scale: 9.5", "Sampler: DPM++ 2M",
                 "Schedule type: Karras", "Denoising strength: 0.5", "Size: 64x64"):
        assert text in final.infotext
    path = session.current.path
    # The page names the file only; the server's folders stay unknown to the client.
    assert final.path == f"saved as {path.name}"
    assert path.is_file()
    assert Image.open(path).info["parameters"] == final.infotext
    before, after = final.compare
    assert before.size == after.size == (64, 64)
    assert session.seed == 7 and not session.jobs


def test_batch_seeds_selection_reuse_and_loopback(studio, init):
    session = Session()
    final = run(studio, session, init, steps=2, seed=100, batch_size=2)[-1]
    assert [caption for _, caption in final.gallery] == ["seed 100", "seed 101"]
    compare, text, path = studio.select_result(session, SimpleNamespace(index=1))
    assert "Seed: 101" in text and path.endswith("-101.png")
    assert studio.reuse_seed(session) == 101
    assert studio.last_seed(session) == 100
    assert studio.send_to_init(session) is session.results[1].image
    assert studio.random_seed() == -1


def test_random_seed_is_reported(studio, init):
    session = Session()
    final = run(studio, session, init, steps=2, seed=-1)[-1]
    assert session.seed is not None and session.seed >= 0
    assert f"Seed: {session.seed}" in final.infotext


def test_strength_zero_returns_the_original(studio, init):
    final = run(studio, Session(), init, strength=0)[-1]
    assert "returns the original" in final.status
    image, _ = final.gallery[0]
    assert list(image.getdata()) == list(init.getdata())


def test_reference_image_is_accepted_but_noted(studio, init):
    final = run(studio, Session(), init, steps=2, reference_image=init)[-1]
    assert handlers.REFERENCE_NOTE in final.status


def test_interrupt_stops_only_the_own_job(studio):
    big = Image.new("RGB", (128, 128), (10, 120, 60))
    mine, other = Session(), Session()
    updates = studio.generate(mine, big, steps=150, strength=1.0, seed=3)
    seen = []
    for view in updates:
        seen.append(view)
        if re.search(r"Step \d+/150", view.status):
            break
    assert studio.interrupt(other) == "Nothing of yours is running."
    assert studio.interrupt(mine).startswith("Interrupting")
    started = time.monotonic()
    final = list(updates)[-1]
    assert time.monotonic() - started < 30
    assert "**Interrupted**" in final.status and "not saved" in final.status
    assert "not saved" in final.path
    assert len(final.gallery) == 1  # the partly denoised picture is still shown
    assert studio.interrupt(mine) == "Nothing of yours is running."


def test_queue_full_is_a_clear_error(tmp_path, init):
    engine = Engine(models_dir=tmp_path, outputs_dir=tmp_path, model="tiny-random", queue_size=0)
    with pytest.raises(gr.Error, match="busy"):
        list(Studio(engine).generate(Session(), init, steps=2))


# -- validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("settings, message", [
    (dict(strength=1.5), r"^Denoising strength must be a number from 0 to 1 \(got 1.5\)"),
    (dict(steps=0), r"^Sampling steps must be a whole number from 1 to 150"),
    (dict(guidance_scale="lots"), r"^CFG scale must be a number"),
    (dict(seed=-5), r"^Seed must be"),
    (dict(scheduler="Warp drive"), r"^Sampler must be one of: Euler a"),
    (dict(width=12), r"^Width must be a whole number of pixels"),
    (dict(resize_mode="stretch"), r"^Resize mode must be one of"),
    (dict(batch_size=99), r"^Batch size must be"),
    (dict(model="/etc/passwd"), r"^Model: '/etc/passwd' is not one of this studio's models"),
    # A client can send any JSON value; these once reached the prompt parser as a TypeError.
    (dict(prompt=123), r"^Prompt must be text \(got int\)"),
    (dict(prompt=["a", "b"]), r"^Prompt must be text \(got list\)"),
    (dict(negative_prompt={"x": 1}), r"^Negative prompt must be text \(got dict\)"),
])
def test_bad_values_name_the_field(studio, init, settings, message):
    with pytest.raises(gr.Error) as caught:
        run(studio, Session(), init, **settings)
    assert re.search(message, caught.value.message), caught.value.message


def test_bad_images_name_the_field(studio, tmp_path):
    text_file = tmp_path / "notes.png"
    text_file.write_text("not a picture")
    cases = [
        (None, r"^Init image: no image given"),
        (text_file, r"^Init image: not an image file"),
        ("/etc/hostname", r"^Init image: send the image as a file"),
        ({"path": None}, r"^Init image: the upload did not arrive"),
        # Outside a gradio request no payload is known to be an upload (see test_security).
        ({"path": str(text_file)}, r"^Init image: the upload did not arrive"),
        (12, r"^Init image: must be an image file \(got int\)"),
    ]
    for source, message in cases:
        with pytest.raises(gr.Error) as caught:
            run(studio, Session(), source)
        assert re.search(message, caught.value.message), caught.value.message
    good = Image.new("RGB", (64, 64))
    with pytest.raises(gr.Error, match="Reference image: not an image file"):
        run(studio, Session(), good, reference_image=text_file)


def test_nothing_to_reuse_yet(studio):
    session = Session()
    with pytest.raises(gr.Error, match="generate an image first"):
        studio.send_to_init(session)
    assert is_skip(studio.reuse_seed(session))
    assert is_skip(studio.last_seed(session))


# -- small helpers -------------------------------------------------------------------------------
def test_strength_band_labels():
    assert "returns the original" in handlers.strength_band(0)
    assert handlers.strength_band(0.2).startswith("**subtle** (0.1–0.4)")
    assert handlers.strength_band(0.55).startswith("**medium** (0.4–0.7)")
    assert handlers.strength_band(0.9).startswith("**overhaul** (0.7–1)")
    assert "0 returns the original" in handlers.strength_band(0.5)
    assert handlers.effective_steps(25, 0.65).endswith("25 × 0.65 = **16**")


def test_standard_negative_is_added_once():
    once = handlers.add_standard_negative("text, watermark")
    assert once.startswith("text, watermark, blurry")
    assert once.count("watermark") == 1
    assert handlers.add_standard_negative(once) == once
    assert handlers.add_standard_negative("") == P.STANDARD_NEGATIVE


def test_models_and_tiny_notice(studio, engine):
    assert engine.model in studio.models()
    assert studio.refresh_models("nope")["value"] == engine.model
    assert studio.model_changed("tiny-random")["visible"] is True
    assert "only makes noise" in handlers.tiny_notice(engine)
    assert "Stable-diffusion" in handlers.tiny_notice(engine)


# -- PNG Info ------------------------------------------------------------------------------------
OTHER_TOOL_TEXT = (
    "a castle on a hill, golden hour\n"
    "Negative prompt: blurry, watermark\n"
    "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 99, "
    "Size: 512x768, Model hash: abcdef1234, Model: v1-5-pruned-emaonly, "
    "Denoising strength: 0.45, Hires upscale: 2, Version: v1.10.1"
)


def _png_with(tmp_path, text: str) -> Path:
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", text)
    path = tmp_path / "made-elsewhere.png"
    Image.new("RGB", (32, 32)).save(path, pnginfo=meta)
    return path


def test_png_info_reads_and_sends_other_tools_pngs(studio, tmp_path):
    path = _png_with(tmp_path, OTHER_TOOL_TEXT)
    text, summary = studio.png_info(path)
    assert text == OTHER_TOOL_TEXT
    assert "| Sampler | DPM++ 2M Karras |" in summary and "| Hires upscale | 2 |" in summary
    *updates, tab, message = studio.send_to_img2img(text)
    filled = dict(zip(handlers.FILL_FIELDS, updates))
    assert filled["prompt"] == "a castle on a hill, golden hour"
    assert filled["negative_prompt"] == "blurry, watermark"
    assert filled["steps"] == 30 and filled["guidance_scale"] == 6.5
    assert filled["seed"] == 99 and filled["strength"] == 0.45
    assert filled["scheduler"] == "DPM++ 2M Karras"
    assert (filled["width"], filled["height"]) == (512, 768)
    # Not in the text: back to their defaults, so the picture can be made again.
    for name in ("resize_mode", "batch_count", "batch_size", "pag_scale", "mask_blur"):
        assert filled[name] == P.default(name), name
    assert filled["loras"]["value"] == [] and filled["ip_adapter"] == ""
    assert all(filled[f"cn{n}_enabled"] is False for n in (1, 2, 3))
    assert "Back to their defaults" in message and "PAG scale" in message
    # Not available here: the current model stays, and the message says so.
    assert is_skip(filled["model"])
    assert "v1-5-pruned-emaonly" in message and "not available" in message
    assert tab.selected == "img2img"


def test_png_info_round_trip_of_own_output(studio, init):
    session = Session()
    final = run(studio, session, init, steps=2, seed=11, prompt="moss")[-1]
    text, _ = studio.png_info(session.current.path)
    assert text == final.infotext
    *updates, _, message = studio.send_to_img2img(text)
    filled = dict(zip(handlers.FILL_FIELDS, updates))
    assert filled["model"] == "tiny-random" and filled["seed"] == 11
    assert "Not used" not in message


def test_png_info_on_huge_and_hostile_parameters(studio, tmp_path):
    # 45 KB without colons once held the server for 20 s; now it is read at once.
    text, summary = studio.png_info(_png_with(tmp_path, "lorem ipsum " * 4000))
    assert text.startswith("lorem") and "| setting | value |" in summary
    huge = _png_with(tmp_path, "x, " * 200_000)
    text, summary = studio.png_info(huge)
    assert text == "" and "600,000 characters long" in summary and "not used" in summary


def test_png_info_on_bombs_and_truncated_files(studio, tmp_path):
    # A bomb's header once raised DecompressionBombError out of the handler.
    for width, height in ((60000, 60000), (19000, 19000)):
        bomb = tmp_path / f"bomb-{width}.png"
        bomb.write_bytes(png_header(width, height))
        text, summary = studio.png_info(bomb)
        assert text == "" and "Too large to read" in summary
    whole = _png_with(tmp_path, "a fox\nSteps: 4, Seed: 2").read_bytes()
    for cut, name in ((len(whole) // 2, "half.png"), (8, "signature.png"), (0, "empty.png")):
        truncated = tmp_path / name
        truncated.write_bytes(whole[:cut])
        text, summary = studio.png_info(truncated)
        assert text == "" and "Not an image file" in summary


def test_png_info_warnings_and_empty_inputs(studio, tmp_path):
    text = "x\nSteps: 500, Sampler: Quantum, CFG scale: 7, Seed: 1"
    _, summary = studio.png_info(_png_with(tmp_path, text))
    assert "Not usable here" in summary and "steps" in summary and "Quantum" in summary
    *updates, _, message = studio.send_to_img2img(text)
    filled = dict(zip(handlers.FILL_FIELDS, updates))
    # Unusable values: the defaults, and the message says what could not be restored.
    assert filled["steps"] == P.default("steps") and filled["seed"] == 1
    assert filled["scheduler"] == P.default("scheduler")
    assert "Quantum" in message and "steps" in message
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert "no generation parameters" in studio.png_info(plain)[1]
    junk = tmp_path / "junk.png"
    junk.write_text("hello")
    assert "Not an image file" in studio.png_info(junk)[1]
    # A bare string or a payload gradio does not hold is never opened (see test_security).
    for sent in (str(plain), {"path": str(plain)}):
        assert "did not arrive" in studio.png_info(sent)[1]
    assert studio.png_info(None) == ("", "Drop a PNG here to read the settings it was made with.")
    with pytest.raises(gr.Error, match="Drop a PNG"):
        studio.send_to_img2img("")


# -- launch options ------------------------------------------------------------------------------
def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    launch.add_launch_arguments(parser)
    return parser.parse_args(list(argv))


def test_launch_defaults():
    args = _args()
    assert (args.host, args.port, args.share, args.listen) == ("127.0.0.1", 7860, False, False)
    assert launch.check(args) == ("127.0.0.1", [])
    assert args.lora_rank == 64


@pytest.mark.parametrize("value", ["-1", "1025", "8.5", "many"])
def test_a_bad_lora_rank_is_refused_naming_the_flag(value, capsys):
    with pytest.raises(SystemExit) as stopped:
        _args("--lora-rank", value)
    assert stopped.value.code == 2
    assert "--lora-rank: must be a whole number from 0 to 1024" in capsys.readouterr().err
    assert _args("--lora-rank", "0").lora_rank == 0


@pytest.mark.parametrize("argv", [["--share"], ["--listen"], ["--host", "0.0.0.0"],
                                  ["--host", "studio.example"]])
def test_public_without_auth_refuses(argv):
    with pytest.raises(launch.LaunchError, match=r"--auth user:pass.*--insecure"):
        launch.check(_args(*argv))
    assert launch.check(_args(*argv, "--insecure"))[1] == []
    assert launch.check(_args(*argv, "--auth", "a:b"))[1] == [("a", "b")]


def test_listen_serves_everywhere():
    assert launch.check(_args("--listen", "--auth", "a:b"))[0] == "0.0.0.0"


def test_auth_parsing(tmp_path):
    assert launch.parse_auth("ann:pw1, bob:p:w", None) == [("ann", "pw1"), ("bob", "p:w")]
    for bad in ("ann", "ann:", ":pw", ","):
        with pytest.raises(launch.LaunchError, match="--auth"):
            launch.parse_auth(bad, None)
    good = tmp_path / "users"
    good.write_text("# studio users\nann:pw1\n\nbob:pw2\n")
    assert launch.parse_auth(None, str(good)) == [("ann", "pw1"), ("bob", "pw2")]
    # A file's password keeps every character after the first colon (it once lost its spaces).
    spaced = tmp_path / "spaced"
    spaced.write_text("ann: pass word \n  cé:π,;# x:y\n", encoding="utf-8")
    assert launch.parse_auth(None, str(spaced)) == [("ann", " pass word "), ("cé", "π,;# x:y")]
    bad = tmp_path / "bad"
    bad.write_text("ann:pw1\nbob\n")
    with pytest.raises(launch.LaunchError, match="line 2"):
        launch.parse_auth(None, str(bad))
    with pytest.raises(launch.LaunchError, match="no such file"):
        launch.parse_auth(None, str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.write_text("# nobody\n")
    with pytest.raises(launch.LaunchError, match="no user:pass lines"):
        launch.parse_auth(None, str(empty))


def test_logins_from_the_environment_stay_out_of_the_process_list(monkeypatch):
    monkeypatch.setenv("IMG2IMG_AUTH", "ann:pw1,bob:pw2")
    monkeypatch.setenv("IMG2IMG_API_AUTH", "bot:token")
    assert launch.parse_auth(None, None) == [("ann", "pw1"), ("bob", "pw2")]
    assert launch.parse_auth(None, None, "--api-auth") == [("bot", "token")]
    assert launch.check(_args("--listen"))[1] == [("ann", "pw1"), ("bob", "pw2")]
    # The API's variable counts only when the API is served (it may be set for every launch).
    assert launch.check_api(_args(), exposed=False).users == []
    assert launch.check_api(_args("--api"), exposed=False).users == [("bot", "token")]
    assert launch.parse_auth("cy:pw3", None) == [("cy", "pw3")]  # the flag wins
    monkeypatch.setenv("IMG2IMG_AUTH", "nocolon")
    with pytest.raises(launch.LaunchError, match=r"\$IMG2IMG_AUTH: expected user:pass"):
        launch.parse_auth(None, None)


def test_other_bad_options():
    with pytest.raises(launch.LaunchError, match="--port"):
        launch.check(_args("--port", "70000"))
    with pytest.raises(launch.LaunchError, match="--queue-size"):
        launch.check(_args("--queue-size", "0"))


@pytest.mark.parametrize("argv, expected", [
    (["--share"], "--share makes a public link"),
    (["--listen", "--auth", "nopassword"], "--auth: expected user:pass"),
    (["--auth-file", "/nonexistent/users.txt"], "--auth-file: no such file"),
    (["--model", "no-such-model"], "--model: unknown model"),
])
def test_run_exits_2_with_a_reason(argv, expected, tmp_path, capsys):
    from webui.__main__ import main

    code = main([*argv, "--models-dir", str(tmp_path), "--outputs-dir", str(tmp_path / "out")])
    assert code == 2
    assert expected in capsys.readouterr().err


def test_insecure_warns_loudly(capsys, monkeypatch):
    launch._warn_open("0.0.0.0", share=False, page=True, api=False)
    err = capsys.readouterr().err
    assert "WARNING" in err and "WITHOUT a login" in err and "--auth" in err
    assert "the studio is served" in err and "--api-auth" not in err
    launch._warn_open("0.0.0.0", share=False, page=True, api=True)
    err = capsys.readouterr().err
    assert "the studio and the REST API are served" in err and "--api-auth" in err


# -- the page and its API ------------------------------------------------------------------------
def test_every_component_has_an_elem_id_and_every_event_an_api_name(studio):
    from webui.ui.app import build

    demo = build(studio)
    missing = [type(block).__name__ for block in demo.blocks.values()
               if not isinstance(block, (gr.State, gr.BrowserState))
                   and not getattr(block, "elem_id", None)
               and type(block).__name__ not in ("Form", "Blocks")]
    assert not missing, missing
    names = {fn.api_name for fn in demo.fns.values()}
    assert None not in names
    assert {"img2img", "interrupt", "png_info", "xy_plot", "send_to_img2img"} <= names
    ids = {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    assert "presets-area" in ids


def test_client_snippet_runs_against_the_app(studio, tmp_path, monkeypatch):
    """The README's gradio_client snippet, executed as written against a launched studio."""
    text = SNIPPET.read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert code in (ROOT / "README.md").read_text()
    with served(studio) as url:
        Image.new("RGB", (64, 64), (90, 140, 200)).save(tmp_path / "photo.png")
        monkeypatch.chdir(tmp_path)
        namespace: dict = {}
        exec(code.replace("http://127.0.0.1:7860/", url), namespace)
    assert "Seed: 42" in namespace["infotext"] and "Sampler: DPM++ 2M" in namespace["infotext"]
    assert Path(namespace["gallery"][0]["image"]).is_file()
    assert re.fullmatch(r"saved as \d{5}-42\.png", namespace["saved"])
    assert namespace["status"].startswith("**Done**")


def test_out_of_memory_is_its_own_error_on_the_page(studio, init, monkeypatch):
    class OutOfMemoryError(RuntimeError):
        """Stands in for the CUDA allocator's error, which has this class name."""

    def exhausted(*args, **kwargs):
        raise OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(studio.engine, "_sample", exhausted)
    with pytest.raises(gr.Error) as caught:
        run(studio, Session(), init)
    assert caught.value.title == "Out of GPU memory"
    assert caught.value.message.startswith("Out of GPU memory: use a smaller size")
    assert "Width" not in caught.value.message
    monkeypatch.undo()
    assert run(studio, Session(), init)[-1].status.startswith("**Done**")


def test_interrupt_while_the_generate_thread_adds_and_drops_jobs():
    """Session.cancel (an Interrupt click) reads the job set while the generate thread changes
    it; it must neither fail nor miss a job."""
    import threading

    class FakeJob:
        done = False

        def cancel(self):
            pass

    session = Session()
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            jobs = [FakeJob() for _ in range(50)]
            for job in jobs:
                session.track(job)
            for job in jobs:
                session.forget(job)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(2000):
            session.cancel()  # raised "Set changed size during iteration" before
    finally:
        stop.set()
        thread.join()
    assert session.interrupted
