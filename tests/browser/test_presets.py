"""The presets panel in a real browser, on a studio launched with a login and its own user presets
folder: save a preset, change the sliders, load it back, overwrite it (after the confirm step),
delete it; load a shipped preset; an out-of-band strength shows the hint; export and import; a
second user does not see the first one's presets.

Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from .conftest import PASSWORD, USER, running_studio, shot
from .test_studio import pick, set_number, toast

OTHER, OTHER_PASSWORD = "other", "pw2"


@pytest.fixture(scope="module")
def presets_studio(tmp_path_factory):
    """A studio of its own, so saved presets land in a temp folder: (url, presets folder)."""
    base = tmp_path_factory.mktemp("presets-studio")
    with running_studio(base, "--user-presets", str(base / "user-presets"),
                        auth=f"{USER}:{PASSWORD},{OTHER}:{OTHER_PASSWORD}") as url:
        yield {"url": url, "presets": base / "user-presets"}


def open_page(browser, url: str, user: str = USER, password: str = PASSWORD):
    """A logged-in page of a fresh browser session; fails on any request leaving the machine."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    tab = context.new_page()
    outside: list[str] = []
    tab.on("request", lambda request: None if request.url.startswith(
        ("http://127.0.0.1", "data:", "blob:", "about:")) else outside.append(request.url))
    tab.goto(url)
    tab.fill("input[data-testid=textbox]", user)
    tab.fill("input[type=password]", password)
    tab.click("button:has-text('Login')")
    tab.wait_for_selector("#preset-select", timeout=60_000)
    return context, tab, outside


def number(page, elem_id: str):
    return page.locator(f"#{elem_id} input[type=number]")


def options(page, elem_id: str) -> list[str]:
    box = page.locator(f"#{elem_id} input[role=combobox]")
    box.click()
    box.fill("")
    found = page.get_by_role("option").all_inner_texts()
    box.press("Escape")
    return [text.strip() for text in found]


def test_presets_in_the_browser(browser, presets_studio, tmp_path):
    context, page, outside = open_page(browser, presets_studio["url"])
    status = page.locator("#preset-status")
    try:
        # The page load lists the presets (shipped ones for everyone).
        pick(page, "preset-select", "Van Gogh style")
        expect(page.locator("#preset-info")).to_contain_text("shipped, read-only")

        # Save the current sliders as a preset of this user.
        set_number(page, "strength", 0.33)
        set_number(page, "cfg", 9.5)
        set_number(page, "steps", 12)
        page.locator("#preset-name textarea, #preset-name input").first.fill("Browser look")
        page.click("#preset-save")
        expect(status).to_contain_text("Saved “Browser look”")
        expect(page.locator("#preset-select input[role=combobox]")).to_have_value("Browser look")
        saved = list(presets_studio["presets"].glob("*/browser-look.json"))
        assert len(saved) == 1, list(presets_studio["presets"].rglob("*"))  # in the user's folder
        assert json.loads(saved[0].read_text())["strength"] == 0.33

        # Change the sliders, load it: the values come back.
        set_number(page, "strength", 0.8)
        set_number(page, "cfg", 4)
        set_number(page, "steps", 40)
        page.click("#preset-load")
        expect(status).to_contain_text("Loaded “Browser look”")
        expect(number(page, "strength")).to_have_value("0.33")
        expect(number(page, "cfg")).to_have_value("9.5")
        expect(number(page, "steps")).to_have_value("12")

        # Overwrite asks first; only the confirm writes.
        set_number(page, "steps", 14)
        page.click("#preset-overwrite")
        expect(page.locator("#preset-confirm")).to_be_visible()
        expect(status).to_contain_text("already exists")
        assert json.loads(saved[0].read_text())["steps"] == 12
        shot(page, "presets-01-confirm-overwrite")
        page.click("#preset-confirm")
        expect(status).to_contain_text("Overwrote “Browser look”")
        expect(page.locator("#preset-confirm")).to_be_hidden()
        assert json.loads(saved[0].read_text())["steps"] == 14

        # Export downloads the JSON; importing it back renames it, since the name is taken.
        page.click("#preset-export")
        link = page.locator("#preset-export-file a").first
        expect(link).to_be_visible()
        exported = page.request.get(link.get_attribute("href")).body()
        assert json.loads(exported)["name"] == "Browser look"
        upload = tmp_path / "browser-look.json"
        upload.write_bytes(exported)
        # The upload button's file input sits just before the button itself.
        page.locator("#preset-import").locator(
            "xpath=preceding-sibling::input[@type='file']").set_input_files(str(upload))
        expect(status).to_contain_text("Imported as “Browser look (2)”")

        # A second user sees the shipped presets but none of this user's.
        other_context, other, other_outside = open_page(browser, presets_studio["url"], OTHER,
                                                        OTHER_PASSWORD)
        try:
            names = options(other, "preset-select")
            assert "Van Gogh style" in names and "Browser look" not in names, names
        finally:
            other_context.close()
        assert not other_outside

        # Delete asks first; own presets go, shipped ones refuse with a message.
        pick(page, "preset-select", "Browser look (2)")
        page.click("#preset-delete")
        expect(status).to_contain_text("for good? It cannot be undone")
        page.click("#preset-delete-cancel")
        expect(status).to_contain_text("Kept “Browser look (2)”")
        assert list(presets_studio["presets"].glob("*/browser-look-2.json")), "asking deleted it"
        page.click("#preset-delete")
        page.click("#preset-delete-confirm")
        expect(status).to_contain_text("Deleted “Browser look (2)”")
        expect(page.locator("#preset-delete-row")).to_be_hidden()
        pick(page, "preset-select", "Browser look")
        page.click("#preset-delete")
        page.click("#preset-delete-confirm")
        expect(status).to_contain_text("Deleted “Browser look”")
        assert not saved[0].exists()
        assert "Browser look" not in options(page, "preset-select")

        # A shipped preset: its strength, its template around the prompt.
        page.locator("#prompt textarea").fill("a lighthouse")
        pick(page, "preset-select", "Van Gogh style")
        page.click("#preset-load")
        expect(number(page, "strength")).to_have_value("0.55")
        expect(page.locator("#prompt textarea")).to_have_value(
            re.compile(r"^a lighthouse, in the style of Vincent van Gogh"))
        page.click("#preset-delete")
        expect(toast(page, "shipped preset and cannot be deleted")).to_be_visible()
        expect(page.locator("#preset-hint")).to_have_text("")

        # Out of the preset's band: a gentle hint, nothing blocked.
        set_number(page, "strength", 0.9)
        expect(page.locator("#preset-hint")).to_contain_text(
            "tuned for medium strength (0.4–0.7); you have strength 0.9")
        expect(page.locator("#strength-band")).to_contain_text("overhaul")
        page.locator("#preset-hint").scroll_into_view_if_needed()
        shot(page, "presets-02-hint")
        set_number(page, "strength", 0.6)
        expect(page.locator("#preset-hint")).to_have_text("")
    finally:
        context.close()
    assert not outside, f"the page fetched from outside: {outside}"
