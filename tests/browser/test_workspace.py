"""The studio as a workspace, in a real browser at a laptop's, a desktop's and a phone's size:
after a generation the init image, the prompt, Generate and the result are all in view without
scrolling; a single result is shown whole; on a phone Generate is on the first screen with the
init image; Ctrl+Enter generates, a second Generate while running is refused with a message, Esc
interrupts; the settings survive a reload; the History view restores a result's settings.

Screenshots of each layout go to test-artifacts/.
"""

from __future__ import annotations

import contextlib
import re

import pytest
from playwright.sync_api import expect

from .conftest import log_in, shot
from .test_studio import (JOB_TIMEOUT, picture, set_number, set_slider, text_of, toast,
                          upload)

# What must be in view together after a generation (the workspace rule).
IN_VIEW = ("#init-image", "#prompt", "#generate", "#gallery")


@contextlib.contextmanager
def sized_page(browser, studio, width: int, height: int):
    """A logged-in page in a fresh browser session with the given viewport."""
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(30_000)
    page = context.new_page()
    try:
        log_in(page, studio["url"])
        page.wait_for_selector("#generate", timeout=60_000)
        yield page
    finally:
        context.close()


def box(page, selector: str) -> dict:
    found = page.locator(selector).first.bounding_box()
    assert found is not None, f"{selector} is not laid out"
    return found


def assert_in_view(page, selector: str, width: int, height: int) -> None:
    b = box(page, selector)
    assert b["x"] >= 0 and b["y"] >= 0, (selector, b)
    assert b["x"] + b["width"] <= width + 0.5 and b["y"] + b["height"] <= height + 0.5, \
        (selector, b, (width, height))


def scroll_y(page) -> float:
    return page.evaluate("() => window.scrollY")


@pytest.mark.parametrize("width, height", [(1280, 720), (1440, 900)])
def test_everything_in_view_after_a_generation(browser, studio, tmp_path, width, height):
    with sized_page(browser, studio, width, height) as page:
        upload(page, "init-image", picture(tmp_path / "init.png", size=160))
        text_of(page, "prompt").fill("a red fox in the snow")
        set_number(page, "steps", 3)
        page.evaluate("() => window.scrollTo(0, 0)")
        page.click("#generate")
        expect(page.locator("#status")).to_contain_text("Done", timeout=JOB_TIMEOUT)
        # No automatic scroll, no scrolling needed: all of it is on the screen at once.
        assert scroll_y(page) == 0
        for selector in IN_VIEW:
            assert_in_view(page, selector, width, height)
        # The result sits beside the init image, not below it.
        assert box(page, "#gallery")["x"] >= box(page, "#init-image")["x"] + \
            box(page, "#init-image")["width"] - 1
        # One result, shown whole: contained in the output area, not cropped to it.
        shown = page.locator("#gallery img").first
        expect(shown).to_be_visible()
        assert shown.evaluate("img => getComputedStyle(img).objectFit") == "contain"
        picture_box, area = shown.bounding_box(), box(page, "#gallery")
        assert picture_box["y"] >= area["y"] - 0.5
        assert picture_box["y"] + picture_box["height"] <= area["y"] + area["height"] + 0.5
        # The live preview is gone once the result is there.
        assert page.locator("#preview img").count() == 0
        # Toasts come at the bottom, clear of the model picker at the top.
        top = page.evaluate("() => parseFloat(getComputedStyle("
                            "document.querySelector('.toast-wrap')).top)")
        assert top > height / 2 > box(page, "#model")["y"]
        shot(page, f"layout-{width}x{height}")


def test_phone_reaches_generate_on_the_first_screen(browser, studio, tmp_path):
    width, height = 390, 844
    with sized_page(browser, studio, width, height) as page:
        upload(page, "init-image", picture(tmp_path / "init.png"))
        page.evaluate("() => window.scrollTo(0, 0)")
        # Generate and the init image both start on the first screen; the columns stack.
        assert_in_view(page, "#generate", width, height)
        assert box(page, "#init-image")["y"] < height
        assert box(page, "#init-image")["width"] <= width
        # The result comes right after the init image, before the settings.
        set_number(page, "steps", 2)
        page.click("#generate")
        expect(page.locator("#status")).to_contain_text("Done", timeout=JOB_TIMEOUT)
        assert box(page, "#gallery")["y"] > box(page, "#init-image")["y"]
        assert box(page, "#gallery")["y"] < box(page, "#strength")["y"]
        page.evaluate("() => window.scrollTo(0, 0)")
        shot(page, "layout-phone-390x844")


