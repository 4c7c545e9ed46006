"""The adapter controls in a real browser: inpainting with a painted and with an uploaded mask, a
LoRA picked from the models folder, latent output offered for download, and the ControlNet edge
and depth previews. The studio is launched with a tiny LoRA, ControlNet and depth detector already
in its models folder.

Screenshots go to test-artifacts/adapters-*.png.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import expect

from .conftest import log_in, running_studio, shot
from .test_studio import JOB_TIMEOUT, picture, set_number, text_of, toast, upload


@pytest.fixture(scope="module")
def adapter_studio(tmp_path_factory):
    """The studio with models/Lora/film.safetensors and models/ControlNet/tiny-canny in place
    before it starts."""
    from webui.tiny import build_pipeline
    from tests.support.tiny_adapters import make_controlnet, make_depth_detector, make_lora

    base = tmp_path_factory.mktemp("adapter-browser")
    pipe = build_pipeline("tiny-random")
    make_lora(pipe, base / "models" / "Lora" / "film.safetensors", seed=1)
    make_controlnet(pipe, base / "models" / "ControlNet" / "tiny-canny", seed=2)
    make_depth_detector(base / "models" / "ControlNet-preprocessors" / "tiny-depth", seed=3)
    del pipe
    with running_studio(base) as url:
        yield {"url": url, "outputs": base / "outputs", "log": base / "studio.log"}


@pytest.fixture
def page(browser, adapter_studio):
    """A logged-in page of the adapter studio; any request leaving this machine fails the test."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    tab = context.new_page()
    outside: list[str] = []
    tab.on("request", lambda request: outside.append(request.url) if not request.url.startswith(
        ("http://127.0.0.1", "data:", "blob:", "about:")) else None)
    log_in(tab, adapter_studio["url"])
    tab.wait_for_selector("#generate", timeout=60_000)
    yield tab
    context.close()
    assert not outside, f"the page fetched from outside: {outside}"


def generate_and_wait(page) -> str:
    """Run a job and return its infotext (each job has its own random seed, so the infotext
    changing tells this job's result from the last one's)."""
    infotext = text_of(page, "result-infotext")
    before = infotext.input_value()
    page.click("#generate")
    expect(infotext).not_to_have_value(before, timeout=JOB_TIMEOUT)
    expect(page.locator("#status")).to_contain_text("Done")
    return infotext.input_value()


def result_pixels(page) -> np.ndarray:
    src = page.locator("#gallery img").first.get_attribute("src")
    return np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"),
                      dtype=np.int16)


def canvas_pixels(page) -> np.ndarray:
    canvas = page.locator("#mask-editor canvas").last
    return np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB"), dtype=np.int16)


