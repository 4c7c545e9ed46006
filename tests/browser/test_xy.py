"""The X/Y/Z plot in a real browser: the tab shows the init image and the base settings it starts
from, a prompt search/replace x CFG x seed plot renders its grids, and a refused plot says it
failed (never an earlier "Done").

Screenshots go to test-artifacts/xy-*.png.
"""

from __future__ import annotations

import re

from playwright.sync_api import expect

from .conftest import shot
from .test_studio import JOB_TIMEOUT, picture, set_number, text_of, toast, upload


def pick(page, elem_id: str, option: str) -> None:
    """Pick a dropdown option. The axis dropdowns offer the same names and an earlier list may
    still be open, so the option is looked up in the list this box controls."""
    box = page.locator(f"#{elem_id} input[role=combobox]")
    box.click()
    box.fill(option)
    listbox = box.get_attribute("aria-controls")
    page.locator(f"[id^='{listbox}-option-'][aria-label='{option}']").click()
    expect(box).to_have_value(option)


def test_xyz_plot_renders_its_grids(studio_page, studio, tmp_path):
    page = studio_page
    upload(page, "init-image", picture(tmp_path / "init.png"))
    text_of(page, "prompt").fill("a red fox")
    set_number(page, "steps", 4)
    set_number(page, "seed", 31)
    page.get_by_role("tab", name="X/Y plot").click()

    # The tab shows what the plot starts from.
    expect(page.locator("#xy-init img")).to_be_visible()
    base = page.locator("#xy-base")
    expect(base).to_contain_text("a red fox")
    expect(base).to_contain_text("4 (effective")
    expect(base).to_contain_text("31")

    pick(page, "xy-x-axis", "Prompt S/R")
    expect(text_of(page, "xy-x-values")).to_have_value("")
    text_of(page, "xy-x-values").fill('red, "snow, white"')
    text_of(page, "xy-y-values").fill("5, 9")
    pick(page, "xy-z-axis", "Seed")
    expect(text_of(page, "xy-z-values")).to_have_value("1, 2, 3")
    text_of(page, "xy-z-values").fill("1, 2")
    page.click("#xy-run")
    status = page.locator("#xy-status")
    expect(status).to_contain_text("Done: 8 cells in 2 grids, seed on the Z axis",
                                   timeout=JOB_TIMEOUT)
    expect(page.locator("#xy-grid img")).to_be_visible()
    saved = text_of(page, "xy-path").input_value()
    assert re.fullmatch(r"saved as \d{5}-31\.png, \d{5}-31\.png", saved), saved
    grids = sorted((studio["outputs"]).rglob("*-31.png"))
    assert len(grids) >= 2
    shot(page, "xy-xyz-plot")

    # A value the plot refuses: a message naming the axis, and the status says it failed.
    text_of(page, "xy-x-values").fill("blue, green")
    page.click("#xy-run")
    expect(toast(page, "'blue' is not in the prompt")).to_be_visible()
    expect(status).to_contain_text("Failed")
    expect(status).not_to_contain_text("Done")
    expect(page.locator("#xy-grid img")).to_have_count(0)
    shot(page, "xy-refused")
