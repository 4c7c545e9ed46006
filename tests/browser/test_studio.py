"""The studio in a real browser: log in, transform a picture with chosen settings, interrupt,
PNG Info round trip, X/Y plot, bad inputs, and the launch refusals for unsafe sharing.

Screenshots of the main flow go to test-artifacts/.
"""

from __future__ import annotations

import io
import re
import socket
import subprocess
import time

import pytest
from PIL import Image, ImageDraw, PngImagePlugin
from playwright.sync_api import expect

from .conftest import (ROOT, free_port, log_in, shot, studio_command, studio_env)

JOB_TIMEOUT = 90_000


# -- page helpers --------------------------------------------------------------------------------
def picture(path, size=64):
    image = Image.new("RGB", (size, size), (230, 200, 120))
    draw = ImageDraw.Draw(image)
    draw.ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(200, 30, 40))
    image.save(path)
    return path


def upload(page, elem_id: str, path) -> None:
    page.set_input_files(f"#{elem_id} input[type=file]", str(path))
    expect(page.locator(f"#{elem_id} img").first).to_be_visible()


def set_number(page, elem_id: str, value) -> None:
    """A slider's or a number box's typed value (the inner input[type=number])."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def set_slider(page, elem_id: str, value, attempts: int = 5) -> None:
    """Type a slider's value and wait until the slider itself holds it. A slider inside an
    accordion that has just opened is still being set up for a moment after it shows, and
    that set-up puts its initial value back over what was typed; a person would see the old
    number and type again, so this does the same (a few tries, then the assertion fails)."""
    slider = page.locator(f"#{elem_id} input[type=range]")
    for _ in range(attempts - 1):
        set_number(page, elem_id, value)
        try:
            expect(slider).to_have_value(str(value), timeout=1_000)
            return
        except AssertionError:
            continue
    set_number(page, elem_id, value)
    expect(slider).to_have_value(str(value))


def pick(page, elem_id: str, option: str) -> None:
    box = page.locator(f"#{elem_id} input[role=combobox]")
    box.click()
    box.fill(option)
    page.get_by_role("option", name=option, exact=True).click()
    expect(box).to_have_value(option)


def text_of(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input[type=text]").first


def toast(page, text: str):
    return page.locator(".toast-body").filter(has_text=text).first


def generate_and_wait(page, done: str = "Done") -> None:
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text(done, timeout=JOB_TIMEOUT)


# -- log-in --------------------------------------------------------------------------------------
def test_wrong_password_is_refused(page, studio):
    log_in(page, studio["url"], password="not-the-password")
    expect(page.get_by_text("Incorrect Credentials")).to_be_visible()
    assert page.locator("#generate").count() == 0


# -- the main flow -------------------------------------------------------------------------------
def test_generate_with_chosen_settings(studio_page, studio, tmp_path):
    page = studio_page
    expect(page.locator("#tiny-notice")).to_contain_text("only makes noise")
    shot(page, "01-studio")
    upload(page, "init-image", picture(tmp_path / "init.png"))
    text_of(page, "prompt").fill("a red fox in the snow")
    page.click("#add-standard-negative")
    expect(text_of(page, "negative-prompt")).to_have_value(re.compile(r"^blurry, bad anatomy"))
    set_number(page, "strength", 0.55)
    expect(page.locator("#strength-band")).to_contain_text("medium")
    set_number(page, "cfg", 9.5)
    set_number(page, "steps", 4)
    expect(page.locator("#effective-steps")).to_contain_text("4 × 0.55 = 2")
    pick(page, "scheduler", "DPM++ 2M Karras")
    set_number(page, "seed", 1234)
    set_number(page, "batch-size", 2)
    shot(page, "02-settings")

    generate_and_wait(page)
    infotext = text_of(page, "result-infotext")
    expect(infotext).to_have_value(re.compile("Seed: 1234"))
    value = infotext.input_value()
    for expected in ("a red fox in the snow", "Negative prompt: blurry, bad anatomy",
                     "Steps: 4", "Sampler: DPM++ 2M", "Schedule type: Karras", "CFG scale: 9.5",
                     "Denoising strength: 0.55", "Size: 64x64"):
        assert expected in value, (expected, value)
    saved = text_of(page, "result-path").input_value()
    # The file's name only; it lies in the logged-in user's own folder.
    assert re.fullmatch(r"saved as \d{5}-1234\.png", saved), saved
    [path] = studio["outputs"].rglob(saved.removeprefix("saved as "))
    assert path.parent.parent.name.startswith("user-")
    assert str(studio["outputs"]) not in page.content()
    expect(page.locator("#compare img").first).to_be_visible()
    shot(page, "03-result")

    # What the browser downloads from the gallery still carries the settings.
    src = page.locator("#gallery img").first.get_attribute("src")
    served = Image.open(io.BytesIO(page.request.get(src).body()))
    assert "Seed: 1234" in served.info["parameters"]

    # The second image of the batch has the next seed; "Reuse seed" takes it.
    page.click("button[aria-label='Thumbnail 2 of 2']")
    expect(infotext).to_have_value(re.compile("Seed: 1235"))
    page.click("#reuse-seed")
    expect(page.locator("#seed input")).to_have_value("1235")
    page.click("#random-seed")
    expect(page.locator("#seed input")).to_have_value("-1")
    page.click("#last-seed")
    expect(page.locator("#seed input")).to_have_value("1234")


def test_interrupt_stops_only_the_own_job(studio_page, studio, browser, tmp_path):
    page = studio_page
    upload(page, "init-image", picture(tmp_path / "big.png", size=192))
    set_number(page, "strength", 1)
    set_number(page, "steps", 150)
    page.click("#generate")
    status = page.locator("#status")
    expect(status).to_contain_text(re.compile(r"Step \d+/150"), timeout=JOB_TIMEOUT)
    expect(page.locator("#preview img")).to_be_visible()
    shot(page, "04-running")

    # Another browser session's Interrupt leaves this job alone.
    other_context = browser.new_context()
    try:
        other = other_context.new_page()
        log_in(other, studio["url"])
        other.click("#interrupt")
        expect(other.locator("#status")).to_contain_text("Nothing of yours is running")
    finally:
        other_context.close()
    expect(status).to_contain_text(re.compile(r"Step \d+/150"))

    started = time.monotonic()
    page.click("#interrupt")
    expect(status).to_contain_text("Interrupted", timeout=30_000)
    assert time.monotonic() - started < 30
    expect(text_of(page, "result-path")).to_have_value(re.compile("not saved"))
    shot(page, "05-interrupted")


def test_png_info_round_trip(studio_page, tmp_path):
    page = studio_page
    upload(page, "init-image", picture(tmp_path / "init.png"))
    text_of(page, "prompt").fill("an old lighthouse")
    set_number(page, "steps", 2)
    set_number(page, "cfg", 8)
    set_number(page, "seed", 4321)
    generate_and_wait(page)
    src = page.locator("#gallery img").first.get_attribute("src")
    downloaded = tmp_path / "downloaded.png"
    downloaded.write_bytes(page.request.get(src).body())

    # Change the page, then restore everything from the PNG.
    text_of(page, "prompt").fill("something else")
    set_number(page, "cfg", 3)
    set_number(page, "seed", -1)
    page.get_by_role("tab", name="PNG Info").click()
    upload(page, "pnginfo-image", downloaded)
    expect(text_of(page, "pnginfo-text")).to_have_value(re.compile("Seed: 4321"))
    expect(page.locator("#pnginfo-summary")).to_contain_text("Euler a")
    shot(page, "06-pnginfo")
    page.click("#pnginfo-send")
    expect(text_of(page, "prompt")).to_have_value("an old lighthouse")
    expect(page.locator("#seed input")).to_have_value("4321")
    expect(page.locator("#cfg input[type=number]")).to_have_value("8")

    # A PNG written by another tool: its settings come over, the unknown model is reported.
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", "a castle\nNegative prompt: fog\nSteps: 30, Sampler: DPM++ 2M, "
                  "Schedule type: Karras, CFG scale: 6.5, Seed: 99, Size: 512x768, "
                  "Model hash: abcdef1234, Model: v1-5-pruned-emaonly, "
                  "Denoising strength: 0.45, Version: v1.10.1")
    other = tmp_path / "other.png"
    Image.new("RGB", (32, 32)).save(other, pnginfo=meta)
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo-image button[aria-label='Remove Image']").click()
    upload(page, "pnginfo-image", other)
    expect(text_of(page, "pnginfo-text")).to_have_value(re.compile("Seed: 99"))
    page.click("#pnginfo-send")
    expect(text_of(page, "prompt")).to_have_value("a castle")
    expect(text_of(page, "negative-prompt")).to_have_value("fog")
    expect(page.locator("#seed input")).to_have_value("99")
    expect(page.locator("#steps input[type=number]")).to_have_value("30")
    expect(page.locator("#strength input[type=number]")).to_have_value("0.45")
    expect(page.locator("#scheduler input[role=combobox]")).to_have_value("DPM++ 2M Karras")
    expect(page.locator("#width input")).to_have_value("512")
    expect(page.locator("#height input")).to_have_value("768")
    expect(toast(page, "v1-5-pruned-emaonly")).to_be_visible()


def test_xy_plot_renders(studio_page, tmp_path):
    page = studio_page
    upload(page, "init-image", picture(tmp_path / "init.png"))
    set_number(page, "steps", 4)
    set_number(page, "seed", 77)
    page.get_by_role("tab", name="X/Y plot").click()
    expect(text_of(page, "xy-x-values")).to_have_value("0.3, 0.5, 0.7")
    expect(text_of(page, "xy-y-values")).to_have_value("5, 7, 10")
    text_of(page, "xy-x-values").fill("0.3, 0.6")
    pick(page, "xy-y-axis", "Sampler")
    expect(text_of(page, "xy-y-values")).to_have_value(re.compile("^Euler a, "))
    text_of(page, "xy-y-values").fill("Euler a, DDIM")
    page.click("#xy-run")
    expect(page.locator("#xy-status")).to_contain_text("Done: 4 cells, seed 77",
                                                     timeout=JOB_TIMEOUT)
    expect(page.locator("#xy-grid img")).to_be_visible()
    assert text_of(page, "xy-path").input_value().endswith("-77.png")
    shot(page, "07-xy-plot")

    text_of(page, "xy-x-values").fill("0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7")
    text_of(page, "xy-y-values").fill("Euler a, DDIM, Euler, Heun, LMS, UniPC")
    page.click("#xy-run")
    expect(toast(page, "at most 36 cells")).to_be_visible()


# -- bad inputs ----------------------------------------------------------------------------------
def test_bad_inputs_show_a_message_and_the_page_keeps_working(studio_page, tmp_path):
    page = studio_page
    page.click("#generate")
    expect(toast(page, "Init image: no image given")).to_be_visible()

    # A text file as image: the upload widget refuses it outright...
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    page.set_input_files("#init-image input[type=file]", str(notes))
    expect(toast(page, "Invalid file type")).to_be_visible()
    # ...and one named like a picture is refused by the server, naming the field.
    fake = tmp_path / "fake.png"
    fake.write_text("not a picture either")
    page.set_input_files("#init-image input[type=file]", str(fake))
    page.click("#generate")
    expect(toast(page, "Init image: not an image file")).to_be_visible()
    shot(page, "08-bad-input")

    # Still usable: a real picture goes through.
    page.locator("#init-image button[aria-label='Remove Image']").click()
    upload(page, "init-image", picture(tmp_path / "good.png"))
    set_number(page, "steps", 2)
    generate_and_wait(page)
    expect(text_of(page, "result-infotext")).to_have_value(re.compile("Steps: 2"))


# -- launch safety -------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--share", "--listen"])
def test_public_without_auth_refuses_to_start(flag, tmp_path):
    out = subprocess.run(studio_command(free_port(), flag, "--outputs-dir", str(tmp_path)),
                         cwd=ROOT, env=studio_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "--auth" in out.stderr and "--insecure" in out.stderr


def test_share_without_a_tunnel_keeps_serving(tmp_path):
    port = free_port()
    log = tmp_path / "share.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            studio_command(port, "--share", "--auth", "a:b", "--models-dir", str(tmp_path),
                           "--outputs-dir", str(tmp_path / "out")),
            cwd=ROOT, env=studio_env(), stdout=handle, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while "served on" not in log.read_text() and "public URL" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(timeout=15)