def test_keys_running_state_and_a_second_click(studio_page, tmp_path):
    page = studio_page
    upload(page, "init-image", picture(tmp_path / "big.png", size=192))
    set_number(page, "strength", 1)
    set_number(page, "steps", 150)
    prompt = page.locator("#prompt textarea")
    prompt.fill("a lighthouse at dusk")
    prompt.press("Control+Enter")
    status = page.locator("#status")
    expect(status).to_contain_text(re.compile(r"Step \d+/150"), timeout=JOB_TIMEOUT)
    generate = page.locator("#generate")
    expect(generate).to_contain_text("Generating")
    # A second click while the job runs: a message, not silence; the job goes on.
    generate.click()
    expect(toast(page, "still running")).to_be_visible()
    expect(status).to_contain_text(re.compile(r"Step \d+/150"))
    shot(page, "workspace-running")
    page.keyboard.press("Escape")
    expect(status).to_contain_text("Interrupted", timeout=30_000)
    expect(generate).to_have_text("Generate")


def test_settings_survive_a_reload_and_history_restores(studio_page, tmp_path):
    page = studio_page
    upload(page, "init-image", picture(tmp_path / "init.png"))
    text_of(page, "prompt").fill("a misty harbour")
    set_number(page, "strength", 0.42)
    set_number(page, "steps", 3)
    set_number(page, "seed", 777)
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("Done", timeout=JOB_TIMEOUT)

    # History: the result with its settings; Restore fills the page again.
    page.click("#tab-history-button")
    item = page.locator("#history-gallery img").first
    expect(item).to_be_visible()
    item.click()
    expect(text_of(page, "history-infotext")).to_have_value(re.compile("Seed: 777"))
    shot(page, "workspace-history")
    page.click("#tab-img2img-button")
    text_of(page, "prompt").fill("something else")
    set_number(page, "seed", 5)
    page.click("#tab-history-button")
    page.click("#history-restore")
    expect(text_of(page, "prompt")).to_have_value("a misty harbour")
    expect(page.locator("#seed input")).to_have_value("777")

    # A reload in the same browser brings the settings back.
    text_of(page, "prompt").fill("a misty harbour at dawn")
    text_of(page, "prompt").blur()
    page.wait_for_timeout(500)
    page.reload()
    page.wait_for_selector("#generate", timeout=60_000)
    expect(text_of(page, "prompt")).to_have_value("a misty harbour at dawn")
    expect(page.locator("#strength input[type=number]")).to_have_value("0.42")
    expect(page.locator("#steps input[type=number]")).to_have_value("3")


def test_loopback_runs_every_pass(studio_page, tmp_path):
    page = studio_page
    upload(page, "init-image", picture(tmp_path / "init.png", size=96))
    set_number(page, "steps", 2)
    page.locator("#loopback-accordion .label-wrap").first.click()
    # The accordion's sliders mount as it opens: type only once they are there, and until the
    # slider itself holds the value (its set-up can put the initial value back over the first).
    expect(page.locator("#loopback-passes input[type=range]")).to_be_visible()
    set_slider(page, "loopback-passes", 3)
    set_slider(page, "loopback-strength-factor", 0.9)
    expect(page.locator("#loopback-passes input[type=range]")).to_have_value("3")
    expect(page.locator("#loopback-color-correction input")).to_be_checked()
    page.click("#loopback-run")
    status = page.locator("#status")
    expect(status).to_contain_text("Done: 3 loopback passes", timeout=JOB_TIMEOUT)
    # Every pass is shown; the last one is picked, and its infotext says which pass it was.
    expect(page.locator("#gallery .thumbnail-small")).to_have_count(3)
    expect(text_of(page, "result-infotext")).to_have_value(re.compile("Loopback: pass 3/3"))
    expect(page.locator("#generate")).to_have_text("Generate")
    shot(page, "workspace-loopback")


def test_an_error_keeps_the_results_and_says_so(studio_page, tmp_path):
    page = studio_page
    upload(page, "init-image", picture(tmp_path / "init.png"))
    set_number(page, "steps", 2)
    page.click("#generate")
    status = page.locator("#status")
    expect(status).to_contain_text("Done", timeout=JOB_TIMEOUT)
    shown = page.locator("#gallery img").first.get_attribute("src")
    # Inpaint with nothing painted: refused, with the message as a toast and in the status line.
    page.get_by_role("tab", name="Inpaint").click()
    page.click("#generate")
    expect(toast(page, "nothing is painted")).to_be_visible()
    expect(status).to_contain_text("Failed")
    expect(status).to_contain_text("nothing is painted")
    assert page.locator("#gallery img").first.get_attribute("src") == shown
    expect(page.locator("#generate")).to_have_text("Generate")
    shot(page, "workspace-error-keeps-results")