def brightened(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Where a white stroke went over the picture: clearly lighter in every channel."""
    return (after - before).min(axis=2) > 30


def paint(page, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """A white brush stroke on the mask editor, in fractions of its canvas; repeated until the
    canvas shows it (the editor ignores strokes until its background is in place). Returns the
    canvas as it was before the stroke."""
    page.locator("#mask-editor button[aria-label='Brush']").click()
    before = canvas_pixels(page)
    for _ in range(5):
        _stroke(page, x0, y0, x1, y1)
        if brightened(before, canvas_pixels(page)).sum() > 100:
            return before
        page.wait_for_timeout(500)
    pytest.fail("the mask editor did not take the brush stroke")


def _stroke(page, x0: float, y0: float, x1: float, y1: float) -> None:
    box = page.locator("#mask-editor canvas").last.bounding_box()
    at = lambda fx, fy: (box["x"] + fx * box["width"], box["y"] + fy * box["height"])  # noqa: E731
    page.mouse.move(*at(x0, y0))
    # The editor samples the pointer on animation frames: a stroke needs time between moves.
    page.wait_for_timeout(100)
    page.mouse.down()
    for k in range(1, 31):
        page.mouse.move(*at(x0 + (x1 - x0) * k / 30, y0 + (y1 - y0) * k / 30))
        page.wait_for_timeout(15)
    page.mouse.up()
    page.wait_for_timeout(300)


def open_accordion(page, name: str) -> None:
    page.locator(f"#{name}-accordion .label-wrap").first.click()


def test_inpaint_with_a_painted_mask(page, tmp_path):
    init_path = picture(tmp_path / "init.png")
    upload(page, "init-image", init_path)
    page.get_by_role("tab", name="Inpaint").click()
    # The init image is the editor's background.
    expect(page.locator("#mask-editor canvas").last).to_be_visible()
    # A stroke down the left part of the picture (the canvas shows it centred, square).
    before = paint(page, 0.40, 0.1, 0.42, 0.9)
    after = canvas_pixels(page)
    stroke = brightened(before, after)
    # The brush is half opaque: the picture shows through the stroke (not flat white).
    assert (after[stroke].min(axis=1) < 250).mean() > 0.5
    shot(page, "adapters-01-mask-painted")
    # "Clear mask" drops the strokes and keeps the picture; then the stroke again.
    page.click("#clear-mask")
    for _ in range(20):
        if brightened(before, canvas_pixels(page)).sum() < 20:
            break
        page.wait_for_timeout(250)
    cleared = canvas_pixels(page)
    assert brightened(before, cleared).sum() < 20, "Clear mask left the stroke"
    assert np.abs(cleared - before).mean() < 8, "Clear mask did not keep the init image"
    assert page.locator("#mask-editor button[aria-label='Clear canvas']").is_hidden()
    paint(page, 0.40, 0.1, 0.42, 0.9)
    set_number(page, "steps", 4)
    set_number(page, "strength", 0.9)
    set_number(page, "mask-blur", 0)
    page.locator("#inpaint-area").get_by_text("only masked", exact=True).click()
    infotext = generate_and_wait(page)
    for expected in ("Inpaint area: Only masked", "Mask blur: 0", "Masked content: original"):
        assert expected in infotext, (expected, infotext)
    expect(page.locator("#status")).to_contain_text("Inpainted")
    out = result_pixels(page)
    before = np.asarray(Image.open(init_path).convert("RGB"), dtype=np.int16)
    changed = np.abs(out - before).max(axis=2) > 2
    # Repainted where the brush went, pixel-exact on the far right it never touched.
    assert changed.any() and not changed[:, 56:].any()
    shot(page, "adapters-02-inpainted")


def test_inpaint_with_an_uploaded_mask(page, tmp_path):
    upload(page, "init-image", picture(tmp_path / "init.png"))
    page.get_by_role("tab", name="Inpaint").click()
    set_number(page, "steps", 4)
    # Nothing painted, nothing uploaded: a clear message, not a job.
    page.click("#generate")
    expect(toast(page, "Mask: nothing is painted")).to_be_visible()
    # A mask of another size than the picture: the engine fits it.
    mask = Image.new("L", (128, 128), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 63, 127), fill=255)
    mask.save(tmp_path / "mask.png")
    upload(page, "mask-upload", tmp_path / "mask.png")
    infotext = generate_and_wait(page)
    assert "Inpaint area: Whole picture" in infotext and "Mask blur: 4" in infotext
    # Back on the img2img sub-tab the same settings run plain img2img.
    page.get_by_role("tab", name="img2img").nth(1).click()
    assert "Inpaint area" not in generate_and_wait(page)


def test_lora_latent_output_and_edge_preview(page, adapter_studio, tmp_path):
    upload(page, "init-image", picture(tmp_path / "init.png"))
    set_number(page, "steps", 2)
    open_accordion(page, "adapters")
    box = page.locator("#loras input")
    box.click()
    box.fill("film")
    page.get_by_role("option", name="film", exact=True).click()
    weights = page.locator("#lora-weights")
    expect(weights).to_be_visible()
    expect(weights).to_contain_text("film")
    set_number(page, "pag-scale", 0)
    shot(page, "adapters-03-lora-picked")
    infotext = generate_and_wait(page)
    assert re.search(r'LoRAs: "?film:1"?', infotext), infotext
    assert "PAG scale: 0" in infotext

    # Latent output: the preview in the gallery, the .safetensors file offered for download.
    open_accordion(page, "advanced")
    page.locator("#output-type").get_by_text("Latent", exact=True).click()
    generate_and_wait(page)
    assert text_of(page, "result-path").input_value().endswith(".safetensors")
    link = page.locator("#latent-file a[download]").first
    expect(link).to_have_attribute("download", re.compile(r"\.safetensors$"))
    # What the browser downloads is the latent file itself: a safetensors header naming them.
    body = page.request.get(link.get_attribute("href")).body()
    header = json.loads(body[8:8 + int.from_bytes(body[:8], "little")])
    assert "latents" in header and header["__metadata__"]["format"].startswith("webui-latents")
    expect(page.locator("#gallery img").first).to_be_visible()
    shot(page, "adapters-04-latent-output")

    # The ControlNet edge preview traces the init image.
    open_accordion(page, "controlnet")
    page.click("#cn1-preview")
    control_map = page.locator("#cn1-control-map img")
    expect(control_map).to_be_visible()
    edges_src = control_map.get_attribute("src")
    shot(page, "adapters-05-controlnet-edges")
    # A depth map from the detector model in the models folder, picked from its list.
    page.locator("#cn1-preprocessor").get_by_text("depth", exact=True).click()
    page.locator("#cn1-detector input[role=combobox]").click()
    page.get_by_role("option", name="tiny-depth (depth)").click()
    page.click("#cn1-preview")
    expect(control_map).not_to_have_attribute("src", edges_src)
    depth = Image.open(io.BytesIO(page.request.get(control_map.get_attribute("src")).body()))
    grey = np.asarray(depth.convert("RGB"), dtype=np.int16)
    assert np.abs(grey[..., 0] - grey[..., 2]).max() <= 1 and grey.max() > grey.min()
    shot(page, "adapters-06-controlnet-depth")
