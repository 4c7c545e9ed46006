"""The bad-input corpus: pictures and settings a hostile (or unlucky) client sends, through every
door — the studio's handlers, gradio_client against the served page, the command line and the
REST API. Each is refused with a message naming the field (never a traceback or a Python error's
text) or, where the picture is merely unusual, accepted and made usable; the server keeps
serving; no half-written file is left behind.

The corpus is generated here (no binary files in the repository). Accepted pictures run at
strength 0, which returns the resized original without loading a model, so the whole corpus
costs seconds.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from pathlib import Path

import pytest
from PIL import Image

from tests.serving import served
from tests.support.testing import png_header
from webui import presets
from webui.__main__ import main
from webui.api import ApiService, create_app
from webui.engine import Engine, Limits
from webui.ui.handlers import Session, Studio

USERS = (("ann", "ann-pw"),)
# What a message for the artist must never hold.
PYTHON_TEXT = re.compile(r"Traceback|TypeError|AttributeError|KeyError|object has no|NoneType")


def _png(image: Image.Image, **options) -> bytes:
    data = io.BytesIO()
    image.save(data, "PNG", **options)
    return data.getvalue()


def _jpeg(image: Image.Image, **options) -> bytes:
    data = io.BytesIO()
    image.save(data, "JPEG", **options)
    return data.getvalue()


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (96, 64), c) for c in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    data = io.BytesIO()
    frames[0].save(data, fmt, save_all=True, append_images=frames[1:], duration=80, loop=0)
    return data.getvalue()


def _sixteen_bit_rgb() -> bytes:
    import cv2
    import numpy as np

    ramp = np.linspace(0, 65535, 96, dtype=np.uint16)
    pixels = np.stack([np.tile(ramp, (64, 1))] * 3, axis=-1)
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    return data.tobytes()


def _exif_rotated() -> bytes:
    image = Image.new("RGB", (96, 64), (30, 160, 90))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view": the picture is 64 wide, 96 tall
    return _jpeg(image, exif=exif.tobytes())


def _palette_with_transparency() -> bytes:
    image = Image.new("P", (96, 64), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (0, 0, 48, 64))
    return _png(image, transparency=0)


GOOD = Image.new("RGB", (96, 64), (120, 60, 30))
# name -> (file bytes, a pattern of the refusal); the field is always the init image.
REFUSED = {
    "empty.png": (b"", r"empty"),
    "truncated.png": (_png(Image.effect_noise((96, 64), 60).convert("RGB"))[:900],
                      r"damaged or truncated"),
    "truncated.jpg": (_jpeg(Image.effect_noise((96, 64), 60).convert("RGB"))[:700],
                      r"damaged or truncated"),
    "notes.png": (b"a text file renamed .png\n", r"not an image file"),
    "drawing.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
                    b'<rect width="64" height="64"/></svg>', r"not an image file"),
    "bomb-60000.png": (png_header(60000, 60000), r"too large to open"),
    "bomb-19000.png": (png_header(19000, 19000), r"too large to open"),
}
# name -> (file bytes, the output size at strength 0, a notice the job must give or "").
ACCEPTED = {
    "one-pixel.png": (_png(Image.new("RGB", (1, 1), (255, 0, 0))), (64, 64), ""),
    "huge-4000.png": (_png(Image.new("RGB", (4000, 4000), (10, 90, 200))), None, ""),
    "grey-16.png": (_png(Image.linear_gradient("L").resize((96, 64)).convert("I;16")),
                    (96, 64), ""),
    "rgb-16.png": (_sixteen_bit_rgb(), (96, 64), ""),
    "cmyk.jpg": (_jpeg(Image.new("CMYK", (96, 64), (0, 128, 255, 0))), (96, 64), ""),
    "palette-transparent.png": (_palette_with_transparency(), (96, 64), ""),
    "animated.gif": (_animated("GIF"), (96, 64), "only its first frame is used"),
    "animated.webp": (_animated("WEBP"), (96, 64), "only its first frame is used"),
    "exif-rotated.jpg": (_exif_rotated(), (64, 96), ""),
}


def _clean(message: str) -> bool:
    return bool(message) and not PYTHON_TEXT.search(message)


def _no_half_files(folder: Path) -> None:
    if folder.exists():
        leftovers = [p for p in folder.rglob("*") if p.is_file()
                     and (p.name.startswith(".") or p.suffix in (".tmp", ".part"))]
        assert not leftovers, leftovers


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for name, (data, *_) in {**REFUSED, **ACCEPTED}.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-inputs")
    engine = Engine(models_dir=root / "models", outputs_dir=root / "outputs", device="cpu",
                    model="tiny-random", limits=Limits())
    yield engine
    engine.cancel_all()


def _huge_size(limit: int) -> tuple[int, int]:
    side = int(math.isqrt(limit)) // 8 * 8
    return side, side


# -- the REST API --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api(engine, tmp_path_factory):
    from fastapi.testclient import TestClient

    store = presets.PresetStore(tmp_path_factory.mktemp("api-presets"))
    return TestClient(create_app(ApiService(engine, store)))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _refusal(response) -> tuple[str, str]:
    assert response.status_code in (400, 413, 422), (response.status_code, response.text[:300])
    body = response.json()
    assert _clean(body["detail"]), body["detail"]
    return body.get("field", ""), body["detail"]


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_rest_refuses_a_bad_picture_naming_the_field(api, name):
    data, pattern = REFUSED[name]
    field, detail = _refusal(api.post("/sdapi/v1/img2img", json={
        "init_images": [_b64(data)], "denoising_strength": 0}))
    assert field.startswith("init_images") and re.search(pattern, detail), (field, detail)


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_rest_makes_an_unusual_picture_usable(api, name):
    data = ACCEPTED[name][0]
    response = api.post("/sdapi/v1/img2img", json={"init_images": [_b64(data)],
                                                   "denoising_strength": 0})
    assert response.status_code == 200, response.text[:300]
    with Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))) as out:
        # The API's clients send a size (A1111's default is 512x512); the picture is fitted.
        assert out.size == (512, 512)
    response = api.post("/sdapi/v1/img2img", json={"init_images": [_b64(data)], "width": 96,
                                                   "height": 128, "denoising_strength": 0})
    with Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))) as out:
        assert out.size == (96, 128)


SETTINGS = [  # (field, value): refused by every door, naming the field
    ("steps", float("nan")), ("steps", float("inf")), ("steps", -5), ("steps", 2.5),
    ("steps", 10 ** 6), ("denoising_strength", 1.5), ("denoising_strength", -0.1),
    ("denoising_strength", float("nan")), ("cfg_scale", float("inf")),
    ("cfg_scale", float("-inf")), ("seed", 2 ** 40), ("batch_size", 1000), ("n_iter", 1000),
    ("width", 100000), ("prompt", "x" * 25000), ("prompt", "lone \ud800 surrogate"),
    ("prompt", "nul \x00 inside"), ("negative_prompt", "escape \x1b[31m"),
    ("sampler_name", "Warp drive"),
]
WRONG_TYPES = [[1, 2], {"a": 1}, "lots", True]
TYPED_FIELDS = ["prompt", "negative_prompt", "steps", "cfg_scale", "seed", "denoising_strength",
                "width", "height", "batch_size", "n_iter", "sampler_name", "resize_mode",
                "mask_blur", "styles", "override_settings", "alwayson_scripts"]


@pytest.mark.parametrize("field, value", SETTINGS + [(f, v) for f in TYPED_FIELDS
                                                     for v in WRONG_TYPES
                                                     if not (f in ("prompt", "negative_prompt",
                                                                   "sampler_name") and
                                                             isinstance(v, str))
                                                     # other settings are ignored, as A1111 does
                                                     and not (f == "override_settings" and
                                                              isinstance(v, dict))])
def test_rest_refuses_a_bad_setting_naming_it(api, field, value):
    if field == "styles" and isinstance(value, list):
        value = ["no such style"]
    body = {"init_images": [_b64(_png(GOOD))], "denoising_strength": 0, field: value}
    response = api.post("/sdapi/v1/img2img", content=json.dumps(body),
                        headers={"content-type": "application/json"})
    named, detail = _refusal(response)
    assert named.split(".")[0].split("[")[0] == field, (named, detail)
    assert "Value error" not in detail, detail


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "C:\\\\Windows\\\\x",
                                  "no-such-model", "owner/not-here"])
def test_rest_refuses_unknown_and_path_like_model_names(api, name):
    body = {"init_images": [_b64(_png(GOOD))], "denoising_strength": 0,
            "override_settings": {"sd_model_checkpoint": name}}
    field, detail = _refusal(api.post("/sdapi/v1/img2img", json=body))
    assert field.endswith("sd_model_checkpoint") and "/etc" not in detail.replace(name, "")
    units = [{"enabled": True, "model": name, "module": "canny", "image": _b64(_png(GOOD))}]
    field, _ = _refusal(api.post("/sdapi/v1/img2img", json={
        "init_images": [_b64(_png(GOOD))], "denoising_strength": 0.5,
        "alwayson_scripts": {"controlnet": {"args": units}}}))
    assert "controlnet" in field.lower() or "alwayson" in field


def test_rest_fits_a_mask_of_another_size_and_keeps_serving(api, engine):
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    response = api.post("/sdapi/v1/img2img", json={
        "init_images": [_b64(_png(GOOD))], "mask": _b64(_png(mask)), "steps": 2,
        "denoising_strength": 0.5, "width": GOOD.width, "height": GOOD.height})
    assert response.status_code == 200, response.text[:300]
    with Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))) as out:
        assert out.size == GOOD.size
    assert api.get("/internal/ping").status_code == 200
    _no_half_files(engine.outputs_dir)


# -- the command line ------------------------------------------------------------------------------
def _cli(tmp_path, capsys, *flags):
    code = main(["generate", "--models-dir", str(tmp_path / "models"), "--outputs-dir",
                 str(tmp_path / "outputs"), "--device", "cpu", *flags])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_cli_refuses_a_bad_picture_naming_the_flag(corpus, tmp_path, capsys, name):
    code, out, err = _cli(tmp_path, capsys, "--init", str(corpus / name), "--strength", "0")
    assert code == 2 and not out
    assert re.search(r"--init.*" + REFUSED[name][1], err), err
    assert _clean(err)
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.png"))


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_cli_makes_an_unusual_picture_usable(corpus, tmp_path, capsys, name):
    code, out, err = _cli(tmp_path, capsys, "--init", str(corpus / name), "--strength", "0")
    assert code == 0, err
    _, size, notice = ACCEPTED[name]
    path = Path(out.splitlines()[0].strip())
    with Image.open(path) as saved:
        # The command line is the machine's own user: no share limit on the size.
        assert saved.size == (size or (4000, 4000))
    assert notice in err
    _no_half_files(tmp_path / "outputs")


@pytest.mark.parametrize("flag, value", [
    ("--steps", "nan"), ("--steps", "2.5"), ("--steps", "0"), ("--steps", "100000"),
    ("--strength", "1.5"), ("--strength", "-0.1"), ("--strength", "nan"), ("--cfg", "inf"),
    ("--seed", str(2 ** 40)), ("--batch-size", "1000"), ("--batch-count", "1000"),
    ("--width", "100000"), ("--prompt", "x" * 25000), ("--scheduler", "Warp drive"),
    ("--prompt", "bell \x07 inside"), ("--negative-prompt", "nul \x00"),
    ("--model", "../../etc/passwd.safetensors"), ("--lora", "no-such-lora"),
])
def test_cli_refuses_a_bad_setting_naming_the_flag(corpus, tmp_path, capsys, flag, value):
    code, out, err = _cli(tmp_path, capsys, "--init", str(corpus / "one-pixel.png"),
                          "--strength", "0.5", flag, value)
    assert code == 2, (code, err)
    assert flag in err or flag.lstrip("-").replace("-", "_") in err or \
        flag.lstrip("-").replace("-", " ") in err.lower(), err
    assert _clean(err), err


# -- the studio: its handlers, and gradio_client against the served page -----------------------
@pytest.fixture(scope="module")
def studio(engine):
    return Studio(engine)


def _run(studio, init, **settings):
    settings.setdefault("steps", 4)
    settings.setdefault("strength", 0.5)
    return list(studio.generate(Session(), init, **settings))


@pytest.mark.parametrize("settings, field", [
    (dict(steps=float("nan")), "Sampling steps"), (dict(steps=float("inf")), "Sampling steps"),
    (dict(steps=2.5), "Sampling steps"), (dict(steps=10 ** 6), "Sampling steps"),
    (dict(strength=1.5), "Denoising strength"), (dict(strength=-0.1), "Denoising strength"),
    (dict(guidance_scale=float("-inf")), "CFG scale"), (dict(seed=2 ** 40), "Seed"),
    (dict(batch_size=1000), "Batch size"), (dict(batch_count=1000), "Batch count"),
    (dict(width=100000), "Width"), (dict(prompt="x" * 25000), "Prompt"),
    (dict(prompt="lone \ud800"), "Prompt"), (dict(scheduler="Warp drive"), "Sampler"),
    (dict(prompt="nul \x00"), "Prompt"), (dict(negative_prompt="\x1b[2J"), "Negative prompt"),
    (dict(scheduler=["Euler a"]), "Sampler"), (dict(steps={"n": 4}), "Sampling steps"),
    (dict(strength=True), "Denoising strength"), (dict(seed="lots"), "Seed"),
    (dict(model="../../etc/passwd"), "Model"), (dict(model=["tiny-random"]), "Model"),
    (dict(loras=["../../etc/passwd"]), "LoRA"), (dict(ip_adapter="/etc"), "IP-Adapter"),
])
def test_the_handlers_refuse_a_bad_setting_naming_it(studio, settings, field):
    import gradio as gr

    with pytest.raises(gr.Error) as caught:
        _run(studio, GOOD, **settings)
    message = caught.value.message
    assert message.startswith(field) or field.lower() in message.lower()[:60], message
    assert _clean(message), message


@pytest.fixture(scope="module")
def page(studio):
    from gradio_client import Client

    with served(studio, USERS, queue_size=8) as url:
        yield Client(url, auth=USERS[0], verbose=False)


def _predict(page, path, **settings):
    from gradio_client import handle_file

    settings.setdefault("steps", 2)
    settings.setdefault("strength", 0.0)
    return page.predict(handle_file(str(path)), **settings, api_name="/img2img")


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_the_page_refuses_a_bad_picture_naming_the_field(page, corpus, name):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as caught:
        _predict(page, corpus / name)
    message = str(caught.value)
    assert message.startswith("Init image") and re.search(REFUSED[name][1], message), message
    assert _clean(message)


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_the_page_makes_an_unusual_picture_usable(page, corpus, engine, name):
    status, *_ = _predict(page, corpus / name)
    _, size, notice = ACCEPTED[name]
    assert status.startswith("**Done**"), status
    want = size or _huge_size(engine.limits.max_pixels)
    assert f"{want[0]}×{want[1]}" in status and notice in status


@pytest.mark.parametrize("settings, field", [
    (dict(steps=10 ** 6), "Sampling steps"), (dict(strength=1.5), "Denoising strength"),
    (dict(prompt=123), "Prompt"), (dict(prompt=["a", "b"]), "Prompt"),
    (dict(negative_prompt={"x": 1}), "Negative prompt"), (dict(seed=2 ** 40), "Seed"),
    (dict(prompt="nul \x00 inside"), "Prompt"), (dict(steps=True), "Sampling steps"),
    (dict(width=100000), "Width"), (dict(scheduler="Warp drive"), "Sampler"),
    (dict(model="/etc/passwd"), "Model"), (dict(batch_size=1000), "Batch size"),
])
def test_the_page_refuses_a_bad_setting_and_keeps_serving(page, corpus, settings, field):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as caught:
        _predict(page, corpus / "one-pixel.png", **{"strength": 0.5, **settings})
    assert str(caught.value).startswith(field) and _clean(str(caught.value)), str(caught.value)
    status, *_ = _predict(page, corpus / "one-pixel.png")
    assert status.startswith("**Done**")
